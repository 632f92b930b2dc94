"""One benchmark installed as segsets/<name> (formats/segsets.py): its archives downloaded (or
read from a path), each sample's image copied as it is and its label mapped to class indices.

Resumable and honest, as evalsets.py is: pending.json names the source while the set is being
written; a sample is complete once its image exists; classes.json, written last, holds the
counts (images, skipped by reason, label values the published list does not name) and the
source with each archive's sha256. A re-run with the same source does nothing; another source
for the same directory stops."""

from __future__ import annotations

import io
import logging
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from dinov2clip.config import ConfigError, SegSetSourceConfig
from dinov2clip.data.segmentation.archives import DamagedMember, Tree, open_tree, sha256_of
from dinov2clip.data.segmentation.fetch import fetch
from dinov2clip.data.segmentation.sources import KINDS, Kind, LabelMap
from dinov2clip.formats.segsets import SegSet
from dinov2clip.io_utils import atomic_write_json, read_json, remove_dead_temps
from dinov2clip.store import WriterLock
from dinov2clip.terminal import progress

log = logging.getLogger(__name__)


def source_record(name: str, spec: SegSetSourceConfig) -> dict:
    """The checked, normalised description of where a set comes from (a path made absolute);
    every mistake is one line naming the key, before anything is written."""
    key = f"data.segmentation_sets.{name}"
    kind_name = spec.resolved_kind(name)
    kind = KINDS[kind_name]
    files = ", ".join(a.file for a in kind.archives)
    if kind.needs_path and not spec.path:
        raise ConfigError(f"{key}.path is required: {kind_name} has no public download (it needs "
                          f"a login or a conversion); give the folder holding {kind.layout}")
    if spec.urls and kind.needs_path:
        raise ConfigError(f"{key}.urls: {kind_name} has no download; give path alone")
    if spec.urls and spec.path:
        raise ConfigError(f"{key}: give path or urls, not both")
    if spec.urls and len(spec.urls) != len(kind.archives):
        raise ConfigError(f"{key}.urls: {kind_name} takes {len(kind.archives)} (in this order: "
                          f"{files}), got {len(spec.urls)}")
    record = {"kind": kind_name, "max_images": spec.max_images}
    if spec.path:
        path = Path(spec.path).expanduser().resolve()
        if not path.exists():
            raise ConfigError(f"{key}.path: {path} does not exist")
        return {**record, "path": str(path)}
    return {**record, "urls": list(spec.urls) or [a.url for a in kind.archives]}


def describe(record: dict) -> str:
    where = f"path {record['path']}" if "path" in record else " ".join(record["urls"])
    cap = f", max_images {record['max_images']}" if record.get("max_images") else ""
    return f"{record['kind']} from {where}{cap}"


def install_segmentation_set(name: str, spec: SegSetSourceConfig, dest: Path,
                             downloads: Path, wait: bool = False) -> dict:
    """Write segsets/<name> at dest; returns what classes.json records (reused: already there).
    One writer at a time: a second data stage on the same set stops in one line, or with wait
    waits for the first (store/lock.py), and then finds the set done."""
    record = source_record(name, spec)  # a mistake is one line before any lock is taken
    with WriterLock(dest, command="data").acquire(wait):
        return _install(name, record, SegSet(dest), downloads, wait)


def _install(name: str, record: dict, seg: SegSet, downloads: Path, wait: bool) -> dict:
    key, dest = f"data.segmentation_sets.{name}", seg.path
    meta = seg.read_meta()
    if meta:
        if meta.get("source") == record:
            return {**meta, "reused": True}
        previous = meta.get("source")
        was = describe(previous) if isinstance(previous, dict) and "kind" in previous else (
            f"{previous!r}, not by data.segmentation_sets")
        raise ConfigError(f"{key}: {dest} was made from {was}; delete it to rebuild from "
                          f"{describe(record)}")
    pending = read_json(seg.pending_file) if seg.pending_file.is_file() else None
    if pending is None and seg.images.is_dir() and any(seg.images.iterdir()):
        raise ConfigError(f"{key}: {seg.images} exists but was not made by "
                          "data.segmentation_sets; delete it or choose another name")
    if pending is not None and pending != record:
        log.warning("segmentation set %s: discarding a partial build from %s", name,
                    describe(pending))
        seg.clear()
    kind = KINDS[record["kind"]]
    trees, archives = _open_sources(key, kind, record, downloads, wait)  # downloads first
    atomic_write_json(seg.pending_file, record)
    try:
        counts = _write_samples(key, name, kind, trees, seg, record["max_images"])
    finally:
        for tree in {id(t): t for pair in trees for t in pair}.values():
            tree.close()
    result = {"source": record, "archives": archives, "kind": record["kind"],
              "published_images": kind.published_images, **counts}
    seg.write_classes(list(kind.classes), kind.background, prompts=list(kind.prompts), **result)
    seg.pending_file.unlink()
    return {"classes": list(kind.classes), "background": kind.background, **result}


def _open_sources(key: str, kind: Kind, record: dict, downloads: Path,
                  wait: bool) -> tuple[list[tuple[Tree, Tree]], dict[str, str]]:
    """[(tree the images are in, tree the labels are in)], {archive file: sha256}."""
    if "urls" in record:
        paths = []
        for archive, url in zip(kind.archives, record["urls"], strict=True):
            # sets share archives (voc20 and voc21 the tar): one writer appends to a .part
            with WriterLock(downloads / archive.file, command="data").acquire(wait):
                sha = fetch(url, downloads / archive.file, key)
            paths.append((downloads / archive.file, sha))
    else:
        root = Path(record["path"])
        held = [root / a.file for a in kind.archives]
        if kind.archives and all(p.is_file() for p in held):  # a folder holding the archives
            paths = [(p, sha256_of(p)) for p in held]
        elif root.is_file() and len(kind.archives) == 1:  # the archive itself
            paths = [(root, sha256_of(root))]
        else:  # the extracted dataset
            tree = open_tree(root, f"{key}.path")
            return [(tree, tree)], {}
    trees = [open_tree(p, key) for p, _ in paths]
    pairs = [(trees[0], trees[-1])] if len(trees) > 1 else [(trees[0], trees[0])]
    return pairs, {p.name: sha for p, sha in paths}


def _index(key: str, kind: Kind, pairs: list[tuple[Tree, Tree]]):
    """(key -> (tree, image member), key -> (tree, label member, its mapping), split keys or
    None) for every member the kind's patterns match."""
    images: dict[str, tuple[Tree, str]] = {}
    labels: dict[str, tuple[int, Tree, str, LabelMap]] = {}
    splits: list[tuple[Tree, str]] = []
    for image_tree, label_tree in pairs:
        for name in image_tree.names:
            if m := kind.images.match(name):
                if m["key"] in images:
                    raise ConfigError(f"{key}: two images for {m['key']}: "
                                      f"{images[m['key']][1]} and {name}; point it at one copy")
                images[m["key"]] = (image_tree, name)
            if kind.split is not None and kind.split.match(name):
                splits.append((image_tree, name))
        for name in label_tree.names:
            for rank, flavour in enumerate(kind.labels):
                if (m := flavour.pattern.match(name)) and (
                        m["key"] not in labels or rank < labels[m["key"]][0]):
                    labels[m["key"]] = (rank, label_tree, name, flavour.mapping)
    where = ", ".join(sorted({str(t.path) for pair in pairs for t in pair}))
    if not images:
        raise ConfigError(f"{key}: no images found in {where}: expected {kind.layout}")
    split = None
    if kind.split is not None:
        if len(splits) != 1:
            found = "none" if not splits else ", ".join(n for _, n in splits)
            raise ConfigError(f"{key}: expected one split list ({kind.split.pattern}) in {where}, "
                              f"found {found}: expected {kind.layout}")
        tree, name = splits[0]
        try:
            text = tree.read(name).decode("utf-8", "replace")
        except DamagedMember as err:  # without its list the split is unknown: nothing to skip
            raise ConfigError(f"{key}: cannot read the split list {err}; the archive is "
                              "damaged: delete it (and its .sha256) and re-run") from None
        split = [line.strip() for line in text.splitlines() if line.strip()]
    return images, {k: v[1:] for k, v in labels.items()}, split


def _write_samples(key: str, name: str, kind: Kind, pairs, seg: SegSet, max_images: int) -> dict:
    images, labels, split = _index(key, kind, pairs)
    keys = sorted(set(split) if split is not None else images)
    if max_images:
        keys = keys[:max_images]
    for folder in (seg.images, seg.labels):
        if folder.is_dir():
            remove_dead_temps(folder)
    skipped: Counter = Counter()
    written = odd_labels = odd_pixels = 0
    for k in progress(keys, desc=f"segmentation set {name}", unit="img"):
        if k not in images:
            skipped["listed_without_image"] += 1
            continue
        if k not in labels:
            skipped["no_label"] += 1
            continue
        label_tree, label_name, mapping = labels[k]
        image_tree, image_name = images[k]
        suffix = Path(image_name).suffix.lower()
        done = seg.has_image(k, suffix)  # written by an earlier, interrupted run
        try:
            label_data = label_tree.read(label_name)
            data = None if done else image_tree.read(image_name)
        except DamagedMember as err:
            skipped["damaged_in_archive"] += 1
            log.warning("segmentation set %s: cannot read %s; skipped. The archive is "
                        "damaged: delete it (and its .sha256) and re-run to fetch it again",
                        name, err)
            continue
        values, problem = _decode_label(label_data)
        if values is None:
            skipped[problem] += 1
            continue
        mapped, odd = mapping.apply(values)
        if not done:
            size = _image_size(data)
            if size is None:
                skipped["unreadable_image"] += 1
                continue
            if size != (values.shape[1], values.shape[0]):
                skipped["label_size_differs"] += 1
                continue
            seg.write_encoded(k, data, suffix, mapped)
        written += 1
        odd_labels, odd_pixels = odd_labels + (odd > 0), odd_pixels + odd
    if not written:
        raise ConfigError(f"{key}: none of the {len(keys)} samples found could be written "
                          f"(skipped: {_reasons(skipped)}): expected {kind.layout}")
    return {"images": written, "skipped": dict(sorted(skipped.items())),
            "unpublished_label_values": {"labels": odd_labels, "pixels": odd_pixels}}


def _decode_label(data: bytes) -> tuple[np.ndarray | None, str]:
    """((H, W) uint8 values of a one-channel label, "") or (None, why it cannot be read)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode not in ("L", "P"):
                return None, "label_not_one_channel"
            return np.asarray(im, dtype=np.uint8), ""
    except (OSError, ValueError, SyntaxError):  # PIL's errors for a broken file
        return None, "unreadable_label"


def _image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header alone, or None for a file PIL cannot identify."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except (OSError, ValueError, SyntaxError):
        return None


def _reasons(skipped: dict) -> str:
    return ", ".join(f"{n} {why}" for why, n in sorted(skipped.items())) or "none"


def format_summary(name: str, r: dict) -> str:
    src = r["source"]
    state = "already installed" if r.get("reused") else "installed"
    if "path" in src and not r.get("archives"):
        origin = src["path"]
    else:
        origin = ", ".join(f"{f} (sha256 {sha[:12]})" for f, sha in r["archives"].items())
    bg = " with background" if r["background"] else ""
    odd = r.get("unpublished_label_values") or {}
    odd_text = (f"; {odd['labels']} labels held values the published list does not name "
                f"({odd['pixels']} pixels, ignored)") if odd.get("labels") else ""
    return (f"segmentation set {name}: {state}, {r['images']} images ({src['kind']}, "
            f"{r['published_images']} published), {len(r['classes'])} classes{bg}, from "
            f"{origin}; skipped: {_reasons(r.get('skipped') or {})}{odd_text}")
