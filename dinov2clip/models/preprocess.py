"""Image preprocessing: decode once, derive both models' inputs from the one decoded image.

Workers do the resize and centre crop and hand over uint8 arrays; the mapper scales and normalises
on the device. Each model's input is cut the way its reference processor cuts it, so the tensors
equal the reference ones (tests/test_extract_preprocess.py):
- open_clip (torchvision transforms on a PIL image): PIL resize, crop offset int(round(d / 2)).
- HF's default DINOv2 processor (transformers 5, torchvision backend): a uint8 tensor resized by
  torchvision with antialiasing, crop offset int(d / 2). PIL's bicubic differs from it by one
  grey level in ~0.5% of pixels, more than the 1e-5 tolerance allows, so this path uses it too.
- HF's DINOv3 processor squashes to 224 x 224 with no crop, and rescales to float *before*
  resizing: rounding its resize to uint8 would be off by up to half a grey level, so that path
  resizes in float32 and hands over float32 (still on the 0-255 scale).
Images that are not RGB become RGB where each reference converts them (PreprocessSpec.to_rgb):
HF first, compositing any transparency on white; open_clip last, after PIL has resized the image
in its own mode (a palette image with nearest-neighbour, as PIL does for mode P).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST,
             "lanczos": Image.LANCZOS}
_HF_RESAMPLE = {3: "bicubic", 2: "bilinear", 0: "nearest", 1: "lanczos"}


@dataclass(frozen=True)
class PreprocessSpec:
    resize: int  # shortest edge after resizing, in pixels ("shortest" mode)
    crop: int  # side of the square model input
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_mode: str = "shortest"  # shortest edge + centre crop | squash | longest edge + pad
    backend: str = "pil"  # pil: PIL resize | torch: torchvision resize of a uint8 tensor
    crop_rounding: str = "round"  # round: torchvision CenterCrop | floor: HF center_crop
    fill: int = 0  # padding grey level ("longest" mode)
    # first: to RGB before resizing, alpha composited on white (HF's convert_to_rgb);
    # last: PIL resizes the image in its own mode, then convert("RGB") (open_clip's order).
    to_rgb: str = "first"
    resize_dtype: str = "uint8"  # float32: resize unrounded (the reference rescales first)

    def to_dict(self) -> dict:
        return asdict(self)


def spec_from_hf_processor(proc_cfg: dict, backend: str = "torch",
                           rescale_first: bool = False) -> PreprocessSpec:
    """The preprocessing a HF (Bit/DINOv2, DINOv3) image processor config describes.

    backend: "torch" for transformers' default (torchvision) processors, "pil" for the PIL ones.
    rescale_first: the processor turns the image into floats before resizing (DINOv3).
    """
    size = proc_cfg.get("size", {"shortest_edge": 256})
    if "shortest_edge" not in size and not proc_cfg.get("do_center_crop"):
        return _squash_spec(proc_cfg, size, backend, rescale_first)
    crop = proc_cfg.get("crop_size", {"height": 224, "width": 224})
    return PreprocessSpec(
        resize=int(size.get("shortest_edge", size.get("height", 256))),
        crop=int(crop["height"]),
        interpolation=_HF_RESAMPLE.get(int(proc_cfg.get("resample", 3)), "bicubic"),
        mean=tuple(proc_cfg.get("image_mean", (0.485, 0.456, 0.406))),
        std=tuple(proc_cfg.get("image_std", (0.229, 0.224, 0.225))),
        backend=backend,
        crop_rounding="floor",
    )


def _squash_spec(proc_cfg: dict, size: dict, backend: str, rescale_first: bool
                 ) -> PreprocessSpec:
    """A processor that resizes straight to height x width, ignoring the aspect ratio."""
    side = int(size.get("height", 0))
    if not side or side != int(size.get("width", 0)):
        raise ValueError(f"image processor size {size} is not a square height x width")
    return PreprocessSpec(
        resize=side, crop=side, resize_mode="squash",
        interpolation=_HF_RESAMPLE.get(int(proc_cfg.get("resample", 2)), "bilinear"),
        mean=tuple(proc_cfg.get("image_mean", (0.485, 0.456, 0.406))),
        std=tuple(proc_cfg.get("image_std", (0.229, 0.224, 0.225))),
        backend=backend, crop_rounding="floor",
        resize_dtype="float32" if rescale_first and backend == "torch" else "uint8")


def spec_from_open_clip(model) -> PreprocessSpec:
    """open_clip's eval preprocessing (image_transform with is_train=False)."""
    cfg = model.visual.preprocess_cfg
    size = cfg["size"]
    if not isinstance(size, int):
        if size[0] != size[1]:
            raise ValueError(f"non-square open_clip input {tuple(size)} is not supported")
        size = size[0]
    interpolation = "bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic"
    return PreprocessSpec(resize=size, crop=size, interpolation=interpolation,
                          mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                          resize_mode=cfg.get("resize_mode", "shortest"),
                          fill=int(cfg.get("fill_color", 0)), to_rgb="last")


def resize_and_crop(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """(crop, crop, 3) uint8 (float32 if spec.resize_dtype says so, 0-255) from a decoded
    image, as the spec's reference processor cuts it."""
    if spec.to_rgb == "first" or spec.backend != "pil":
        img = rgb_on_white(img)
    w, h = img.size
    c = spec.crop
    if spec.resize_mode == "squash":
        return np.array(_resize(img, (c, c), spec))  # writable, like the other modes
    if spec.resize_mode == "longest":  # fit inside c x c, then pad to c x c
        ratio = max(h / c, w / c)
        size = (round(w / ratio), round(h / ratio))
        if spec.to_rgb == "last" and spec.backend == "pil" and img.mode != "RGB":
            return _pad_in_own_mode(img, size, spec)
        arr = _resize(img, size, spec)
        out = np.full((c, c, 3), spec.fill, dtype=np.uint8)
        top, left = (c - arr.shape[0]) // 2, (c - arr.shape[1]) // 2
        out[top:top + arr.shape[0], left:left + arr.shape[1]] = arr
        return out
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(spec.resize * long / short)  # HF and torchvision both truncate
    arr = _resize(img, (spec.resize, new_long) if w <= h else (new_long, spec.resize), spec)
    top, left = _crop_offset(arr.shape[0] - c, spec), _crop_offset(arr.shape[1] - c, spec)
    if top < 0 or left < 0:
        raise ValueError(f"resize {spec.resize} is smaller than crop {c}")
    return np.array(arr[top:top + c, left:left + c])  # a writable, contiguous copy


def _pad_in_own_mode(img: Image.Image, size: tuple[int, int], spec: PreprocessSpec) -> np.ndarray:
    """open_clip's "longest" mode on a non-RGB image: resize and pad in the image's own mode (a
    palette image pads with palette entry `fill`, CMYK with ink level `fill`), then to RGB."""
    c = spec.crop
    small = img.resize(size, _RESAMPLE[spec.interpolation])
    bands = len(small.getbands())
    canvas = Image.new(small.mode, (c, c), spec.fill if bands == 1 else (spec.fill,) * bands)
    if small.mode == "P":
        canvas.putpalette(small.getpalette())
    canvas.paste(small, ((c - size[0]) // 2, (c - size[1]) // 2))
    return np.array(canvas.convert("RGB"), dtype=np.uint8)  # writable, like the other modes


def _crop_offset(excess: int, spec: PreprocessSpec) -> int:
    return int(excess / 2.0) if spec.crop_rounding == "floor" else int(round(excess / 2.0))


def _resize(img: Image.Image, size: tuple[int, int], spec: PreprocessSpec) -> np.ndarray:
    """(h, w, 3) uint8 (or float32, see resize_dtype) of img resized to size = (w, h), then
    made RGB if it is not yet."""
    if spec.resize_dtype == "float32":
        return _resize_float(img, size, spec)
    if spec.backend == "pil":
        out = img if size == img.size else img.resize(size, _RESAMPLE[spec.interpolation])
        return np.asarray(out if out.mode == "RGB" else out.convert("RGB"), dtype=np.uint8)
    if size == img.size:
        return np.asarray(img, dtype=np.uint8)
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2.functional import resize

    chw = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)
    out = resize(chw, [size[1], size[0]], interpolation=InterpolationMode(spec.interpolation),
                 antialias=True)
    return out.permute(1, 2, 0).numpy()


def rgb_on_white(img: Image.Image) -> Image.Image:
    """img as RGB the way HF's convert_to_rgb makes it: any transparency composited on white."""
    if img.mode == "RGB":
        return img
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _resize_float(img: Image.Image, size: tuple[int, int], spec: PreprocessSpec) -> np.ndarray:
    """(h, w, 3) float32 on the 0-255 scale, resized by torchvision in float, unrounded."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2.functional import resize

    chw = torch.from_numpy(np.array(img, dtype=np.float32)).permute(2, 0, 1)
    if size != img.size:
        chw = resize(chw, [size[1], size[0]], interpolation=InterpolationMode(spec.interpolation),
                     antialias=True)
    return np.ascontiguousarray(chw.permute(1, 2, 0).numpy())


class NotAnImage(UnidentifiedImageError):
    """The payload is no image format PIL knows (text, HTML, an empty file); an OSError."""


class TooLarge(ValueError):
    """More pixels than PIL decodes safely (Image.MAX_IMAGE_PIXELS, a decompression bomb)."""


def decode(image_bytes: bytes, *, max_pixels: int | None = None, min_side: int = 0
           ) -> Image.Image:
    """A decoded PIL image in its own mode (GIF: the first frame); resize_and_crop makes it RGB
    as each reference does. Raises NotAnImage, TooLarge, or another OSError/ValueError for a
    corrupt or cut file.

    max_pixels: TooLarge before any pixel is decoded when more would be (a one-colour PNG of
    156 M pixels is a few hundred KB). min_side: a JPEG is decoded at the smallest DCT scale
    (1/2, 1/4, 1/8) that keeps both sides at least this long, for a caller that shrinks it
    anyway; other formats decode in full. The cap counts the pixels decoded, so a 48 M pixel
    photo decoded at 1/8 passes it.
    """
    try:
        img = Image.open(io.BytesIO(image_bytes))  # reads the header only
        if min_side and img.format == "JPEG":
            img.draft(img.mode, (min_side, min_side))  # sets the size it will decode at
        _check_pixels(img, max_pixels)
        img.load()  # decode now, so a truncated file fails here and is counted
    except UnidentifiedImageError:
        raise NotAnImage("not an image") from None
    except Image.DecompressionBombError as err:
        raise TooLarge(str(err)) from None
    return img


def _check_pixels(img: Image.Image, max_pixels: int | None) -> None:
    w, h = img.size
    if max_pixels is not None and w * h > max_pixels:
        raise TooLarge(f"{w} x {h} is {w * h / 1e6:.1f} M pixels, more than the "
                       f"{max_pixels / 1e6:g} M allowed")


# What encode_image and friends take: images, files, or a batch tensor (cropped or normalised)
ImageInput = Sequence[Image.Image | str | Path] | Image.Image | torch.Tensor


def open_image(image: Image.Image | str | Path) -> Image.Image:
    """A PIL image as it is, or a file decoded in its own mode: resize_and_crop makes it RGB
    where the reference processor does."""
    return image if isinstance(image, Image.Image) else decode(Path(image).read_bytes())


def decode_or_skip(image_bytes: bytes) -> tuple[Image.Image | None, str]:
    """(image, "") or (None, the skip reason every stage counts it under): not_an_image,
    too_large or corrupt_image."""
    try:
        return decode(image_bytes), ""
    except NotAnImage:
        return None, "not_an_image"
    except TooLarge:
        return None, "too_large"
    except Exception:  # noqa: BLE001 - any undecodable payload is one counted skip
        return None, "corrupt_image"


def normalise(batch_u8: torch.Tensor, spec: PreprocessSpec, dtype=torch.float32,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """(B, H, W, 3) uint8 (or float on the 0-255 scale) -> (B, 3, H, W) normalised float,
    contiguous, on batch_u8's device.

    out: an optional (B, 3, H, W) buffer to fill, so a CPU caller need not fault in fresh
    pages for every batch.
    """
    b, h, w, _ = batch_u8.shape
    # One copy converts the dtype and the layout (channels-last input makes the patch
    # convolutions several times slower); then (x / 255 - mean) / std as a multiply and an
    # add, in place.
    x = torch.empty((b, 3, h, w), dtype=dtype, device=batch_u8.device) if out is None else out
    x.copy_(batch_u8.permute(0, 3, 1, 2))
    mean = torch.tensor(spec.mean, dtype=torch.float64)
    std = torch.tensor(spec.std, dtype=torch.float64)
    x.mul_((1.0 / (255.0 * std)).to(dtype=dtype, device=x.device).view(1, 3, 1, 1))
    return x.add_((-mean / std).to(dtype=dtype, device=x.device).view(1, 3, 1, 1))
