"""A Karpathy split JSON (dataset_coco.json style) and its images, as CLIP_benchmark shards.

The JSON lists {"images": [{"filepath" (COCO only), "filename", "split", "sentences": [{"raw"}]}]}.
One split is written as test/N.tar: per image its file's bytes and a .txt with all its captions,
one per line. Shard N always holds the same slice of the split, so a killed build resumes where it
stopped; progress/N.json (written after the tar) marks a shard done and keeps its skip counts.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from dinov2clip.config import ConfigError, EvalSetConfig
from dinov2clip.formats.webdataset import IMAGE_EXTS
from dinov2clip.io_utils import atomic_write, atomic_write_json, read_json
from dinov2clip.terminal import progress


def plan_karpathy_split(name: str, spec: EvalSetConfig) -> list[dict]:
    """The split's entries, after checking the JSON and that its images are where they should be."""
    key = f"data.eval_sets.{name}"
    path, root = Path(spec.path).expanduser(), Path(spec.image_root).expanduser()
    try:
        images = json.loads(path.read_text())["images"]
    except FileNotFoundError:
        raise ConfigError(f"{key}.path: {path} not found") from None
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{key}.path: {path} is not a Karpathy split JSON "
                          '({"images": [{"filename", "split", "sentences"}, ...]})') from None
    entries = [im for im in images if im.get("split") == spec.split]
    if not entries:
        present = sorted({str(im.get("split")) for im in images})
        raise ConfigError(f"{key}.split: no images in split {spec.split!r} of {path} "
                          f"(splits there: {', '.join(present) or 'none'})")
    if not root.is_dir():
        raise ConfigError(f"{key}.image_root: {root} is not a directory")
    probe = [image_path(root, im) for im in entries[:20] if "filename" in im]
    if not probe:
        raise ConfigError(f"{key}.path: entries of split {spec.split!r} have no 'filename'")
    if not any(p.is_file() for p in probe):
        raise ConfigError(f"{key}.image_root: none of the first {len(probe)} images of split "
                          f"{spec.split!r} exist (looked for {probe[0]})")
    return entries


def image_path(root: Path, entry: dict) -> Path:
    return root / entry.get("filepath", "") / entry["filename"]


def write_karpathy_split(entries: list[dict], spec: EvalSetConfig, dest: Path) -> dict[str, int]:
    """Write the shards not yet done; returns the images skipped, by reason, over all shards,
    and under "empty_caption_lines" the empty sentences dropped from the images kept."""
    root, size = Path(spec.image_root).expanduser(), spec.shard_size
    skipped: Counter = Counter()
    n_shards = (len(entries) + size - 1) // size
    for s in progress(range(n_shards), desc=f"karpathy {spec.split}", unit="shard"):
        marker = dest / "progress" / f"{s}.json"
        if marker.exists():
            skipped.update(read_json(marker)["skipped"])
            continue
        samples, why = collect_samples(entries[s * size:(s + 1) * size], root, first=s * size)
        if samples:  # a shard whose every image is missing is left out rather than written empty
            atomic_write(dest / "test" / f"{s}.tar", lambda tmp, ss=samples: write_tar(tmp, ss))
        atomic_write_json(marker, {"written": len(samples), "skipped": dict(why)})
        skipped.update(why)
    return dict(skipped.most_common())


def collect_samples(entries: list[dict], root: Path, first: int) -> tuple[list[dict], Counter]:
    samples, skipped = [], Counter()
    for i, entry in enumerate(entries, start=first):
        captions = [" ".join((s.get("raw") or " ".join(s.get("tokens", []))).split())
                    for s in entry.get("sentences", [])]
        captions = [c for c in captions if c]
        empty_lines = len(entry.get("sentences", [])) - len(captions)
        if "filename" not in entry:
            skipped["no_filename"] += 1
            continue
        path = image_path(root, entry)
        if not captions:
            skipped["no_caption"] += 1
            continue
        if not path.is_file():
            skipped["missing_image"] += 1
            continue
        ext, data, reason = load_image(path)
        if reason:
            skipped[reason] += 1
            continue
        # Keys may not contain dots: the reader splits "key.ext" at the first one.
        key = f"{i:06d}_{path.stem.replace('.', '_')}"
        samples.append({"__key__": key, ext: data, "txt": "\n".join(captions)})
        if empty_lines:
            skipped["empty_caption_lines"] += empty_lines
    return samples, skipped


def load_image(path: Path) -> tuple[str, bytes, str]:
    """(extension, bytes, "") for a usable image; re-encodes types the extract stage can't read."""
    data = path.read_bytes()
    if not data:
        return "", b"", "empty_image"
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
        ext = path.suffix.lower().lstrip(".")
        if ext in IMAGE_EXTS:
            return ext, data, ""
        with Image.open(io.BytesIO(data)) as img:  # verify() leaves the image unusable
            buf = io.BytesIO()
            img.convert("RGB").save(buf, format="PNG")  # lossless, so the benchmark is unchanged
        return "png", buf.getvalue(), ""
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return "", b"", "unreadable_image"


def write_tar(tmp: str, samples: list[dict]) -> None:
    import webdataset as wds

    with wds.TarWriter(tmp) as sink:
        for sample in samples:
            sink.write(sample)
