"""`pipeline index`: embed an image collection with projected DINOv2, then index it with FAISS.

The directory's layout is IndexDir's (dinov2clip/store/index.py).

Re-running on a grown folder embeds only the new files and those changed in place (see
sources.plan_chunks); files gone from the folder, and the old rows of changed ones, drop out of
the assembled index. An IVF index keeps its trained centroids until
the collection outgrows them (RETRAIN_GROWTH); HNSW appends while nothing was removed.

Under torchrun or srun, rank r embeds chunks[r::world_size] (each rank on its own GPU, no
process group) and rank 0 builds the index once every chunk carries its done-marker.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from torch.utils.data import DataLoader

from dinov2clip.config import ConfigError, UseOptions, config_hash, to_dict
from dinov2clip.cpu_threads import dino_tower, threads_for_models
from dinov2clip.device import rank_and_world
from dinov2clip.formats.images import ImageCrops, collate_crops
from dinov2clip.index import faiss_index
from dinov2clip.index.sources import Chunk, ChunkItems, chunk_items, file_stamp, plan_chunks
from dinov2clip.io_utils import (
    atomic_save_npy,
    atomic_write,
    atomic_write_json,
    remove_dead_temps,
    remove_temps,
)
from dinov2clip.store import IndexDir, RunDir, WriterLock
from dinov2clip.store.index import VECTORS
from dinov2clip.store.integrity import file_record, npy_problem, parquet_problem
from dinov2clip.terminal import progress

log = logging.getLogger(__name__)
RETRAIN_GROWTH = 2  # an IVF index is trained again once the collection doubles since training

META_SCHEMA = pa.schema([("key", pa.string()), ("path", pa.string()), ("url", pa.string()),
                         ("caption", pa.string()), ("kind", pa.string())])


def build_index(**args) -> dict:
    """_build_index(**args); the lock it takes on the index directory is released at the end."""
    with ExitStack() as held:
        return _build_index(held=held, **args)


def _build_index(*, held: ExitStack, run: str | Path, images: Path, root: Path | None = None,
                 out_dir: Path | None = None,
                 chunk_size: int = 4096, exact_max: int = 100_000, kind: str = "auto",
                 options: UseOptions = UseOptions(), force: bool = False,
                 wait: bool = False) -> dict:
    from dinov2clip.models.inference import DinoV2Clip

    hub = RunDir.is_hub(run)
    if out_dir is None and hub:
        raise ConfigError("--out is needed with a hub run (its files live in the hub cache)")
    run_dir, images = RunDir.resolve(run, root), Path(images)
    # what index.json names: a hub run stays "hf-hub:ORG/NAME"
    run_label = str(run) if hub else str(run_dir.path.resolve())
    faiss_index.choose_kind(kind, 0, exact_max)  # a bad kind fails before any work
    rank, world = rank_and_world()
    if force and world > 1:  # one rank deleting what another already wrote would lose chunks
        raise ConfigError("--force with several ranks: delete the old index first, or rebuild "
                          "it in one process")
    out = IndexDir(out_dir if out_dir else run_dir.index_dir(images.stem))
    run_dir.read_config()  # a missing run is one clear error, before any work
    # This rank's lock, before --force deletes anything: a second build refuses (or waits).
    held.enter_context(WriterLock(out.path, rank, "index").acquire(wait))
    if force and out.path.exists():
        _remove_old_index(out)
    store = ChunkStore(out, models_hash(run_dir))
    remove_dead_temps(out.path)  # index.faiss, meta.parquet, index.json of a killed rank 0
    previous = _previous_summary(out, store.models_hash)
    chunks = plan_chunks(images, chunk_size, store.indexed_files(previous.get("chunks", [])))
    model = DinoV2Clip.from_pretrained(run_dir.path, **options.model_args())
    mine = chunks[rank::world]
    todo = [c for c in mine if not store.is_done(c)]
    for chunk in todo:
        store.remove_temps(chunk)
    log.info("index %s: %d chunks, %d for rank %d/%d, %d of them already done, into %s", images,
             len(chunks), len(mine), rank, world, len(mine) - len(todo), out)
    t0, n_new = time.perf_counter(), 0
    with threads_for_models(model.device, options.num_workers,
                            [dino_tower(model.dino, model.dino_spec.crop)]):
        for chunk in todo:
            n_new += _embed_chunk(model, chunk, images, store, options)
    if n_new:
        log.info("embedded %d images in %.1fs (%.1f img/s)", n_new, time.perf_counter() - t0,
                 n_new / max(time.perf_counter() - t0, 1e-9))
    if rank != 0:
        log.info("rank %d done; rank 0 builds the index once every chunk is embedded", rank)
        return {"rank": rank, "n_embedded": n_new, "out_dir": str(out)}
    wait_for_chunks(store, chunks)
    return _assemble(store, chunks, run_label, images, kind, exact_max, previous)


def _previous_summary(out: IndexDir, models_hash: str) -> dict:
    """The last finished index's index.json, if it was built by this run ({} if none)."""
    if not out.is_finished():
        return {}
    summary = out.read_summary()
    if summary.get("models_hash") != models_hash:
        raise ConfigError(f"{out} was built with another run or projector; use --force to "
                          "rebuild it or --out for a new index")
    return summary


def wait_for_chunks(store: ChunkStore, chunks: list[Chunk], poll_s: float = 2.0,
                    report_s: float = 60.0) -> None:
    """Block until every chunk has its done-marker: the other ranks' share, under torchrun.

    No timeout: torchrun stops every rank when one fails. Interrupted, a run in one process
    finds the finished chunks and builds the index from them.
    """
    last_report = time.monotonic()
    missing = chunks
    while missing := [c for c in missing if not store.is_done(c)]:  # done stays done
        if time.monotonic() - last_report >= report_s:
            log.info("waiting for %d chunks from the other ranks (first: %s)", len(missing),
                     missing[0].name)
            last_report = time.monotonic()
        time.sleep(poll_s)


def _remove_old_index(out: IndexDir) -> None:
    # --force deletes a directory only if it is an index: a mistyped --out must not cost data.
    if not out.looks_like_index() and any(out.path.iterdir()):
        raise ConfigError(f"--force: {out} is not an index directory; not deleting it")
    shutil.rmtree(out.path)


class ChunkStore:
    """The chunks of one index directory: which are done, and writing and reading them."""

    def __init__(self, out: IndexDir, models_hash: str):
        self.out, self.models_hash = out, models_hash
        self.markers = out.markers

    def is_done(self, chunk: Chunk) -> bool:
        """Embedded, by this run, from these files; a stale chunk is embedded again."""
        record = self.markers.read(chunk.name)
        if record is None:
            return False
        if record.get("models_hash") != self.models_hash:
            raise ConfigError(f"{self.out} was built with another run or projector; "
                              "use --force to rebuild it or --out for a new index")
        if record.get("fingerprint") != chunk.fingerprint():
            log.warning("chunk %s: its files changed since it was embedded; embedding it again",
                        chunk.name)
            return False
        if not self.out.chunk_array("dino", chunk.name).is_file():  # older indexes lack it
            return False
        problem = self.file_problem(chunk.name, record)
        if problem:
            log.warning("chunk %s: %s; embedding it again", chunk.name, problem)
        return problem is None

    def file_problem(self, name: str, record: dict) -> str | None:
        """What is wrong with a done chunk's files against its marker (store/integrity.py), or
        None. Markers from before files were recorded get the npy headers' own checks."""
        files = record.get("files", {})
        for array in VECTORS:
            expect = {"rows": record["n_images"], **files.get(array, {})}
            problem = npy_problem(self.out.chunk_array(array, name), expect)
            if problem:
                return problem
        return parquet_problem(self.out.chunk_meta(name),
                               {"rows": record["n_images"], **files.get("meta", {})})

    def check_files(self, names: list[str]) -> None:
        """Before assembling: every chunk sound, or one line naming the damaged file (another
        rank's chunk, damaged after it was written, is not this rank's to re-embed)."""
        for name in names:
            problem = self.file_problem(name, self.markers.read(name))
            if problem:
                raise ConfigError(f"index {self.out}: {problem}; re-run `pipeline index` to "
                                  "embed that chunk again")

    def remove_temps(self, chunk: Chunk) -> None:
        """Temp files a killed run left while writing this chunk (this rank owns it)."""
        for path in (self.out.chunk_array("emb", chunk.name),
                     self.out.chunk_array("dino", chunk.name), self.out.chunk_meta(chunk.name),
                     self.markers.path(chunk.name)):
            remove_temps(path.parent, path.name)

    def indexed_files(self, names: list[str]) -> dict[str, dict[str, list[int] | None]]:
        """{chunk: {file key: its stamp when embedded}} for the folder chunks of a finished index
        (stamps None in indexes written before they were kept)."""
        records = [self.markers.read(name) for name in names]
        return {r["chunk"]: _stamps(r) for r in records if r and "keys" in r}

    def write(self, chunk: Chunk, emb: np.ndarray, dino: np.ndarray, rows: list[dict],
              items: ChunkItems) -> None:
        files = {}
        for array, data in (("emb", emb), ("dino", dino)):
            path = self.out.chunk_array(array, chunk.name)
            atomic_save_npy(path, data)
            files[array] = file_record(path, data)
        table = pa.Table.from_pylist(rows, schema=META_SCHEMA)
        atomic_write(self.out.chunk_meta(chunk.name),
                     lambda tmp: pq.write_table(table, tmp))
        files["meta"] = file_record(self.out.chunk_meta(chunk.name), rows=len(rows))
        record = {"chunk": chunk.name, "n_images": len(rows), "files": files,
                  "skipped": dict(sorted(items.skipped.items())),
                  "skipped_files": dict(sorted(items.skipped_names.items())),
                  "fingerprint": chunk.fingerprint(), "models_hash": self.models_hash}
        if chunk.shard is None:  # a folder chunk's files as embedded, for growing it later
            record["keys"] = [r["key"] for r in items.rows]
            record["stamps"] = [r["stamp"] for r in items.rows]
        self.markers.write(chunk.name, record)  # last: the chunk now exists

    def embeddings(self, names: list[str], keep: dict[str, np.ndarray], array: str = "emb"):
        """A callable yielding each chunk's kept (n, dim) float32 rows, in order."""
        def chunks():
            for name in names:
                x = np.load(self.out.chunk_array(array, name))
                yield x[keep[name]].astype(np.float32)
        return chunks


def models_hash(run_dir: RunDir) -> str:
    """Identifies the run's models and projector weights: a changed run means a new index."""
    h = hashlib.sha256()
    for path in (run_dir.projector_config, run_dir.weights):
        with open(path, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 22), b""):
                h.update(block)
    cfg = run_dir.read_config()
    return config_hash({"weights": h.hexdigest(), "extract": to_dict(cfg.extract),
                        "pooling": cfg.train.pooling})


def _embed_chunk(model, chunk: Chunk, root: Path, store: ChunkStore, options: UseOptions
                 ) -> int:
    items = chunk_items(chunk, root)
    loader = DataLoader(ImageCrops(items.images, [model.dino_spec]),
                        batch_size=options.batch_size, num_workers=options.num_workers,
                        collate_fn=collate_crops)
    projected, raw, rows = [], [], []
    bar = progress(total=len(items.images), desc=f"index {chunk.name}", unit="img", leave=False)
    for batch in loader:
        for i, reason in batch.failures:
            items.skipped[reason] += 1
            items.skipped_names[items.rows[i]["key"]] = reason
            log.debug("skipped %s: %s", items.rows[i]["key"], reason)
        if batch.indices:
            emb, dino = model.encode_image_and_dino(batch.crops[0])
            projected.append(emb.numpy().astype(np.float16))
            raw.append(dino.numpy().astype(np.float16))
            rows += [items.rows[i] for i in batch.indices]
        bar.update(len(batch.indices) + len(batch.failures))
    bar.close()
    emb = np.concatenate(projected) if projected else np.zeros((0, model.dim), np.float16)
    dino = np.concatenate(raw) if raw else np.zeros((0, model.dino_dim), np.float16)
    store.write(chunk, emb, dino, rows, items)
    return len(rows)


def _stamps(record: dict) -> dict[str, list[int] | None]:
    """{file key: stamp when embedded} of a folder chunk's done-marker."""
    return dict(zip(record["keys"], record.get("stamps", [None] * len(record["keys"])),
                    strict=True))


def _live_rows(store: ChunkStore, chunks: list[Chunk], records: list[dict]
               ) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """Every chunk's rows whose image is still as it was embedded (a removed file drops out, and
    so does a changed one's old row: a newer chunk holds it), and per chunk the mask kept.
    records: the chunks' done-markers."""
    tables, keep = [], {}
    for c, record in zip(chunks, records, strict=True):
        t = pq.read_table(store.out.chunk_meta(c.name))
        rows = t.to_pydict()
        stamps = _stamps(record) if c.shard is None else {}
        keep[c.name] = np.array([kind != "file" or _unchanged(path, stamps.get(key))
                                 for kind, path, key in zip(rows["kind"], rows["path"],
                                                            rows["key"], strict=True)],
                                dtype=bool)
        t = t.filter(pa.array(keep[c.name], pa.bool_()))
        t = t.append_column("chunk", pa.array([c.name] * t.num_rows, pa.string()))
        tables.append(_with_stamps(t, stamps))
    return pa.concat_tables(tables), keep


def _with_stamps(t: pa.Table, stamps: dict[str, list[int] | None]) -> pa.Table:
    """t with each file's size and mtime_ns as embedded (null: a shard sample, or a marker
    from before stamps were kept)."""
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
            stamps = _stamps(r)
            files = {key: why for key, why in r.get("skipped_files", {}).items()
                     if _unchanged(images / key, stamps.get(key))}
            skipped.update(files.values())
        else:
            files = r.get("skipped_files", {})
            skipped.update(r["skipped"])
        skipped_files.update(files)
    return skipped, skipped_files


def _assemble(store: ChunkStore, chunks: list[Chunk], run_label: str, images: Path, kind: str,
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
