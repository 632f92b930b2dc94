"""Rank 0's last step of `pipeline index`: every done chunk's live rows into index.faiss,
dino.faiss, meta.parquet and, last, index.json.

A row drops out when its file is gone or changed since it was embedded (a newer chunk holds the
new one). An IVF index keeps its trained centroids until the collection outgrows them
(RETRAIN_GROWTH); HNSW appends while nothing was removed.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dinov2clip.config import ConfigError
from dinov2clip.index import faiss_index
from dinov2clip.index.chunks import ChunkStore, stamps_of
from dinov2clip.index.sources import Chunk, file_stamp
from dinov2clip.io_utils import atomic_write, atomic_write_json
from dinov2clip.store.index import VECTORS

log = logging.getLogger(__name__)
RETRAIN_GROWTH = 2  # an IVF index is trained again once the collection doubles since training


def _live_rows(store: ChunkStore, chunks: list[Chunk], records: list[dict]
               ) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """Every chunk's rows whose image is still as it was embedded (a removed file drops out, and
    so does a changed one's old row: a newer chunk holds it), and per chunk the mask kept.
    records: the chunks' done-markers."""
    tables, keep = [], {}
    for c, record in zip(chunks, records, strict=True):
        t = pq.read_table(store.out.chunk_meta(c.name))
        rows = t.to_pydict()
        stamps = (stamps_of(record) if c.shard is None else  # a shard's rows: the tar's stamp
                  dict.fromkeys(rows["key"], record.get("shard_stamp")))
        keep[c.name] = np.array([kind != "file" or _unchanged(path, stamps.get(key))
                                 for kind, path, key in zip(rows["kind"], rows["path"],
                                                            rows["key"], strict=True)],
                                dtype=bool)
        t = t.filter(pa.array(keep[c.name], pa.bool_()))
        t = t.append_column("chunk", pa.array([c.name] * t.num_rows, pa.string()))
        tables.append(_with_stamps(t, stamps))
    return pa.concat_tables(tables), keep


def _with_stamps(t: pa.Table, stamps: dict[str, list[int] | None]) -> pa.Table:
    """t with each file's size and mtime_ns as embedded, a shard sample's its tar's (null: a
    marker from before stamps were kept)."""
    kept = [stamps.get(key) for key in t.column("key").to_pylist()]
    for i, name in enumerate(("size", "mtime_ns")):
        t = t.append_column(name, pa.array([s[i] if s else None for s in kept], pa.int64()))
    return t


def _unchanged(path: str, stamp: list[int] | None) -> bool:
    """The file is there and, when its stamp was kept, still as it was embedded."""
    now = file_stamp(path)
    return now is not None and (stamp is None or now == stamp)


def _still_skipped(chunks: list[Chunk], records: list[dict], images: Path
                   ) -> tuple[Counter, dict[str, str]]:
    """(count by reason, {file or sample: reason}) of what the chunks skipped; a folder file
    skipped then and removed or changed since (fixed, and embedded in a newer chunk) is not."""
    skipped: Counter = Counter()
    skipped_files: dict[str, str] = {}
    for c, r in zip(chunks, records, strict=True):
        if c.shard is None:
            stamps = stamps_of(r)
            files = {key: why for key, why in r.get("skipped_files", {}).items()
                     if _unchanged(images / key, stamps.get(key))}
            skipped.update(files.values())
        else:
            files = r.get("skipped_files", {})
            skipped.update(r["skipped"])
        skipped_files.update(files)
    return skipped, skipped_files


def assemble(store: ChunkStore, chunks: list[Chunk], run_label: str, images: Path, kind: str,
              exact_max: int, previous: dict) -> dict:
    out = store.out
    store.check_files([c.name for c in chunks])
    records = [store.markers.read(c.name) for c in chunks]
    skipped, skipped_files = _still_skipped(chunks, records, images)
    meta, keep = _live_rows(store, chunks, records)
    n, names = meta.num_rows, [c.name for c in chunks]
    if n == 0:
        raise ConfigError(f"{images}: no readable images (skipped: {dict(skipped)})")
    removed = sum(r["n_images"] for r in records) - n
    chosen = faiss_index.choose_kind(kind, n, exact_max)
    log.info("building a %s index over %d embeddings (%d rows of removed or changed files "
             "left out)", chosen, n, removed)
    appended = names[:len(previous.get("chunks", []))] == previous.get("chunks") and not removed
    info = {}
    for array in VECTORS:
        dim = np.load(out.chunk_array(array, names[0]), mmap_mode="r").shape[1]
        old = _reusable(out.faiss(array), previous, chosen, n, appended)
        index, built = faiss_index.build(chosen, dim, n, store.embeddings(names, keep, array),
                                         reuse=old, reused_info=previous)
        info = info or {**built, "dim": dim}
        atomic_write(out.faiss(array), lambda tmp, index=index: _write_index(index, tmp))
    atomic_write(out.meta, lambda tmp: pq.write_table(meta, tmp))
    summary = {"run_dir": run_label, "source": str(images.resolve()),
               "n_images": n, **info, "exact_max": exact_max, "n_chunks": len(chunks),
               "chunks": names, "n_removed": removed, "skipped": dict(sorted(skipped.items())),
               "skipped_files": dict(sorted(skipped_files.items())),
               "models_hash": store.models_hash}
    atomic_write_json(out.summary, summary)  # last: the index is complete
    if skipped:
        log.warning("skipped %d images: %s (by name in index.json)", sum(skipped.values()),
                    dict(skipped))
    log.info("index of %d images (%s) in %s", n, info["kind"], out)
    return {**summary, "out_dir": str(out)}


def _reusable(path: Path, previous: dict, kind: str, n: int, appended: bool):
    """The last index, when its training still fits: IVF until the collection outgrows its
    centroids, HNSW while rows were only appended. None: build afresh."""
    if not previous or previous.get("kind") != kind or not path.is_file():
        return None
    if kind == "ivf" and n <= RETRAIN_GROWTH * previous.get("trained_n", 0):
        return _read_index(path)
    if kind == "hnsw" and appended:
        return _read_index(path)
    return None


def _read_index(path: Path):
    import faiss

    return faiss.read_index(str(path))


def _write_index(index, path) -> None:
    import faiss

    faiss.write_index(index, str(path))
