"""Readers of a complete embeddings set: a training split, and an eval set.

A training split goes into a few big tensors, on the GPU when they fit, else in host memory.
Shards are memory-mapped and read once; each is pooled and split by key hash straight into
preallocated destination tensors, so the peak is the split itself plus one shard. Batches are then
index slices of one permutation per epoch (train/feed.py): no per-sample Python, no DataLoader.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dinov2clip.config import POOLINGS, ConfigError
from dinov2clip.store.layout import ARRAYS, EmbeddingSet


@dataclass
class Split:
    x: torch.Tensor  # (N, in_dim) pooled DINOv2 features, float16
    clip_img: torch.Tensor  # (N, D_clip) float16, L2-normalised
    clip_txt: torch.Tensor  # (N, D_clip) float16, L2-normalised: each image's first caption

    def __len__(self) -> int:
        return self.x.shape[0]


@dataclass
class EvalPairs:
    """A retrieval set (several captions per image) for per-epoch validation."""

    x: torch.Tensor  # (n_images, in_dim) pooled DINOv2 features, float32
    clip_image: torch.Tensor  # (n_images, D_clip) float32, L2-normalised
    clip_text: torch.Tensor  # (n_captions, D_clip) float32, L2-normalised
    caption_to_image: torch.Tensor  # (n_captions,) int64 image row of each caption


def pool(cls: torch.Tensor, patch_mean: torch.Tensor, pooling: str,
         num_patch_tokens: int = 256) -> torch.Tensor:
    """Pooled DINOv2 features from the cached CLS token and patch-token mean."""
    if pooling == "cls":
        return cls
    if pooling == "patch_mean":
        return patch_mean
    if pooling == "token_mean":  # the seed's mean over all 1 + P tokens of last_hidden_state
        if num_patch_tokens < 1:  # 0 would silently give the CLS token
            raise ConfigError("token_mean pooling needs the backbone's patch-token count "
                              "(train.num_patch_tokens, or the embeddings' manifest)")
        return (cls.float() + num_patch_tokens * patch_mean.float()).div(
            num_patch_tokens + 1).to(cls.dtype)
    if pooling == "concat":  # cls ‖ patch_mean, as DINOv2's linear heads and dino.txt use
        return torch.cat([cls, patch_mean], dim=-1)
    raise ConfigError(f"train.pooling: unknown {pooling!r} (known: {', '.join(POOLINGS)})")


def recorded_patch_tokens(emb_dir: Path) -> int:
    """The backbone's patch tokens per image as extract recorded them in the manifest (256 for
    DINOv2 at 224 px, 196 for DINOv3), or 0 for embeddings extracted before it was recorded."""
    return int(EmbeddingSet(emb_dir).manifest().get("dino_patch_tokens") or 0)


def pooled_dim(d_dino: int, pooling: str) -> int:
    return 2 * d_dino if pooling == "concat" else d_dino


def is_val_key(key: str, val_fraction: float) -> bool:
    """A deterministic held-out split by key hash: the same key is always on the same side."""
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")
    return (h % 1_000_000) < val_fraction * 1_000_000


# Where a split's tensors go: given its size in bytes, (device, pin_memory).
Placer = Callable[[int], tuple[torch.device, bool]]


def on_cpu(n_bytes: int) -> tuple[torch.device, bool]:
    return torch.device("cpu"), False


def load_split(emb_dir: Path, pooling: str, val_fraction: float, num_patch_tokens: int = 256,
               place_train: Placer = on_cpu, place_val: Placer = on_cpu) -> tuple[Split, Split]:
    """All shards of a complete set, pooled and split into (train, val) by key hash, placed as
    asked. Every file is checked before the first is loaded; values as each is loaded."""
    store = EmbeddingSet(emb_dir)
    shards = store.verified_shards()
    masks = [_val_mask(store, s, val_fraction) for s in shards]
    n_val = sum(int(m.sum()) for m in masks)
    n_all = sum(len(m) for m in masks)
    if n_val in (0, n_all):
        raise ConfigError(f"train.val_fraction={val_fraction} leaves an empty split "
                          f"of {n_all} pairs")
    d_dino, d_clip = store.dims()
    d_in = pooled_dim(d_dino, pooling)
    train = _empty_split(n_all - n_val, d_in, d_clip, place_train)
    val = _empty_split(n_val, d_in, d_clip, place_val)
    at = {"train": 0, "val": 0}
    for shard, is_val in zip(shards, masks, strict=True):
        part = _read_shard(store, shard, pooling, num_patch_tokens)
        for name, dest, rows in (("train", train, ~is_val), ("val", val, is_val)):
            idx = torch.from_numpy(np.flatnonzero(rows))
            s, e = at[name], at[name] + len(idx)
            for field, src in zip(("x", "clip_img", "clip_txt"), part, strict=True):
                getattr(dest, field)[s:e].copy_(src.index_select(0, idx))
            at[name] = e
    return train, val


@dataclass
class EvalEmbeddings:
    dino_cls: torch.Tensor  # (n_images, D_dino)
    dino_mean: torch.Tensor  # (n_images, D_dino)
    clip_image: torch.Tensor  # (n_images, D_clip), L2-normalised
    clip_text: torch.Tensor  # (n_captions, D_clip), L2-normalised
    caption_to_image: torch.Tensor  # (n_captions,) image row of each caption


def load_eval_embeddings(emb_dir: Path) -> EvalEmbeddings:
    """A complete eval set, every caption of every image, as float32 tensors; every file is
    checked before the first is loaded, and values as each is loaded."""
    store = EmbeddingSet(emb_dir)
    arrays = {n: [] for n in ARRAYS}
    owners, n_images = [], 0
    for s in store.verified_shards():
        for n in arrays:
            arrays[n].append(store.load(n, s))
        counts = np.asarray(store.meta_column(s, "n_captions"), dtype=np.int64)
        if counts.sum() != arrays["clip_text"][-1].shape[0]:
            raise ConfigError(f"{emb_dir} shard {s}: meta lists {counts.sum()} captions but "
                              f"clip_text has {arrays['clip_text'][-1].shape[0]} rows")
        owners.append(np.repeat(np.arange(len(counts)) + n_images, counts))
        n_images += len(counts)
    cat = {n: torch.from_numpy(np.concatenate(v)).float() for n, v in arrays.items()}
    c2i = torch.from_numpy(np.concatenate(owners)) if owners else torch.zeros(0, dtype=torch.long)
    if c2i.numel() == 0:
        raise ConfigError(f"eval set at {emb_dir} has no captions: nothing to retrieve "
                          "(are its .txt files empty?)")
    return EvalEmbeddings(caption_to_image=c2i, **cat)


def load_eval_pairs(emb_dir: Path, pooling: str, num_patch_tokens: int = 256) -> EvalPairs:
    """An eval set's embeddings, pooled, read exactly as the eval stage reads them."""
    emb = load_eval_embeddings(emb_dir)
    x = pool(emb.dino_cls, emb.dino_mean, pooling, num_patch_tokens).float()
    return EvalPairs(x, emb.clip_image, emb.clip_text, emb.caption_to_image)


def _val_mask(store: EmbeddingSet, shard: str, val_fraction: float) -> np.ndarray:
    keys = store.meta_column(shard, "key")
    return np.fromiter((is_val_key(k, val_fraction) for k in keys), dtype=bool)


def _empty_split(n: int, d_in: int, d_clip: int, place: Placer) -> Split:
    n_bytes = n * (d_in + 2 * d_clip) * 2  # float16
    device, pin = place(n_bytes)

    def empty(d: int) -> torch.Tensor:
        return torch.empty((n, d), dtype=torch.float16, device=device, pin_memory=pin)

    return Split(empty(d_in), empty(d_clip), empty(d_clip))


def _read_shard(store: EmbeddingSet, shard: str, pooling: str,
                num_patch_tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, clip_img, clip_txt) of one shard in host memory: pooled, first caption per image."""
    first_caption = np.asarray(store.meta_column(shard, "caption_start"), dtype=np.int64)
    arr = {a: store.mmap(a, shard) for a in ARRAYS}
    n = len(first_caption)
    for a in ("dino_cls", "dino_mean", "clip_image"):
        if arr[a].shape[0] != n:
            raise ConfigError(f"{store.path}: shard {shard} has {arr[a].shape[0]} rows in {a} "
                              f"but {n} in its meta (re-run extract)")
    cls, mean = (torch.from_numpy(store.load(a, shard)) for a in ARRAYS[:2])
    x = pool(cls, mean, pooling, num_patch_tokens).to(torch.float16)
    img = torch.from_numpy(store.load("clip_image", shard)).to(torch.float16)
    txt = torch.from_numpy(store.load("clip_text", shard, rows=first_caption))
    return x, img, txt.to(torch.float16)
