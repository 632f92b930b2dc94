"""Our worker-side preprocessing against the reference processors, on real-size photos.

The tensors must equal HF AutoImageProcessor (dinov2-base settings) and open_clip's own eval
preprocess within 1e-5 mean absolute difference, on non-square sizes that need up- and
down-scaling and odd crop margins.
"""

import io
from types import SimpleNamespace

import numpy as np
import open_clip
import pytest
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from dinov2clip.models.loaders import load_clip, load_dino
from dinov2clip.models.preprocess import (
    decode,
    normalise,
    resize_and_crop,
    spec_from_open_clip,
)

SIZES = [(256, 341), (341, 256), (256, 256), (640, 480), (480, 640), (500, 375), (333, 500),
         (300, 255), (257, 399), (1024, 683), (200, 150), (227, 256), (383, 256)]


def photo(w: int, h: int, seed: int) -> Image.Image:
    """A JPEG round-tripped image with smooth regions, edges and noise, like a photo."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray((rng.random((h // 16 + 2, w // 16 + 2, 3)) * 255).astype(np.uint8))
    arr = np.asarray(coarse.resize((w, h), Image.BICUBIC)).astype(np.int16)
    arr[h // 3: h // 2, w // 4: w // 2] = (250, 20, 30)  # sharp edges
    arr += rng.integers(-12, 13, arr.shape, dtype=np.int16)
    buf = io.BytesIO()
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=92)
    return decode(buf.getvalue())


def ours(img, spec) -> torch.Tensor:
    return normalise(torch.from_numpy(resize_and_crop(img, spec))[None], spec)[0]


@pytest.fixture(scope="module")
def dino_pair(tiny_models):
    from transformers import AutoImageProcessor

    _, spec = load_dino(tiny_models["dino"], torch.device("cpu"))
    return AutoImageProcessor.from_pretrained(tiny_models["dino"]), spec


def test_dino_input_equals_hf_auto_image_processor(dino_pair):
    proc, spec = dino_pair
    assert (spec.resize, spec.crop, spec.interpolation) == (256, 224, "bicubic")
    images = [photo(w, h, i) for i, (w, h) in enumerate(SIZES)]
    ref = proc(images=images, return_tensors="pt")["pixel_values"]  # (N, 3, 224, 224)
    for img, r in zip(images, ref, strict=True):
        mad = (ours(img, spec) - r).abs().mean().item()
        assert mad < 1e-5, (img.size, mad)


@pytest.fixture(scope="module")
def clip_pair(tiny_models):
    """Our spec for the tiny CLIP, and open_clip's own eval transform for the same checkpoint."""
    _, _, spec = load_clip(tiny_models["clip"], tiny_models["clip_pretrained"],
                           torch.device("cpu"))
    _, _, preprocess = open_clip.create_model_and_transforms(
        "tiny-clip", pretrained=tiny_models["clip_pretrained"])
    return spec, preprocess


def test_clip_input_equals_open_clip_preprocess(clip_pair):
    spec, preprocess = clip_pair
    assert spec.crop == 224
    for i, (w, h) in enumerate(SIZES):
        img = photo(w, h, 100 + i)
        mad = (ours(img, spec) - preprocess(img)).abs().mean().item()
        assert mad < 1e-5, ((w, h), mad)


@pytest.mark.parametrize("cfg", [
    dict(size=224, resize_mode="shortest"),  # ViT-B-16 / openai
    dict(size=256, resize_mode="squash", interpolation="bicubic", mean=(0.5,) * 3,
         std=(0.5,) * 3),  # SigLIP-style
    dict(size=224, resize_mode="longest", fill_color=0, interpolation="bilinear"),
])
def test_other_open_clip_resize_modes_match(cfg, non_rgb_images):
    pcfg = PreprocessCfg(**cfg)
    spec = spec_from_open_clip(SimpleNamespace(visual=SimpleNamespace(
        preprocess_cfg=vars(pcfg))))
    preprocess = image_transform_v2(pcfg, is_train=False)
    for i, (w, h) in enumerate(SIZES[:7]):
        img = photo(w, h, 200 + i)
        mad = (ours(img, spec) - preprocess(img)).abs().mean().item()
        assert mad < 1e-5, ((w, h), cfg, mad)
    for name, img in non_rgb_images.items():  # converted after resizing (and padding)
        mad = (ours(img, spec) - preprocess(img)).abs().mean().item()
        assert mad < 1e-5, (name, cfg, mad)


def encoded(img: Image.Image, fmt: str, **kw) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return decode(buf.getvalue())  # as extract sees it: decoded, in the file's own mode


@pytest.fixture(scope="module")
def non_rgb_images() -> dict[str, Image.Image]:
    """The modes photos come in besides RGB, each through its file format."""
    base = photo(341, 256, 7)
    alpha = Image.linear_gradient("L").resize(base.size)  # transparent to opaque
    rgba = base.copy()
    rgba.putalpha(alpha)
    la = base.convert("L")
    la.putalpha(alpha)
    palette = base.quantize(64)
    frames = [palette, photo(341, 256, 8).quantize(64)]
    return {
        "P": encoded(palette, "PNG"),
        "P+transparency": encoded(palette, "PNG", transparency=3),
        "CMYK": encoded(base.convert("CMYK"), "JPEG", quality=95),
        "RGBA": encoded(rgba, "PNG"),
        "LA": encoded(la, "PNG"),
        "L": encoded(base.convert("L"), "PNG"),
        "GIF": encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "BMP": encoded(palette, "BMP"),
    }


def test_non_rgb_images_become_rgb_where_each_reference_converts_them(dino_pair, clip_pair,
                                                                     non_rgb_images):
    proc, dino_spec = dino_pair
    clip_spec, preprocess = clip_pair
    images = non_rgb_images
    assert {k: im.mode for k, im in images.items()} == {
        "P": "P", "P+transparency": "P", "CMYK": "CMYK", "RGBA": "RGBA", "LA": "LA", "L": "L",
        "GIF": "P", "BMP": "P"}
    for name, img in images.items():
        hf = proc(images=[img], return_tensors="pt")["pixel_values"][0]
        assert (ours(img, dino_spec) - hf).abs().mean().item() < 1e-5, name
        assert (ours(img, clip_spec) - preprocess(img)).abs().mean().item() < 1e-5, name
