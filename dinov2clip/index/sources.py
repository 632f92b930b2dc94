"""What an index is built from: an image folder (in fixed-size chunks) or webdataset shards.

The work is split into chunks, each embedded and stored on its own with a done-marker, so an
interrupted build resumes at the first unfinished chunk. A chunk's fingerprint (its file list,
or its shard's size and mtime) is kept in the marker: a chunk whose files changed is embedded
again, never mixed.

Indexes grow: the folder chunks of the last finished index keep their file lists, and files
added since then go into new chunks after them, so re-indexing embeds only the new files. A file
changed in place (its size or mtime moved) counts as new: it is embedded again in a new chunk,
and its row in the old chunk is left out of the index (assemble._live_rows), never served stale.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from dinov2clip.config import ConfigError
from dinov2clip.formats.images import IMAGE_SUFFIXES, list_images, sidecar_caption
from dinov2clip.formats.webdataset import image_bytes, read_groups, sample_url


@dataclass(frozen=True)
class Chunk:
    name: str  # chunks/<kind>/<name>.*
    files: tuple[Path, ...] = ()  # folder mode: image files
    shard: Path | None = None  # shards mode: one webdataset tar

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        if self.shard is not None:
            st = self.shard.stat()
            h.update(f"{self.shard.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
        for p in self.files:
            h.update(str(p).encode() + b"\0")
        return h.hexdigest()[:16]


@dataclass
class ChunkItems:
    """A chunk's images and one metadata row per image, in the same order."""

    images: list[Path | bytes] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)  # key, path, url, caption, kind (+stamp)
    skipped: Counter = field(default_factory=Counter)
    skipped_names: dict[str, str] = field(default_factory=dict)  # file or sample key -> reason
    shard_stamp: list[int] | None = None  # a shard chunk: its tar's [size, mtime_ns] as read


def plan_chunks(images: Path, chunk_size: int,
                indexed: dict[str, dict[str, list[int] | None]] | None = None) -> list[Chunk]:
    """Chunks over a folder of images (recursive) or a folder of *.tar shards (or one tar).

    indexed: {chunk name: {file key: its file_stamp when embedded}} of the last finished folder
    index (stamp None: an index from before stamps were kept). Those chunks keep their files (a
    removed or changed file's row drops out when the index is assembled); files that no chunk
    holds as they are now go into new chunks numbered after the last. Every rank reads the same
    finished index, so every rank plans the same chunks.
    """
    images = Path(images)
    if chunk_size < 1:
        raise ConfigError(f"--chunk-size must be at least 1, got {chunk_size}")
    if images.is_file() and images.suffix == ".tar":
        return [Chunk(name=images.stem, shard=images)]
    if not images.is_dir():
        raise ConfigError(f"image folder or shard directory not found: {images}")
    shards = sorted(images.glob("*.tar"))
    if shards:
        return [Chunk(name=p.stem, shard=p) for p in shards]
    files = list_images(images)
    if not files:
        raise ConfigError(f"{images}: no images ({' '.join(IMAGE_SUFFIXES)}) and no *.tar shards")
    indexed = indexed or {}
    chunks = [Chunk(name=name, files=tuple(images / k for k in keys))
              for name, keys in sorted(indexed.items())]
    current = {k for files in indexed.values() for k, stamp in files.items()
               if stamp is None or stamp == file_stamp(images / k)}
    new = [p for p in files if file_key(p, images) not in current]
    first = max((int(name) for name in indexed), default=-1) + 1
    return chunks + [Chunk(name=f"{first + i // chunk_size:05d}",
                           files=tuple(new[i:i + chunk_size]))
                     for i in range(0, len(new), chunk_size)]


def file_stamp(path: Path | str) -> list[int] | None:
    """[size, mtime in ns] of a file as it is now (None: gone): what tells a changed file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def file_key(path: Path, root: Path) -> str:
    """A folder image's key: its path under the folder (or its name when root is one file)."""
    return str(path.relative_to(root)) if root.is_dir() else path.name


def chunk_items(chunk: Chunk, root: Path) -> ChunkItems:
    if chunk.shard is not None:
        return _read_tar(chunk.shard)
    items = ChunkItems()
    for p in chunk.files:
        items.images.append(p)
        items.rows.append({"key": file_key(p, root), "stamp": file_stamp(p),
                           "path": str(p.resolve()), "url": "", "caption": sidecar_caption(p),
                           "kind": "file"})
    return items


def _read_tar(path: Path) -> ChunkItems:
    """A webdataset tar's images, with its .txt caption and .json url where present."""
    stamp = file_stamp(path)  # before reading: a tar rewritten meanwhile is not this one
    groups, skipped = read_groups(path)
    out = ChunkItems(skipped=skipped, shard_stamp=stamp)
    out.skipped_names.update({f"{path.name}:{reason}": reason for reason in skipped})
    for key, parts in groups:
        image = image_bytes(parts)
        if image is None:
            out.skipped["no_image"] += 1
            out.skipped_names[key] = "no_image"
            continue
        out.images.append(image)
        out.rows.append({"key": key, "path": str(path.resolve()), "url": sample_url(parts),
                         "caption": " ".join(parts.get("txt", b"").decode(
                             "utf-8", errors="replace").split()), "kind": "tar"})
    return out
