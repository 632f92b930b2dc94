"""The open-vocabulary segmentation protocol of GroupViT, TCL, FreeDA and Talk2DINO (mmseg's
slide inference), as plain functions over any dense scorer.

An image is resized so its short side is `short_side` (448), cut into `window` x `window`
windows (448) every `stride` pixels (224), the last window of a row or column flush with the
edge; each window's per-patch class logits are upsampled to the window (bilinear) and summed
into the image, then divided by how many windows covered each pixel. The averaged logits are
upsampled to the label's size (bilinear) and the argmax is the prediction. Sets with a
background class get a constant channel at `bg_threshold` as class 0: a pixel whose best class
scores below it is background. With `pamr`, each window's upsampled logits are refined by
its pixels first (dense/pamr.py, as Talk2DINO and TCL do); predict_each gives the rows with and
without it from one scorer call per window.

A scorer maps one normalised window (1, 3, h, w) to logits (C, h', w') on any grid
(the patch grid of a ViT); tests/test_dense_synthetic.py drives the functions with one whose
answer is known.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from dinov2clip.dense import pamr as pamr_module

Scorer = Callable[[torch.Tensor], torch.Tensor]  # (1, 3, h, w) -> (C, h', w') logits


@dataclass(frozen=True)
class Protocol:
    short_side: int = 448
    window: int = 448
    stride: int = 224
    bg_threshold: float | None = None  # None: the set has no background class
    pamr: bool = False  # each window's logits refined by its pixels (dense/pamr.py)

    def to_dict(self) -> dict:
        """The settings, PAMR's own among them when it is on."""
        return {**asdict(self), "pamr": self.pamr and pamr_module.settings()}

    def slides_like(self, other: Protocol) -> bool:
        """The same windows over the same resized image: one scorer pass serves both."""
        return (self.short_side, self.window, self.stride) == (
            other.short_side, other.window, other.stride)


def resize_short_side(image: torch.Tensor, short_side: int) -> torch.Tensor:
    """(B, 3, H, W) float -> (B, 3, H', W') with min(H', W') = short_side, aspect kept (the
    long side rounded), bilinear as mmseg's Resize(keep_ratio=True)."""
    h, w = image.shape[-2:]
    scale = short_side / min(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False)


def window_boxes(h: int, w: int, window: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(y1, y2, x1, x2) of every window over an h x w image, in row order: one every stride
    pixels, the last one moved back to end at the edge, none larger than the image."""
    def starts(size: int) -> list[int]:
        n = max(size - window + stride - 1, 0) // stride + 1
        return sorted({max(min(i * stride + window, size) - window, 0) for i in range(n)})

    return [(y, min(y + window, h), x, min(x + window, w))
            for y in starts(h) for x in starts(w)]


@torch.no_grad()
def slide_logits(image: torch.Tensor, scorer: Scorer, window: int, stride: int,
                 pamr: bool = False) -> torch.Tensor:
    """(C, H, W) float32: the windows' logits, each upsampled to its window (and with pamr,
    refined by its pixels), averaged where windows overlap. image (1, 3, H, W), normalised for
    the scorer's model."""
    return slide_each(image, scorer, window, stride, (pamr,))[0]


@torch.no_grad()
def slide_each(image: torch.Tensor, scorer: Scorer, window: int, stride: int,
               refine: tuple[bool, ...]) -> list[torch.Tensor]:
    """slide_logits once per entry of refine (True: with PAMR), the scorer called once per
    window for all of them."""
    h, w = image.shape[-2:]
    totals, count = None, None
    for y1, y2, x1, x2 in window_boxes(h, w, window, stride):
        pixels = image[:, :, y1:y2, x1:x2]
        logits = scorer(pixels).float()  # (C, h', w')
        up = F.interpolate(logits[None], size=(y2 - y1, x2 - x1), mode="bilinear",
                           align_corners=False)[0]
        if totals is None:
            totals = [torch.zeros((up.shape[0], h, w), device=up.device) for _ in refine]
            count = torch.zeros((1, h, w), device=up.device)
        for total, refined in zip(totals, refine, strict=True):
            total[:, y1:y2, x1:x2] += pamr_module.pamr(pixels, up) if refined else up
        count[:, y1:y2, x1:x2] += 1
    return [total / count for total in totals]


@torch.no_grad()
def segment_logits(image: torch.Tensor, scorer: Scorer, protocol: Protocol,
                   out_size: tuple[int, int]) -> torch.Tensor:
    """(C [+1], H, W) float32 logits at out_size (the label's size): resized, slid, averaged,
    upsampled; with bg_threshold, a constant background channel first."""
    return segment_logits_each(image, scorer, [protocol], out_size)[0]


@torch.no_grad()
def segment_logits_each(image: torch.Tensor, scorer: Scorer, protocols: list[Protocol],
                        out_size: tuple[int, int]) -> list[torch.Tensor]:
    """segment_logits under each protocol (they may differ in bg_threshold and pamr, not in
    their windows), the scorer called once per window for all of them."""
    first = protocols[0]
    if not all(p.slides_like(first) for p in protocols):
        raise ValueError("protocols scored in one pass must share short_side, window and stride")
    refine = tuple(sorted({p.pamr for p in protocols}))
    resized = resize_short_side(image, first.short_side)
    slid = slide_each(resized, scorer, first.window, first.stride, refine)
    upsampled = {flag: F.interpolate(logits[None], size=tuple(out_size), mode="bilinear",
                                     align_corners=False)[0]
                 for flag, logits in zip(refine, slid, strict=True)}
    out = []
    for p in protocols:
        logits = upsampled[p.pamr]
        if p.bg_threshold is not None:
            bg = torch.full_like(logits[:1], float(p.bg_threshold))
            logits = torch.cat([bg, logits])
        out.append(logits)
    return out


def predict(image: torch.Tensor, scorer: Scorer, protocol: Protocol,
            out_size: tuple[int, int]) -> torch.Tensor:
    """(H, W) int64 class indices at out_size; with a background channel, 0 is background and
    the scorer's class c is c + 1."""
    return predict_each(image, scorer, [protocol], out_size)[0]


def predict_each(image: torch.Tensor, scorer: Scorer, protocols: list[Protocol],
                 out_size: tuple[int, int]) -> list[torch.Tensor]:
    """predict under each protocol, from one scorer call per window (segment_logits_each)."""
    return [logits.argmax(0).cpu()
            for logits in segment_logits_each(image, scorer, protocols, out_size)]


def patch_scorer(features: Callable[[torch.Tensor], torch.Tensor],
                 text: torch.Tensor) -> Scorer:
    """A scorer from a dense feature map: features(window) -> (h', w', D) patch features in
    the text's space; logits are their cosines with text (C, D)."""
    text = F.normalize(text.float(), dim=-1)

    def score(window: torch.Tensor) -> torch.Tensor:
        feats = F.normalize(features(window).float(), dim=-1)  # (h', w', D)
        return torch.einsum("hwd,cd->chw", feats, text.to(feats.device))

    return score
