"""Image preprocessing: decode once, derive both models' inputs from the one decoded image.

Workers do the PIL work (resize shortest edge, centre crop) and hand over uint8 tensors; the
mapper scales and normalises on the device. Resizing goes through PIL with the reference
processors' own filter, so the tensors equal HF's and open_clip's to float rounding.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST,
             "lanczos": Image.LANCZOS}
_HF_RESAMPLE = {3: "bicubic", 2: "bilinear", 0: "nearest", 1: "lanczos"}


@dataclass(frozen=True)
class PreprocessSpec:
    resize: int  # shortest edge after resizing, in pixels
    crop: int  # centre crop, square
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict:
        return asdict(self)


def spec_from_hf_processor(proc_cfg: dict) -> PreprocessSpec:
    """The preprocessing a HF (Bit/DINOv2) image processor config describes."""
    size = proc_cfg.get("size", {"shortest_edge": 256})
    crop = proc_cfg.get("crop_size", {"height": 224, "width": 224})
    return PreprocessSpec(
        resize=int(size.get("shortest_edge", size.get("height", 256))),
        crop=int(crop["height"]),
        interpolation=_HF_RESAMPLE.get(int(proc_cfg.get("resample", 3)), "bicubic"),
        mean=tuple(proc_cfg.get("image_mean", (0.485, 0.456, 0.406))),
        std=tuple(proc_cfg.get("image_std", (0.229, 0.224, 0.225))),
    )


def spec_from_open_clip(model) -> PreprocessSpec:
    """open_clip's eval preprocessing: resize shortest edge to image_size, centre crop."""
    cfg = model.visual.preprocess_cfg
    size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
    return PreprocessSpec(resize=size, crop=size, interpolation=cfg.get("interpolation", "bicubic"),
                          mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))


def resize_and_crop(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """(crop, crop, 3) uint8: shortest edge to spec.resize, then a centre crop."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(spec.resize * long / short)  # HF and torchvision both truncate
    size = (spec.resize, new_long) if w <= h else (new_long, spec.resize)
    if size != (w, h):
        img = img.resize(size, _RESAMPLE[spec.interpolation])
    w, h = img.size
    left, top = int(round((w - spec.crop) / 2.0)), int(round((h - spec.crop) / 2.0))
    img = img.crop((left, top, left + spec.crop, top + spec.crop))
    return np.asarray(img, dtype=np.uint8)


def decode(image_bytes: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(image_bytes))
    img.load()  # decode now, so a truncated file fails here and is counted
    return img.convert("RGB")


def normalise(batch_u8: torch.Tensor, spec: PreprocessSpec, dtype=torch.float32) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) normalised float, on batch_u8's device."""
    mean = torch.tensor(spec.mean, device=batch_u8.device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=batch_u8.device, dtype=dtype).view(1, 3, 1, 1)
    x = batch_u8.permute(0, 3, 1, 2).to(dtype) / 255.0
    return (x - mean) / std
