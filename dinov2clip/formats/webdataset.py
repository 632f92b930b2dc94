"""Reading webdataset shards sample by sample, counting what cannot be used instead of failing.

Plain tarfile rather than the webdataset pipeline: a truncated or corrupt tar must cost only the
samples it loses, counted by reason, and the samples before the damage must still be kept.
"""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp")  # gif: its first frame


@dataclass
class RawSample:
    key: str
    image: bytes
    captions: list[str]
    url: str = ""


@dataclass
class ShardContents:
    samples: list[RawSample] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # reason -> samples lost
    dropped: Counter = field(default_factory=Counter)  # parts of samples left out, e.g. lines


def read_shard(path: Path, multi_caption: bool) -> ShardContents:
    """All usable samples of one tar, in order; multi_caption: the .txt holds one caption a line."""
    groups, skipped = read_groups(path)
    out = ShardContents(skipped=skipped)
    seen: set[str] = set()
    for key, parts in groups:
        sample, reason, empty_lines = _to_sample(key, parts, multi_caption)
        if empty_lines:
            out.dropped["empty_caption_lines"] += empty_lines
        if sample is not None and key in seen:
            sample, reason = None, "duplicate_key"
        if sample is None:
            out.skipped[reason] += 1
        else:
            seen.add(key)
            out.samples.append(sample)
    return out


def read_groups(path: Path) -> tuple[list[tuple[str, dict[str, bytes]]], Counter]:
    """A tar's samples as (key, {extension: bytes}) in order, and what was lost, by reason.

    A truncated tar keeps the samples before the damage; the last group may be cut in half, so
    callers keep it only if it still has what they need.
    """
    skipped: Counter = Counter()
    if path.stat().st_size == 0:
        skipped["zero_byte_file"] += 1
        return [], skipped
    groups: list[tuple[str, dict[str, bytes]]] = []  # consecutive members of one key, in order
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = split_name(member.name)
                if not groups or groups[-1][0] != key:
                    groups.append((key, {}))  # before reading, so a cut sample is counted
                fh = tar.extractfile(member)
                groups[-1][1][ext.lower()] = fh.read() if fh else b""
    except (tarfile.TarError, EOFError, OSError):
        skipped["truncated_tar"] += 1
    if not groups and not skipped:
        skipped["empty_shard"] += 1
    return groups, skipped


def is_image(ext: str) -> bool:
    """A member extension the extract stage reads as the image: "jpg", or e.g. "png.jpg"
    (decoders go by the last dotted part)."""
    return ext.lower().rpartition(".")[2] in IMAGE_EXTS


def image_bytes(parts: dict[str, bytes]) -> bytes | None:
    """A sample's image payload."""
    return next((data for ext, data in parts.items() if is_image(ext)), None)


def sample_url(parts: dict[str, bytes]) -> str:
    """The url in a sample's .json (img2dataset writes one), or ""."""
    if "json" not in parts:
        return ""
    try:
        return str(json.loads(parts["json"]).get("url", "") or "")
    except (ValueError, AttributeError):
        return ""


def split_name(name: str) -> tuple[str, str]:
    """webdataset's rule: the key is the path up to the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem).removeprefix("./"), ext


def caption_lines(text: str) -> tuple[list[str], int]:
    """An eval set's .txt: (its captions, one a line, stripped; how many empty lines it had)."""
    lines = [line.strip() for line in text.splitlines()]
    captions = [line for line in lines if line]
    return captions, len(lines) - len(captions)


def _to_sample(key: str, parts: dict[str, bytes], multi_caption: bool):
    """(sample or None, why it was skipped, empty caption lines dropped)."""
    image = image_bytes(parts)
    if image is None:
        return None, "no_image", 0
    if not image:
        return None, "zero_byte_image", 0
    if "txt" not in parts:
        return None, "no_caption", 0
    text = parts["txt"].decode("utf-8", errors="replace")
    empty_lines = 0
    if multi_caption:
        captions, empty_lines = caption_lines(text)
    else:
        captions = [" ".join(text.split())]  # one caption; stray newlines become spaces
    captions = [c for c in captions if c]
    if not captions:
        return None, "empty_caption", empty_lines
    sample = RawSample(key=key, image=image, captions=captions, url=sample_url(parts))
    return sample, "", empty_lines


def read_tar_member(path: Path, key: str) -> bytes | None:
    """The image bytes of one sample in a tar (for showing a search hit), or None."""
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                name, ext = split_name(member.name)
                if name == key and is_image(ext):
                    fh = tar.extractfile(member)
                    return fh.read() if fh else None
    except (tarfile.TarError, EOFError, OSError):
        return None
    return None
