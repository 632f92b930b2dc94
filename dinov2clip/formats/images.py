"""Image collections on disk: listing a folder, decoding in DataLoader workers, the bytes and
thumbnails of an indexed image (only while it is still the file that was indexed).

Each image is decoded once and cut to every model's crop with the extract stage's own
resize_and_crop, so an image indexed or classified here is embedded as extract would embed it.
An unreadable file is a counted failure, never an exception that stops the job.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from dinov2clip.formats.webdataset import IMAGE_EXTS, read_tar_member
from dinov2clip.models.preprocess import PreprocessSpec, decode, decode_or_skip, resize_and_crop

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
        img, reason = decode_or_skip(data)
        if img is None:
            return {"index": i, "failure": reason}
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


class ImageGone(LookupError):
    """An indexed image that can no longer be shown as it was indexed: unreadable, or a file
    changed (or swapped for a link) since."""


def original_bytes(kind: str, path: str, key: str, size: int | None = None,
                   mtime_ns: int | None = None) -> bytes:
    """The encoded bytes of an indexed image: a file ("file"), or a sample in a shard ("tar").
    size, mtime_ns: the file's (a sample's: its tar's) as indexed (meta.parquet; None in an
    index from before they were kept). Raises ImageGone."""
    if kind == "file":
        return _indexed_file(path, None if size is None else [size, mtime_ns])
    if kind == "tar":
        check_still_indexed(kind, path, size, mtime_ns)
    data = read_tar_member(Path(path), key) if kind == "tar" else None
    if data is None:
        raise ImageGone(f"is no longer readable in {path}")
    return data


def check_still_indexed(kind: str, path: str, size: int | None = None,
                        mtime_ns: int | None = None) -> None:
    """Raises ImageGone when an indexed file, or a sample's tar, is no longer the one indexed,
    without reading it: for what was rendered from it earlier and cached (a thumbnail), and
    before a tar is searched for a sample."""
    if kind not in ("file", "tar"):
        return
    if kind == "file" and os.path.realpath(path) != path:
        raise _changed(path)
    try:
        st = os.lstat(path)
    except OSError:
        raise ImageGone(f"is no longer readable at {path}") from None
    if not _as_indexed(st, None if size is None else [size, mtime_ns]):
        raise _changed(path)


def _indexed_file(path: str, stamp: list[int] | None) -> bytes:
    """The file's bytes if it is still the one indexed. The index keeps the resolved path, so a
    symlink on it now (say an image replaced by a link to /etc/passwd) is a change, and so is
    another size or mtime, read from the opened file itself so nothing can swap in between."""
    if os.path.realpath(path) != path:
        raise _changed(path)
    try:  # O_NOFOLLOW: a link swapped in after the check; O_NONBLOCK: a FIFO must not hang us
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb") as f:
            if not _as_indexed(os.fstat(f.fileno()), stamp):
                raise _changed(path)
            return f.read()
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise _changed(path) from None
        raise ImageGone(f"is no longer readable at {path}") from None


def _as_indexed(st: os.stat_result, stamp: list[int] | None) -> bool:
    """A regular file with the size and mtime indexed (stamp None: an index that kept none)."""
    return stat.S_ISREG(st.st_mode) and (stamp is None or [st.st_size, st.st_mtime_ns] == stamp)


def _changed(path: str) -> ImageGone:
    return ImageGone(f"has changed since it was indexed ({path})")


def thumbnail_jpeg(data: bytes, size: int) -> bytes:
    """A JPEG at most size x size of encoded image bytes; raises what decode raises."""
    from PIL import Image

    img = decode(data).convert("RGB")
    img.thumbnail((size, size), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()
