"""Eval-set embeddings (read through the store) projected through a trained run."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dinov2clip.config import ConfigError
from dinov2clip.models.projector import Projector
from dinov2clip.store import EvalEmbeddings, pool


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
