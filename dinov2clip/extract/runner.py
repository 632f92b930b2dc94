"""The extract stage: shards in, embedding shards out; resumable and split across ranks.

Rank r of a torchrun/srun job takes sorted(shards)[r::world_size]; no process group is needed and
any rank can be restarted alone, since finished shards carry done-markers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from dinov2clip.config import Config, ConfigError, config_hash, require, write_resolved
from dinov2clip.cpu_threads import threads_for_models
from dinov2clip.device import compute_dtype, rank_and_world, resolve_device
from dinov2clip.extract.dataset import DecodeSamples, ShardBatches, ShardJob, collate
from dinov2clip.extract.gpu_decode import (
    DeviceDecoder,
    ReadJpegBytes,
    decoded_ahead,
    resolve_decode,
)
from dinov2clip.extract.mapper import Mapper, describe
from dinov2clip.io_utils import shard_order
from dinov2clip.models.identity import provenance, runtime
from dinov2clip.models.loaders import load_clip, load_dino
from dinov2clip.models.text_encoders import TextEncoder
from dinov2clip.store import ShardWriter, concat, embeddings_dir, embeddings_tag, writer_locks
from dinov2clip.terminal import progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    name: str  # embeddings/<name>
    shard_dir: Path
    multi_caption: bool  # eval sets: one caption per line of the .txt


def resolve_sources(cfg: Config) -> list[Source]:
    sources = []
    for entry in require(cfg, "extract.datasets"):
        kind, _, name = entry.partition("/")
        if kind == "shards" and name:
            sources.append(Source(name, cfg.root / "shards" / name, False))
        elif kind == "evalsets" and name:
            sources.append(Source(name, cfg.root / "evalsets" / name / "test", True))
        else:
            raise ConfigError(f"extract.datasets: {entry!r} must be 'shards/<name>' or "
                              "'evalsets/<name>'")
    names = [s.name for s in sources]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ConfigError(f"extract.datasets: {clash[0]!r} names two inputs, but both would "
                          f"write embeddings/{clash[0]}; rename one")
    return sources


def list_shards(src: Source, pattern: str) -> list[Path]:
    if not src.shard_dir.is_dir():
        raise ConfigError(f"input directory not found: {src.shard_dir}")
    shards = sorted(src.shard_dir.glob(pattern), key=shard_order)
    if not shards:
        raise ConfigError(f"no shards matching {pattern!r} in {src.shard_dir}")
    return shards


def run(cfg: Config, wait: bool = False) -> None:
    """Extract every source while holding this rank's lock on each set it writes: a second
    extract on a set refuses at once (or, with wait, starts once the first has finished)."""
    sources = resolve_sources(cfg)
    shards = {s.name: list_shards(s, cfg.extract.shard_pattern) for s in sources}  # fail first
    tag = embeddings_tag(cfg.extract)
    rank, _ = rank_and_world()
    with writer_locks([embeddings_dir(cfg.root, s.name, tag) for s in sources], rank, wait):
        _extract(cfg, sources, shards)


def _extract(cfg: Config, sources: list[Source], shards: dict[str, list[Path]]) -> None:
    e = cfg.extract
    device = resolve_device(e.device, "extract.device")
    dtype = compute_dtype(e.compute_dtype, device)
    rank, world = rank_and_world()
    dino, dino_spec = load_dino(e.dino_model, device, e.dino_revision)
    if e.clip_model:
        clip, tokenizer, clip_spec = load_clip(e.clip_model, e.clip_pretrained, device)
    else:  # no teacher: the workers' second crop is the backbone's, and the mapper skips it
        clip, tokenizer, clip_spec = None, no_tokens, dino_spec
    text = (TextEncoder(e.text_encoder, e.text_pooling, device, e.text_revision,
                        e.text_max_length) if e.text_encoder else None)
    mapper = Mapper(dino, dino_spec, clip, clip_spec, device, dtype, text, e.dino_heads)
    info = describe(mapper, e.dino_model, e.clip_model, e.clip_pretrained, tokenizer,
                    e.dino_revision)
    models_hash = config_hash(info)
    env, made_by = runtime(dino, text is not None), provenance(device)
    tag = embeddings_tag(cfg.extract)
    log.info("extract rank %d/%d on %s (%s), tag %s", rank, world, device, dtype, tag)
    jobs, writers = [], []
    for src in sources:
        writer = ShardWriter(embeddings_dir(cfg.root, src.name, tag), models_hash, env,
                             made_by)
        writer.start({p.stem: _source(p, cfg.root) for p in shards[src.name]}, info)
        if rank == 0:
            write_resolved(cfg, writer.out_dir)
        mine = shards[src.name][rank::world]
        todo = [p for p in mine if not writer.is_done(p.stem)]
        log.info("%s: %d shards, %d for this rank, %d already done", src.name,
                 len(shards[src.name]), len(mine), len(mine) - len(todo))
        jobs += [(ShardJob(p, src.multi_caption), writer) for p in todo]
        writers.append((src, writer))
    timer = PhaseTimer()
    extract_shards(jobs, mapper, tokenizer, e, timer, cfg.root)
    log.info("rank %d: %s", rank, timer.summary())
    for src, writer in writers:
        manifest = writer.write_manifest({**info, "dataset": src.name, "tag": tag})
        if manifest is None:
            log.info("%s: other ranks still working; the last to finish writes the manifest",
                     src.name)
        else:
            log.info("%s: %d images, %d captions, skipped %s%s", src.name, manifest["n_images"],
                     manifest["n_captions"], manifest["skipped"] or "none",
                     "".join(f"; {n} {what.replace('_', ' ')} dropped"
                             for what, n in manifest["dropped"].items()))


class PhaseTimer:
    """Wall time waiting for decoded batches, in the models, and writing (a background thread)."""

    def __init__(self):
        self.seconds = Counter()
        self.images = 0
        self.decoded: Counter = Counter()  # decode=gpu: "device", or the CPU fallback's reason
        self.start = time.perf_counter()
        self._lock = threading.Lock()

    def add(self, phase: str, since: float) -> float:
        now = time.perf_counter()
        with self._lock:
            self.seconds[phase] += now - since
        return now

    def count(self, images: int) -> None:
        with self._lock:
            self.images += images

    def summary(self) -> str:
        wall = time.perf_counter() - self.start
        sec = self.seconds
        return (f"{self.images} images in {wall:.1f}s ({self.images / max(wall, 1e-9):.1f} img/s); "
                f"waiting for decoded batches {sec['read']:.1f}s, models {sec['model']:.1f}s, "
                f"writing {sec['write']:.1f}s in the background (waited {sec['write_wait']:.1f}s)"
                + (f"; decoding on the device {sec['device_decode']:.1f}s in the background, "
                   f"images decoded: {dict(self.decoded)}" if self.decoded else ""))


@dataclass
class _Shard:
    """One shard's results as they come in, until its end marker."""

    parts: list = field(default_factory=list)
    meta: list = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)


def extract_shards(jobs: list[tuple[ShardJob, ShardWriter]], mapper: Mapper, tokenizer, e,
                   timer: PhaseTimer, root: Path) -> None:
    """Stream every job's shard through one DataLoader; write each shard when its end arrives."""
    on_device = resolve_decode(e.decode, mapper.device, [mapper.dino_spec, mapper.clip_spec])
    if not jobs:
        return
    with threads_for_models(mapper.device, e.num_workers, mapper.towers()) as threads:
        if mapper.device.type == "cpu":
            log.info("CPU: models on %d threads beside %d decoding workers", threads,
                     e.num_workers)
        _stream(jobs, mapper, tokenizer, e, timer, root, on_device)


def _stream(jobs, mapper: Mapper, tokenizer, e, timer: PhaseTimer, root: Path,
            on_device: bool) -> None:
    samples = ReadJpegBytes if on_device else DecodeSamples
    loader = DataLoader(
        samples(mapper.dino_spec, mapper.clip_spec, tokenizer),
        batch_sampler=ShardBatches([job for job, _ in jobs], e.batch_size),
        num_workers=e.num_workers, collate_fn=collate,
        pin_memory=mapper.device.type == "cuda",
        # Two batches per worker keep the device fed (a worker needs num_workers times longer
        # for a batch than the models) while bounding the decoded crops held in shared memory.
        prefetch_factor=2 if e.num_workers else None)
    batches = loader
    if on_device:  # decode batch n+1 on the device while the models run batch n
        decoder = DeviceDecoder(mapper.dino_spec, mapper.clip_spec, mapper.device, timer.decoded)
        batches = decoded_ahead(loader, decoder, timer)
    current, pending = _Shard(), None  # pending: (shard, rows, Pending) still on the device
    writes: list[Future] = []
    # The bar closes on an error too, so the error line starts a line of its own.
    with progress(desc="extract", unit="img", smoothing=0.1) as bar, \
            ThreadPoolExecutor(max_workers=1) as pool:  # one writer: shards commit in order
        t = time.perf_counter()
        for batch in batches:
            t = timer.add("read", t)
            current.skipped.update(batch.failures)
            if batch.rows:  # queue this batch, then collect the previous one
                captions = [c for row in batch.rows for c in row["captions"]]
                handle = mapper.submit(batch.dino_u8, batch.clip_u8, batch.tokens, captions)
                _collect(pending)
                pending = (current, batch.rows, handle)
            if batch.end is not None:
                _collect(pending)
                pending = None
                current.skipped.update(batch.end.skipped)
                current.dropped.update(batch.end.dropped)
                job, writer = jobs[batch.job]
                timer.add("model", t)
                _wait_all_but(writes, 1, timer)
                writes.append(pool.submit(_write, writer, job, current, mapper.dims, timer, root))
                current, t = _Shard(), time.perf_counter()
            bar.update(len(batch.rows) + sum(batch.failures.values()))
            t = timer.add("model", t)
        _wait_all_but(writes, 0, timer)


def _collect(pending) -> None:
    if pending is not None:
        shard, rows, handle = pending
        shard.parts.append(handle.result())
        shard.meta.extend(rows)


def _wait_all_but(writes: list[Future], keep: int, timer: PhaseTimer) -> None:
    """Bound the queued writes (each holds a whole shard in memory); re-raise their errors."""
    t = time.perf_counter()
    while len(writes) > keep:
        writes.pop(0).result()
    timer.add("write_wait", t)


def _write(writer: ShardWriter, job: ShardJob, shard: _Shard, dims: dict, timer: PhaseTimer,
           root: Path) -> None:
    t = time.perf_counter()
    start = 0
    for i, row in enumerate(shard.meta):  # rows and caption offsets within this shard
        row["row"], row["caption_start"] = i, start
        start += row["n_captions"]
    emb = concat(shard.parts, dims["dino"], dims.get("clip", 0), dims.get("text", 0),
                 dims.get("heads", 0))
    writer.write(job.path.stem, emb, shard.meta, shard.skipped, _source(job.path, root),
                 shard.dropped)
    timer.add("write", t)
    timer.count(len(shard.meta))


def no_tokens(captions: list[str]) -> torch.Tensor:
    """The tokens of a teacher-less extract: one placeholder per caption, so batches keep their
    caption count (the text encoder tokenises the caption strings itself)."""
    return torch.zeros((len(captions), 1), dtype=torch.long)


def _source(path: Path, root: Path) -> str:
    """An input shard's path as recorded: relative to the artifacts root when inside it."""
    return str(path.relative_to(root) if path.is_relative_to(root) else path)
