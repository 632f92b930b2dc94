"""Cached embedding shards into memory (or onto the GPU) as a few big tensors.

Batches are index slices of one permutation per epoch: no per-sample Python, no DataLoader.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from dinov2clip.config import ConfigError

POOLINGS = ("cls", "patch_mean", "token_mean", "concat")


@dataclass
class Split:
    x: torch.Tensor  # (N, in_dim) pooled DINOv2 features, float16
    clip_img: torch.Tensor  # (N, D_clip) float16, L2-normalised
    clip_txt: torch.Tensor  # (N, D_clip) float16, L2-normalised: each image's first caption
    keys: list[str]

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device: torch.device) -> Split:
        return Split(self.x.to(device), self.clip_img.to(device), self.clip_txt.to(device),
                     self.keys)


def pool(cls: torch.Tensor, patch_mean: torch.Tensor, pooling: str,
         num_patch_tokens: int = 256) -> torch.Tensor:
    """Pooled DINOv2 features from the cached CLS token and patch-token mean."""
    if pooling == "cls":
        return cls
    if pooling == "patch_mean":
        return patch_mean
    if pooling == "token_mean":  # the seed's mean over all 1 + P tokens of last_hidden_state
        return (cls.float() + num_patch_tokens * patch_mean.float()).div(
            num_patch_tokens + 1).to(cls.dtype)
    if pooling == "concat":
        return torch.cat([cls, patch_mean], dim=-1)
    raise ConfigError(f"train.pooling: unknown {pooling!r} (known: {', '.join(POOLINGS)})")


def pooled_dim(d_dino: int, pooling: str) -> int:
    return 2 * d_dino if pooling == "concat" else d_dino


def is_val_key(key: str, val_fraction: float) -> bool:
    """A deterministic held-out split by key hash: the same key is always on the same side."""
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")
    return (h % 1_000_000) < val_fraction * 1_000_000


def check_complete(emb_dir: Path) -> list[str]:
    """Shard names with a done-marker; raises if the directory is missing or incomplete."""
    if not emb_dir.is_dir():
        raise ConfigError(f"embeddings directory not found: {emb_dir} (run the extract stage)")
    done = sorted(p.stem for p in (emb_dir / "done").glob("*.json"))
    started = sorted(p.stem for p in (emb_dir / "meta").glob("*.parquet"))
    manifest = emb_dir / "manifest.json"
    expected = set(started)
    if manifest.exists():
        expected |= set(json.loads(manifest.read_text()).get("incomplete_shards", []))
    missing = sorted(expected - set(done))
    if missing:
        raise ConfigError(f"{emb_dir}: shards without a done-marker: {', '.join(missing[:10])}"
                          + (" ..." if len(missing) > 10 else "") + " (re-run extract)")
    if not done:
        raise ConfigError(f"{emb_dir}: no completed shards (run the extract stage)")
    return done


def load_split(emb_dir: Path, pooling: str, val_fraction: float,
               num_patch_tokens: int = 256) -> tuple[Split, Split]:
    """All completed shards, pooled, split into (train, val) by key hash."""
    shards = check_complete(emb_dir)
    parts = [_load_shard(emb_dir, s) for s in shards]
    keys = [k for p in parts for k in p["keys"]]
    cls = torch.from_numpy(np.concatenate([p["dino_cls"] for p in parts]))
    mean = torch.from_numpy(np.concatenate([p["dino_mean"] for p in parts]))
    x = pool(cls, mean, pooling, num_patch_tokens)
    img = torch.from_numpy(np.concatenate([p["clip_image"] for p in parts]))
    txt = torch.from_numpy(np.concatenate([p["clip_text"] for p in parts]))
    is_val = torch.tensor([is_val_key(k, val_fraction) for k in keys], dtype=torch.bool)
    if is_val.all() or not is_val.any():
        raise ConfigError(f"train.val_fraction={val_fraction} leaves an empty split "
                          f"of {len(keys)} pairs")

    def take(mask: torch.Tensor) -> Split:
        idx = mask.nonzero().squeeze(1)
        return Split(x[idx], img[idx], txt[idx], [keys[i] for i in idx.tolist()])

    return take(~is_val), take(is_val)


def _load_shard(emb_dir: Path, shard: str) -> dict:
    meta = pq.read_table(emb_dir / "meta" / f"{shard}.parquet",
                         columns=["key", "caption_start"]).to_pydict()
    arrays = {name: np.load(emb_dir / name / f"{shard}.npy", mmap_mode="r")
              for name in ("dino_cls", "dino_mean", "clip_image", "clip_text")}
    first_caption = np.asarray(meta["caption_start"], dtype=np.int64)
    return {"keys": meta["key"], "dino_cls": np.asarray(arrays["dino_cls"]),
            "dino_mean": np.asarray(arrays["dino_mean"]),
            "clip_image": np.asarray(arrays["clip_image"]),
            "clip_text": np.asarray(arrays["clip_text"])[first_caption]}
