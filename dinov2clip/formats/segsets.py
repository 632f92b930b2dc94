"""A segmentation eval set on disk, the floor's format for it: the data stage writes one, the
eval stage and tests read it.

    <set>/images/<key>.png|.jpg   the picture
    <set>/labels/<key>.png        "L" PNG of class indices, 255 = ignored
    <set>/classes.json            written last: {"classes": [...], "background": bool, ...};
                                  with background, classes[0] is it ("background")

A set without classes.json is unfinished and refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dinov2clip.config import ConfigError
from dinov2clip.io_utils import atomic_write, atomic_write_json, read_json

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def segset_dir(root: str | Path, name: str) -> Path:
    """<artifacts>/segsets/<name>: where the data stage puts a segmentation set."""
    return Path(root) / "segsets" / name


@dataclass(frozen=True)
class SegSample:
    key: str
    image: Path
    label: Path

    def read_label(self) -> np.ndarray:
        """(H, W) uint8 class indices, 255 ignored."""
        with Image.open(self.label) as im:
            if im.mode not in ("L", "P"):
                raise ConfigError(f"label {self.label} is a {im.mode} image, not one channel "
                                  "of class indices")
            return np.asarray(im).copy()


class SegSet:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def images(self) -> Path:
        return self.path / "images"

    @property
    def labels(self) -> Path:
        return self.path / "labels"

    @property
    def classes_file(self) -> Path:
        return self.path / "classes.json"

    def write_sample(self, key: str, image: Image.Image, label: Image.Image) -> None:
        for folder in (self.images, self.labels):
            folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self.images / f"{key}.png", lambda tmp: image.save(tmp, "PNG"))
        atomic_write(self.labels / f"{key}.png", lambda tmp: label.save(tmp, "PNG"))

    def write_classes(self, classes: list[str], background: bool, source: str) -> None:
        atomic_write_json(self.classes_file, {"classes": list(classes),
                                              "background": bool(background), "source": source})

    def read_classes(self) -> tuple[list[str], bool]:
        """(class names, has background); refuses an unfinished set in one line."""
        if not self.classes_file.is_file():
            raise ConfigError(f"segmentation set {self.path}: no {self.classes_file.name} "
                              "(not written, or not finished: re-run the data stage)")
        meta = read_json(self.classes_file)
        classes = meta.get("classes")
        if not isinstance(classes, list) or not classes or not all(
                isinstance(c, str) and c for c in classes):
            raise ConfigError(f"{self.classes_file}: 'classes' must be a non-empty list of names")
        return classes, bool(meta.get("background", False))

    def samples(self, limit: int = 0) -> list[SegSample]:
        """Every image with its label, in key order; an image without a label is an error."""
        found = sorted(p for p in self.images.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise ConfigError(f"segmentation set {self.path}: no images in {self.images}")
        out = []
        for image in found[:limit or None]:
            label = self.labels / f"{image.stem}.png"
            if not label.is_file():
                raise ConfigError(f"segmentation set {self.path}: {image.name} has no label "
                                  f"{label}")
            out.append(SegSample(image.stem, image, label))
        return out
