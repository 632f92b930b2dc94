"""A segmentation eval set on disk, the floor's format for it: the data stage writes one, the
eval stage and tests read it.

    <set>/images/<key>.png|.jpg   the picture
    <set>/labels/<key>.png        "L" PNG of class indices, 255 = ignored
    <set>/classes.json            written last: {"classes": [...], "background": bool, ...};
                                  with background, classes[0] is it ("background"); optional
                                  "prompts": the name each class is prompted with, where the
                                  protocol renames one ("diningtable" -> "table")
    <set>/pending.json            while a set is being installed: where it comes from

A set without classes.json is unfinished and refused. A sample's label is written before its
image, each renamed into place whole, so a sample whose image exists is complete.
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

    @property
    def pending_file(self) -> Path:
        return self.path / "pending.json"

    def write_sample(self, key: str, image: Image.Image, label: Image.Image) -> None:
        for folder in (self.images, self.labels):
            folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self.images / f"{key}.png", lambda tmp: image.save(tmp, "PNG"))
        atomic_write(self.labels / f"{key}.png", lambda tmp: label.save(tmp, "PNG"))

    def write_encoded(self, key: str, image: bytes, suffix: str, label: np.ndarray) -> None:
        """An image's file bytes as they are (a JPEG is not re-encoded) and its (H, W) uint8
        label map as an "L" PNG; the label first, so an image on disk has its label."""
        for folder in (self.images, self.labels):
            folder.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8), "L")
        atomic_write(self.labels / f"{key}.png", lambda tmp: picture.save(tmp, "PNG"))

        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                fh.write(image)

        atomic_write(self.images / f"{key}{suffix}", write)

    def has_image(self, key: str, suffix: str) -> bool:
        """Whether the sample is written (its image is written last)."""
        return (self.images / f"{key}{suffix}").is_file()

    def clear(self) -> None:
        """Every sample and the classes file gone: a partial build from another source."""
        import shutil

        for folder in (self.images, self.labels):
            shutil.rmtree(folder, ignore_errors=True)
        self.classes_file.unlink(missing_ok=True)

    def write_classes(self, classes: list[str], background: bool, source: str | dict,
                      **extra) -> None:
        """Written last: the set is finished. extra: what else to record (counts, archives)."""
        atomic_write_json(self.classes_file, {"classes": list(classes),
                                              "background": bool(background), "source": source,
                                              **extra})

    def read_meta(self) -> dict:
        """classes.json as written, or {} for an unfinished set."""
        return read_json(self.classes_file) if self.classes_file.is_file() else {}

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

    def read_prompts(self) -> list[str]:
        """The name each class is prompted with: classes.json's "prompts", else the classes."""
        classes, _ = self.read_classes()
        prompts = self.read_meta().get("prompts")
        if prompts is None:
            return classes
        if not isinstance(prompts, list) or len(prompts) != len(classes) or not all(
                isinstance(p, str) and p for p in prompts):
            raise ConfigError(f"{self.classes_file}: 'prompts' must name each of the "
                              f"{len(classes)} classes")
        return prompts

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
