"""Batches for the hot loop: index slices of one seeded permutation per epoch.

When the split lives on the GPU, a batch is three index_select calls on device. When it does not
fit, it lives in pinned host memory: each batch is gathered on the CPU into one of two pinned
staging buffers and copied with non_blocking=True, so the copy of batch i+1 overlaps the compute of
batch i. Nothing here calls .item() or otherwise waits for the GPU.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import torch

from dinov2clip.store import Placer, Split

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # x, clip_img, clip_txt: float32


def placer(placement: str, device: torch.device, reserve_bytes: int) -> Placer:
    """Where the training split goes: the compute device when it fits, else (pinned) host memory.

    'Fits' is judged from the GPU's free memory now, less reserve_bytes for the model, optimiser
    state and activations.
    """
    def place(n_bytes: int) -> tuple[torch.device, bool]:
        if device.type != "cuda":
            return torch.device("cpu"), False
        if placement == "device":
            return device, False
        if placement == "auto":
            free, _ = torch.cuda.mem_get_info(device)
            if n_bytes + reserve_bytes <= free:
                log.info("training split (%.1f GB) goes onto %s (%.1f GB free)", n_bytes / 1e9,
                         device, free / 1e9)
                return device, False
            log.info("training split (%.1f GB) does not fit in %.1f GB free on %s: pinned host "
                     "memory", n_bytes / 1e9, free / 1e9, device)
        return torch.device("cpu"), True

    return place


def reserve_bytes(n_params: int, batch_size: int, width: int, depth: int, ema: bool) -> int:
    """A generous estimate of the training memory besides the data, in bytes."""
    states = (4 + int(ema)) * 4 * n_params  # fp32 weights, grads, two AdamW moments, EMA
    activations = 4 * batch_size * width * (6 * depth + 8)  # saved per block for backward
    return int(1.5 * (states + activations)) + (2 << 30)


class Feed:
    def __init__(self, data: Split, batch_size: int, device: torch.device, seed: int,
                 gather_on_host: bool = False):
        self.data, self.batch_size, self.device, self.seed = data, batch_size, device, seed
        self.on_device = data.x.device.type == device.type and not gather_on_host
        self.staging: list[Split] = []
        self.copied: list[torch.cuda.Event | None] = [None, None]

    def __len__(self) -> int:
        return math.ceil(len(self.data) / self.batch_size)

    def permutation(self, epoch: int) -> torch.Tensor:
        """The same order for the same (seed, epoch), whatever happened before: resume-safe."""
        where = self.data.x.device
        gen = torch.Generator(device=where).manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.data), generator=gen, device=where)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        perm = self.permutation(epoch)
        for i in range(len(self)):
            idx = perm[i * self.batch_size:(i + 1) * self.batch_size]
            if self.on_device:
                d = self.data
                batch = (d.x.index_select(0, idx), d.clip_img.index_select(0, idx),
                         d.clip_txt.index_select(0, idx))
            else:
                batch = self._from_host(i % 2, idx)
            yield tuple(t.float() for t in batch)

    def _from_host(self, slot: int, idx: torch.Tensor) -> Batch:
        pin = self.device.type == "cuda"
        if not self.staging:
            self.staging = [self._staging_buffer(pin) for _ in range(2)]
        if self.copied[slot] is not None:
            self.copied[slot].synchronize()  # the previous copy out of this buffer is done
        buf, n = self.staging[slot], len(idx)
        for field in ("x", "clip_img", "clip_txt"):
            torch.index_select(getattr(self.data, field), 0, idx, out=getattr(buf, field)[:n])
        out = tuple(getattr(buf, f)[:n].to(self.device, non_blocking=pin)
                    for f in ("x", "clip_img", "clip_txt"))
        if pin:
            self.copied[slot] = torch.cuda.Event()
            self.copied[slot].record()
        return out

    def _staging_buffer(self, pin: bool) -> Split:
        def empty(d: int) -> torch.Tensor:
            return torch.empty((self.batch_size, d), dtype=self.data.x.dtype, pin_memory=pin)

        d = self.data
        return Split(empty(d.x.shape[1]), empty(d.clip_img.shape[1]), empty(d.clip_txt.shape[1]))
