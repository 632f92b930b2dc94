"""A heatmap drawn over its image: what the search server's /api/heatmap returns."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def heatmap_overlay(image: Image.Image, heat: np.ndarray, alpha: float = 0.55) -> Image.Image:
    """image (RGB, W x H) with heat (H, W) blended over it in matplotlib's "turbo" colours.

    heat is stretched to its own min..max: cosines of one text with every patch sit in a narrow
    band that differs by head and run, so a fixed scale would show most queries as one colour.
    The range is the caller's to report (the server sends it in headers)."""
    from matplotlib import colormaps  # the colour map only: no pyplot, no figure

    if heat.shape != (image.height, image.width):
        raise ValueError(f"heat {heat.shape} is not the image's {image.height} x {image.width}")
    lo, hi = float(heat.min()), float(heat.max())
    unit = (heat - lo) / max(hi - lo, 1e-12)
    colours = colormaps["turbo"](unit)[..., :3] * 255.0  # (H, W, 3)
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    return Image.fromarray(((1 - alpha) * rgb + alpha * colours).round().astype(np.uint8), "RGB")


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
