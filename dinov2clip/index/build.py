"""`pipeline index`: embed an image collection with projected DINOv2, then index it with FAISS.

The directory's layout is IndexDir's (dinov2clip/store/index.py).

Re-running on a grown folder embeds only the new files and those changed in place (see
sources.plan_chunks); files gone from the folder, and the old rows of changed ones, drop out of
the assembled index (assemble.py). Chunks are written and checked by chunks.py.

Under torchrun or srun, rank r embeds chunks[r::world_size] (each rank on its own GPU, no
process group) and rank 0 builds the index once every chunk carries its done-marker.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from dinov2clip.config import ConfigError, UseOptions, config_hash, to_dict
from dinov2clip.cpu_threads import dino_tower, threads_for_models
from dinov2clip.device import rank_and_world
from dinov2clip.formats.images import ImageCrops, collate_crops
from dinov2clip.index import faiss_index
from dinov2clip.index.assemble import assemble
from dinov2clip.index.chunks import ChunkStore
from dinov2clip.index.sources import Chunk, chunk_items, plan_chunks
from dinov2clip.io_utils import remove_dead_temps
from dinov2clip.store import IndexDir, RunDir, WriterLock
from dinov2clip.terminal import progress

log = logging.getLogger(__name__)


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
    return assemble(store, chunks, run_label, images, kind, exact_max, previous)


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
    # Done stays done; the files of the other ranks' chunks are judged before assembling.
    while missing := [c for c in missing if not store.is_done(c, check_files=False)]:
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


