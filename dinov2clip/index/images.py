"""Image collections on disk: listing a folder, and decoding in DataLoader workers.

Each image is decoded once and cut to every model's crop with the extract stage's own
resize_and_crop, so an image indexed or classified here is embedded as extract would embed it.
An unreadable file is a counted failure, never an exception that stops the job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from dinov2clip.extract.preprocess import PreprocessSpec, TooLarge, decode, resize_and_crop
from dinov2clip.extract.reader import IMAGE_EXTS

IMAGE_SUFFIXES = tuple(f".{ext}" for ext in IMAGE_EXTS)


def list_images(folder: Path) -> list[Path]:
    """Image files under folder, recursively, sorted; hidden files and folders are left out."""
    found = []
    for p in Path(folder).rglob("*"):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            found.append(p)
    return sorted(found)


def sidecar_caption(path: Path) -> str:
    """The caption in a .txt file beside the image (same stem), if there is one."""
    txt = path.with_suffix(".txt")
    if not txt.is_file():
        return ""
    try:
        return " ".join(txt.read_text(errors="replace").split())
    except OSError:
        return ""


class ImageCrops(Dataset):
    """Items are file paths or encoded image bytes; each gives one uint8 crop per spec."""

    def __init__(self, items: list[Path | bytes], specs: list[PreprocessSpec]):
        self.items, self.specs = items, specs

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        item = self.items[i]
        try:
            data = item if isinstance(item, bytes) else Path(item).read_bytes()
        except OSError:
            return {"index": i, "failure": "unreadable_file"}
        if not data:
            return {"index": i, "failure": "zero_byte_image"}
        try:
            img = decode(data)
        except TooLarge:
            return {"index": i, "failure": "too_large"}
        except Exception:  # noqa: BLE001 - any undecodable payload is one counted skip
            return {"index": i, "failure": "corrupt_image"}
        return {"index": i, "crops": [resize_and_crop(img, s) for s in self.specs]}


@dataclass
class CropBatch:
    crops: list[torch.Tensor] = field(default_factory=list)  # per spec: (B, H, W, 3) uint8
    indices: list[int] = field(default_factory=list)  # item index of each row
    failures: list[tuple[int, str]] = field(default_factory=list)  # (item index, reason)


def collate_crops(items: list[dict]) -> CropBatch:
    ok = [it for it in items if "failure" not in it]
    batch = CropBatch(failures=[(it["index"], it["failure"]) for it in items if "failure" in it])
    if ok:
        n_specs = len(ok[0]["crops"])
        batch.crops = [torch.from_numpy(np.stack([it["crops"][s] for it in ok]))
                       for s in range(n_specs)]
        batch.indices = [it["index"] for it in ok]
    return batch
