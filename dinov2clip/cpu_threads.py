"""How a CPU run splits its cores between the models and the DataLoader workers that decode.

Extract and `pipeline index` run the models in the main process on torch's threads while workers
decode and crop the next images. Each side should have cores in proportion to what an image
costs it: decoding a 256 px JPEG and resizing its crops takes about 5 ms of one core, a ViT-B
forward about a second, so with real models the decoders need a sliver of one core and the
models every core; with the demo's tiny models it is the other way round. (Leaving the workers
one core each starved real models: dinov2-base + ViT-B-16 on 2 cores ran at half the rate of
the same models on ready batches.)
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

# Core-seconds a worker spends per image: decode, the crops' resizes, the tokens (README, Extract).
DECODE_CORE_S = 0.005
# Multiply-adds per second of one core running a ViT in fp32: random dinov2-base + ViT-B-16
# (42 G by model_macs) ran 1.9 images/s on 2 cores of an AMD EPYC (AVX2). Only the ratio to
# DECODE_CORE_S matters, and only to within a factor of a few: the split rounds to whole cores.
CORE_MACS_PER_S = 40e9


def model_threads(cores: int, num_workers: int, model_core_s: float,
                  decode_core_s: float = DECODE_CORE_S) -> int:
    """Torch threads for the models: every core but those the workers need to decode at the
    models' pace. Per image the machine spends model_core_s + decode_core_s core-seconds, so
    the workers need that share of the cores; rounded, as a fraction of a core is better spent
    on the models than left idle, and never more cores than there are workers to use them."""
    if num_workers == 0:  # decoding runs in this process, between batches
        return max(1, cores)
    decode_cores = round(cores * decode_core_s / (decode_core_s + model_core_s))
    return max(1, cores - min(num_workers, decode_cores))


def model_core_seconds(towers: Sequence[tuple[int, int]]) -> float:
    """Core-seconds per image for towers given as (weights_per_token, tokens per image)."""
    return sum(weights * tokens for weights, tokens in towers) / CORE_MACS_PER_S


def dino_tower(dino: nn.Module, crop: int) -> tuple[int, int]:
    """The backbone's (weights_per_token, tokens): CLS, registers and patches."""
    from dinov2clip.models.loaders import patch_token_count, register_count

    return weights_per_token(dino), 1 + register_count(dino) + patch_token_count(dino, crop)


def clip_towers(clip: nn.Module, crop: int) -> list[tuple[int, int]]:
    """An open_clip model's image tower (a ViT's patches and CLS; 16 px patches assumed for
    others) and text tower (its context length, one caption per image)."""
    image = weights_per_token(clip.visual)
    grid = getattr(clip.visual, "grid_size", None) or (crop // 16, crop // 16)
    return [(image, grid[0] * grid[1] + 1),
            (weights_per_token(clip) - image, int(getattr(clip, "context_length", 77)))]


def weights_per_token(module: nn.Module) -> int:
    """Multiply-adds per token of a transformer, about: each weight matrix is used once per token
    (attention's own products add some 10 % at 224 px). Embedding tables are looked up, not
    multiplied, and biases and norms are too small to count."""
    tables = {id(m.weight) for m in module.modules() if isinstance(m, nn.Embedding)}
    return sum(p.numel() for p in module.parameters() if p.ndim >= 2 and id(p) not in tables)


def available_cores() -> int:
    """The cores this process may run on (a container or taskset may allow fewer than exist)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def text_encoder_tower(encoder) -> tuple[int, int]:
    """A models.text_encoders.TextEncoder's (weights_per_token, tokens): a caption is padded to
    a few dozen tokens, about."""
    module = encoder.st if encoder.st is not None else encoder.model
    return weights_per_token(module), min(32, encoder.max_length)


@contextmanager
def threads_for_models(device: torch.device, num_workers: int,
                       towers: Sequence[tuple[int, int]]) -> Iterator[int]:
    """On a CPU, torch's threads set by model_threads for the block (never more than were set
    before, so OMP_NUM_THREADS still caps them), then restored; elsewhere left alone. Yields the
    thread count the models run on."""
    before = torch.get_num_threads()
    if device.type == "cpu":
        want = model_threads(available_cores(), num_workers, model_core_seconds(towers))
        torch.set_num_threads(min(before, want))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
