"""Eval-set embeddings from the extract stage, projected through a trained run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from dinov2clip.config import ConfigError
from dinov2clip.train.data import check_complete, pool
from dinov2clip.train.projector import Projector


@dataclass
class EvalEmbeddings:
    dino_cls: torch.Tensor  # (n_images, D_dino)
    dino_mean: torch.Tensor  # (n_images, D_dino)
    clip_image: torch.Tensor  # (n_images, D_clip), L2-normalised
    clip_text: torch.Tensor  # (n_captions, D_clip), L2-normalised
    caption_to_image: torch.Tensor  # (n_captions,) image row of each caption


def load_eval_embeddings(emb_dir: Path) -> EvalEmbeddings:
    shards = check_complete(emb_dir)
    arrays = {n: [] for n in ("dino_cls", "dino_mean", "clip_image", "clip_text")}
    owners, n_images = [], 0
    for s in shards:
        for n in arrays:
            arrays[n].append(np.load(emb_dir / n / f"{s}.npy"))
        meta = pq.read_table(emb_dir / "meta" / f"{s}.parquet", columns=["n_captions"])
        counts = np.asarray(meta.column("n_captions").to_pylist(), dtype=np.int64)
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


@torch.no_grad()
def project(emb: EvalEmbeddings, projector: Projector, pooling: str,
            num_patch_tokens: int) -> torch.Tensor:
    """(n_images, D_clip) L2-normalised projected DINOv2 embeddings."""
    return project_pooled(projector, pool(emb.dino_cls, emb.dino_mean, pooling,
                                          num_patch_tokens), pooling)


@torch.no_grad()
def project_pooled(projector: Projector, x: torch.Tensor, pooling: str = "",
                   batch: int = 8192) -> torch.Tensor:
    """(n_images, D_clip) float32 on the CPU, L2-normalised; runs where the projector lives."""
    if x.shape[1] != projector.cfg.in_dim:
        raise ConfigError(f"embeddings give {x.shape[1]}-d {pooling} features but the projector "
                          f"expects {projector.cfg.in_dim}")
    device = next(projector.parameters()).device
    out = [projector(x[s:s + batch].to(device, torch.float32)).float().cpu()
           for s in range(0, x.shape[0], batch)]
    return F.normalize(torch.cat(out), dim=-1)
