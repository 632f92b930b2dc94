"""`pipeline index`: embed an image collection with projected DINOv2, then index it with FAISS.

Layout of an index directory:
    chunks/emb/<chunk>.npy      float16 (n, 512) L2-normalised projected DINOv2 embeddings
    chunks/meta/<chunk>.parquet one row per embedded image: key, path, url, caption, kind
    chunks/done/<chunk>.json    done-marker, written last: counts, skips, fingerprints
    index.faiss                 all chunks in order; FAISS id i = row i of meta.parquet
    meta.parquet                key, path, url, caption, kind, chunk
    index.json                  written last: run, models, kind, counts, skipped by reason

Under torchrun or srun, rank r embeds chunks[r::world_size] (each rank on its own GPU, no
process group) and rank 0 builds the index once every chunk carries its done-marker.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from torch.utils.data import DataLoader
from tqdm import tqdm

from dinov2clip.config import ConfigError, UseOptions, config_hash, read_run_config, to_dict
from dinov2clip.device import rank_and_world
from dinov2clip.index import faiss_index
from dinov2clip.index.images import ImageCrops, collate_crops
from dinov2clip.index.sources import Chunk, chunk_items, plan_chunks
from dinov2clip.io_utils import (
    atomic_save_npy,
    atomic_write,
    atomic_write_json,
    remove_dead_temps,
    remove_temps,
)
from dinov2clip.store import DoneMarkers

log = logging.getLogger(__name__)

META_SCHEMA = pa.schema([("key", pa.string()), ("path", pa.string()), ("url", pa.string()),
                         ("caption", pa.string()), ("kind", pa.string())])


def build_index(*, run_dir: Path, images: Path, out_dir: Path | None = None,
                chunk_size: int = 4096, exact_max: int = 100_000, kind: str = "auto",
                options: UseOptions = UseOptions(), force: bool = False) -> dict:
    from dinov2clip.model import DinoV2Clip

    run_dir, images = Path(run_dir), Path(images)
    faiss_index.choose_kind(kind, 0, exact_max)  # a bad kind fails before any work
    rank, world = rank_and_world()
    if force and world > 1:  # one rank deleting what another already wrote would lose chunks
        raise ConfigError("--force with several ranks: delete the old index first, or rebuild "
                          "it in one process")
    chunks = plan_chunks(images, chunk_size)
    out_dir = Path(out_dir) if out_dir else run_dir / "index" / images.stem
    if force and out_dir.exists():
        _remove_old_index(out_dir)
    model = DinoV2Clip.from_pretrained(run_dir, **options.model_args())
    store = ChunkStore(out_dir / "chunks", models_hash(run_dir))
    remove_dead_temps(out_dir)  # index.faiss, meta.parquet, index.json of a killed rank 0
    mine = chunks[rank::world]
    todo = [c for c in mine if not store.is_done(c)]
    for chunk in todo:
        store.remove_temps(chunk)
    log.info("index %s: %d chunks, %d for rank %d/%d, %d of them already done, into %s", images,
             len(chunks), len(mine), rank, world, len(mine) - len(todo), out_dir)
    t0, n_new = time.perf_counter(), 0
    for chunk in todo:
        n_new += _embed_chunk(model, chunk, images, store, options)
    if n_new:
        log.info("embedded %d images in %.1fs (%.1f img/s)", n_new, time.perf_counter() - t0,
                 n_new / max(time.perf_counter() - t0, 1e-9))
    if rank != 0:
        log.info("rank %d done; rank 0 builds the index once every chunk is embedded", rank)
        return {"rank": rank, "n_embedded": n_new, "out_dir": str(out_dir)}
    wait_for_chunks(store, chunks)
    return _assemble(store, chunks, out_dir, run_dir, images, kind, exact_max, model.dim)


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


def _remove_old_index(out_dir: Path) -> None:
    # --force deletes a directory only if it is an index: a mistyped --out must not cost data.
    looks_like_index = (out_dir / "chunks").is_dir() or (out_dir / "index.json").is_file()
    if not looks_like_index and any(out_dir.iterdir()):
        raise ConfigError(f"--force: {out_dir} is not an index directory; not deleting it")
    shutil.rmtree(out_dir)


class ChunkStore:
    def __init__(self, root: Path, models_hash: str):
        self.root, self.models_hash = root, models_hash
        self.markers = DoneMarkers(root / "done")

    def is_done(self, chunk: Chunk) -> bool:
        record = self.markers.read(chunk.name)
        if record is None:
            return False
        if record.get("models_hash") != self.models_hash:
            raise ConfigError(f"{self.root.parent} was built with another run or projector; "
                              "use --force to rebuild it or --out for a new index")
        if record.get("fingerprint") != chunk.fingerprint():
            raise ConfigError(f"{self.root.parent}: the collection changed since chunk "
                              f"{chunk.name} was indexed; use --force to rebuild")
        return True

    def remove_temps(self, chunk: Chunk) -> None:
        """Temp files a killed run left while writing this chunk (this rank owns it)."""
        for folder, name in (("emb", f"{chunk.name}.npy"), ("meta", f"{chunk.name}.parquet"),
                             ("done", f"{chunk.name}.json")):
            remove_temps(self.root / folder, name)

    def write(self, chunk: Chunk, emb: np.ndarray, rows: list[dict], skipped: Counter) -> None:
        atomic_save_npy(self.root / "emb" / f"{chunk.name}.npy", emb)
        table = pa.Table.from_pylist(rows, schema=META_SCHEMA)
        atomic_write(self.root / "meta" / f"{chunk.name}.parquet",
                     lambda tmp: pq.write_table(table, tmp))
        self.markers.write(chunk.name, {  # last: the chunk now exists
            "chunk": chunk.name, "n_images": len(rows), "skipped": dict(sorted(skipped.items())),
            "fingerprint": chunk.fingerprint(), "models_hash": self.models_hash})

    def embeddings(self, names: list[str]):
        """A callable yielding each chunk's (n, dim) float32 embeddings, in order."""
        def chunks():
            for name in names:
                yield np.load(self.root / "emb" / f"{name}.npy").astype(np.float32)
        return chunks


def models_hash(run_dir: Path) -> str:
    """Identifies the run's models and projector weights: a changed run means a new index."""
    h = hashlib.sha256()
    for name in ("projector.json", "model.safetensors"):
        with open(run_dir / name, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 22), b""):
                h.update(block)
    cfg = read_run_config(run_dir)
    return config_hash({"weights": h.hexdigest(), "extract": to_dict(cfg.extract),
                        "pooling": cfg.train.pooling})


def _embed_chunk(model, chunk: Chunk, root: Path, store: ChunkStore, options: UseOptions
                 ) -> int:
    items = chunk_items(chunk, root)
    loader = DataLoader(ImageCrops(items.images, [model.dino_spec]),
                        batch_size=options.batch_size, num_workers=options.num_workers,
                        collate_fn=collate_crops)
    skipped, parts, rows = Counter(items.skipped), [], []
    bar = tqdm(total=len(items.images), desc=f"index {chunk.name}", unit="img", leave=False)
    for batch in loader:
        for i, reason in batch.failures:
            skipped[reason] += 1
            log.debug("skipped %s: %s", items.rows[i]["key"], reason)
        if batch.indices:
            parts.append(model.encode_image(batch.crops[0]).numpy().astype(np.float16))
            rows += [items.rows[i] for i in batch.indices]
        bar.update(len(batch.indices) + len(batch.failures))
    bar.close()
    emb = np.concatenate(parts) if parts else np.zeros((0, model.dim), np.float16)
    store.write(chunk, emb, rows, skipped)
    return len(rows)


def _assemble(store: ChunkStore, chunks: list[Chunk], out_dir: Path, run_dir: Path,
              images: Path, kind: str, exact_max: int, dim: int) -> dict:
    records = [store.markers.read(c.name) for c in chunks]
    n = sum(r["n_images"] for r in records)
    skipped: Counter = Counter()
    for r in records:
        skipped.update(r["skipped"])
    if n == 0:
        raise ConfigError(f"{images}: no readable images (skipped: {dict(skipped)})")
    names = [c.name for c in chunks]
    chosen = faiss_index.choose_kind(kind, n, exact_max)
    log.info("building a %s index over %d embeddings", chosen, n)
    index, info = faiss_index.build(chosen, dim, n, store.embeddings(names))
    import faiss

    atomic_write(out_dir / "index.faiss", lambda tmp: faiss.write_index(index, tmp))
    tables = []
    for name in names:
        t = pq.read_table(store.root / "meta" / f"{name}.parquet")
        tables.append(t.append_column("chunk", pa.array([name] * t.num_rows, pa.string())))
    meta = pa.concat_tables(tables)
    atomic_write(out_dir / "meta.parquet", lambda tmp: pq.write_table(meta, tmp))
    summary = {"run_dir": str(run_dir.resolve()), "source": str(images.resolve()),
               "n_images": n, "dim": dim, **info, "exact_max": exact_max,
               "n_chunks": len(chunks), "skipped": dict(sorted(skipped.items())),
               "models_hash": store.models_hash}
    atomic_write_json(out_dir / "index.json", summary)  # last: the index is complete
    if skipped:
        log.warning("skipped %d images: %s", sum(skipped.values()), dict(skipped))
    log.info("index of %d images (%s) in %s", n, info["kind"], out_dir)
    return {**summary, "out_dir": str(out_dir)}
