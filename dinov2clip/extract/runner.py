"""The extract stage: shards in, embedding shards out; resumable and split across ranks.

Rank r of a torchrun/srun job takes sorted(shards)[r::world_size]; no process group is needed and
any rank can be restarted alone, since finished shards carry done-markers.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from dinov2clip.config import Config, ConfigError, config_hash, write_resolved
from dinov2clip.device import compute_dtype, rank_and_world, resolve_device
from dinov2clip.extract.dataset import DecodedShard, collate
from dinov2clip.extract.mapper import Mapper, describe, load_clip, load_dino
from dinov2clip.extract.reader import read_shard
from dinov2clip.extract.writer import ShardWriter, concat

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    name: str  # embeddings/<name>
    shard_dir: Path
    multi_caption: bool  # eval sets: one caption per line of the .txt


def resolve_sources(cfg: Config) -> list[Source]:
    sources = []
    for entry in cfg.extract.datasets:
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
    shards = sorted(src.shard_dir.glob(pattern))
    if not shards:
        raise ConfigError(f"no shards matching {pattern!r} in {src.shard_dir}")
    return shards


def embeddings_tag(cfg: Config) -> str:
    """embeddings/<dataset>/<tag>: explicit, or derived from the two model names."""
    e = cfg.extract
    if e.tag:
        return e.tag
    pre = Path(e.clip_pretrained).stem if e.clip_pretrained else "random"
    return f"{Path(e.dino_model).name}__{Path(e.clip_model).stem}-{pre}"


def run(cfg: Config) -> None:
    e = cfg.extract
    sources = resolve_sources(cfg)
    shards = {s.name: list_shards(s, e.shard_pattern) for s in sources}  # fail before loading
    device = resolve_device(e.device)
    dtype = compute_dtype(e.compute_dtype, device)
    rank, world = rank_and_world()
    dino, dino_spec = load_dino(e.dino_model, device)
    clip, tokenizer, clip_spec = load_clip(e.clip_model, e.clip_pretrained, device)
    mapper = Mapper(dino, dino_spec, clip, clip_spec, device, dtype)
    info = describe(mapper, e.dino_model, e.clip_model, e.clip_pretrained)
    models_hash = config_hash(info)
    tag = embeddings_tag(cfg)
    log.info("extract rank %d/%d on %s (%s), tag %s", rank, world, device, dtype, tag)
    for src in sources:
        out_dir = cfg.root / "embeddings" / src.name / tag
        writer = ShardWriter(out_dir, models_hash)
        if rank == 0:
            write_resolved(cfg, out_dir)
        mine = shards[src.name][rank::world]
        todo = [p for p in mine if not writer.is_done(p.stem)]
        log.info("%s: %d shards, %d for this rank, %d already done", src.name,
                 len(shards[src.name]), len(mine), len(mine) - len(todo))
        timer = PhaseTimer()
        for path in todo:
            _extract_shard(path, src, mapper, tokenizer, writer, e, timer)
        log.info("%s: %s", src.name, timer.summary())
        manifest = writer.write_manifest({**info, "dataset": src.name, "tag": tag},
                                         [p.stem for p in shards[src.name]])
        log.info("%s: %d images, %d captions, skipped %s", src.name, manifest["n_images"],
                 manifest["n_captions"], manifest["skipped"] or "none")


class PhaseTimer:
    """Wall time in reading+decoding, in the models, and in writing, to show the bottleneck."""

    def __init__(self):
        self.seconds = Counter()
        self.images = 0

    def add(self, phase: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[phase] += now - since
        return now

    def summary(self) -> str:
        total = sum(self.seconds.values()) or 1e-9
        parts = ", ".join(f"{k} {v:.1f}s ({100 * v / total:.0f}%)" for k, v in
                          self.seconds.items())
        return f"{self.images} images in {total:.1f}s ({self.images / total:.1f} img/s): {parts}"


def _extract_shard(path: Path, src: Source, mapper: Mapper, tokenizer, writer: ShardWriter,
                   e, timer: PhaseTimer) -> None:
    t = time.perf_counter()
    contents = read_shard(path, src.multi_caption)
    dataset = DecodedShard(contents.samples, mapper.dino_spec, mapper.clip_spec, tokenizer)
    loader = DataLoader(dataset, batch_size=e.batch_size, num_workers=e.num_workers,
                        collate_fn=collate, pin_memory=mapper.device.type == "cuda",
                        persistent_workers=False)
    skipped, parts, meta = Counter(contents.skipped), [], []
    t = timer.add("read", t)
    bar = tqdm(total=len(dataset), desc=f"{src.name}/{path.name}", unit="img", leave=False)
    for batch in loader:
        t = timer.add("read", t)
        skipped.update(reason for _, reason in batch.failures)
        if batch.rows:
            emb = mapper(batch.dino_u8, batch.clip_u8, batch.tokens)
            if mapper.device.type == "cuda":
                torch.cuda.synchronize()
            parts.append(emb)
            meta.extend(batch.rows)
        bar.update(len(batch.rows) + len(batch.failures))
        t = timer.add("model", t)
    bar.close()
    start = 0
    for i, row in enumerate(meta):  # rows and caption offsets within this shard
        row["row"], row["caption_start"] = i, start
        start += row["n_captions"]
    dims = mapper.dims
    writer.write(path.stem, concat(parts, dims["dino"], dims["clip"]), meta, skipped, str(path))
    timer.add("write", t)
    timer.images += len(meta)
