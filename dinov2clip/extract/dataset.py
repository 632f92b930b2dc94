"""Feeding the models: shards read ahead in a thread, images decoded once in DataLoader workers.

One DataLoader serves the whole run, so workers start once, not once per shard. Its batch sampler
hands out the samples themselves (they are pickled to the workers like indices): every batch holds
samples of one shard, in order, and each shard ends with a marker batch carrying the reader's skip
counts, so the runner knows when a shard is complete, even an empty one.
"""

from __future__ import annotations

import queue
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dinov2clip.formats.webdataset import RawSample, read_shard
from dinov2clip.models.preprocess import PreprocessSpec, decode_or_skip, resize_and_crop


@dataclass(frozen=True)
class ShardJob:
    path: Path
    multi_caption: bool  # eval sets: one caption per line of the .txt


@dataclass(frozen=True)
class ShardEnd:
    skipped: dict  # reason -> count, from reading the tar
    dropped: dict  # e.g. empty caption lines -> count


class ShardBatches:
    """The batch sampler: lists of (job index, RawSample | ShardEnd), one shard at a time."""

    def __init__(self, jobs: list[ShardJob], batch_size: int, read_ahead: int = 2):
        self.jobs, self.batch_size, self.read_ahead = jobs, batch_size, read_ahead

    def __iter__(self) -> Iterator[list]:
        shards: queue.Queue = queue.Queue(maxsize=self.read_ahead)
        threading.Thread(target=self._read_all, args=(shards,), daemon=True).start()
        for j in range(len(self.jobs)):
            contents = shards.get()
            if isinstance(contents, BaseException):
                raise contents
            samples = contents.samples
            for start in range(0, len(samples), self.batch_size):
                yield [(j, s) for s in samples[start:start + self.batch_size]]
            yield [(j, ShardEnd(dict(contents.skipped), dict(contents.dropped)))]

    def _read_all(self, shards: queue.Queue) -> None:
        # Reading (disk, tar parsing) overlaps decoding and the models.
        try:
            for job in self.jobs:
                shards.put(read_shard(job.path, job.multi_caption))
        except BaseException as err:  # noqa: BLE001 - re-raised in the consuming thread
            shards.put(err)


class DecodeSamples:
    """dataset[(job, sample)]: decode once, cut both models' inputs, tokenise the captions."""

    def __init__(self, dino_spec: PreprocessSpec, clip_spec: PreprocessSpec, tokenizer):
        self.dino_spec, self.clip_spec = dino_spec, clip_spec
        self.tokenizer = tokenizer

    def __getitem__(self, item: tuple[int, RawSample | ShardEnd]) -> dict:
        job, s = item
        if isinstance(s, ShardEnd):
            return {"job": job, "end": s}
        img, reason = decode_or_skip(s.image)
        if img is None:
            return {"job": job, "failure": reason}
        return {
            "job": job,
            "dino": resize_and_crop(img, self.dino_spec),
            "clip": resize_and_crop(img, self.clip_spec),
            "tokens": self.tokenizer(s.captions),  # (n_captions, context_length)
            "row": self.row(s),
        }

    @staticmethod
    def row(s: RawSample) -> dict:
        return {"key": s.key, "captions": s.captions, "url": s.url, "n_captions": len(s.captions)}


@dataclass
class Batch:
    job: int = -1  # index of the shard job all items belong to
    dino_u8: torch.Tensor | None = None  # (B, H, W, 3) uint8
    clip_u8: torch.Tensor | None = None  # (B, H, W, 3) uint8
    tokens: torch.Tensor | None = None  # (sum of n_captions, context_length)
    rows: list[dict] = field(default_factory=list)
    failures: Counter = field(default_factory=Counter)  # reason -> count
    end: ShardEnd | None = None  # set on a shard's last batch: the reader's counts
    # extract.decode=gpu (gpu_decode.py): JPEG rows arrive as bytes, the others as crops.
    jpegs: list = field(default_factory=list)  # (row position, 1-D uint8 JPEG bytes)
    cpu_rows: list[int] = field(default_factory=list)  # positions of the dino_u8/clip_u8 rows
    fallbacks: Counter = field(default_factory=Counter)  # rows decoded by the workers, by reason

    def pin_memory(self) -> Batch:
        # Called by the DataLoader's pinning thread, so host->device copies can be asynchronous.
        for name in ("dino_u8", "clip_u8", "tokens"):
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name).pin_memory())
        return self


def collate(items: list[dict]) -> Batch:
    """One Batch, rows in the samples' order. Rows decoded by the workers carry crops
    (batch.dino_u8 / clip_u8, for the positions batch.cpu_rows); with extract.decode=gpu, JPEG
    rows carry their bytes instead (batch.jpegs), for gpu_decode to decode on the device."""
    ok = [it for it in items if "row" in it]
    batch = Batch(job=items[0]["job"], failures=Counter(it["failure"] for it in items
                                                        if "failure" in it))
    ends = [it["end"] for it in items if "end" in it]
    if ends:
        batch.end = ends[0]
    if ok:
        batch.rows = [it["row"] for it in ok]
        batch.tokens = torch.cat([it["tokens"] for it in ok])
        batch.jpegs = [(i, it["jpeg"]) for i, it in enumerate(ok) if "jpeg" in it]
        batch.cpu_rows = [i for i, it in enumerate(ok) if "jpeg" not in it]
        batch.fallbacks = Counter(it["fallback"] for it in ok if "fallback" in it)
        if batch.cpu_rows:
            batch.dino_u8 = torch.from_numpy(np.stack([ok[i]["dino"] for i in batch.cpu_rows]))
            batch.clip_u8 = torch.from_numpy(np.stack([ok[i]["clip"] for i in batch.cpu_rows]))
    return batch
