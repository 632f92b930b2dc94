"""Eval-set embeddings (read through the store) projected through a trained run."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dinov2clip.config import ConfigError
from dinov2clip.models.projector import Projector, text_tower
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


@torch.no_grad()
def project_text(projector, emb: EvalEmbeddings, batch: int = 8192) -> torch.Tensor | None:
    """A two-tower run's captions: the set's text_enc through its text projector, (n_captions,
    D) float32 on the CPU, L2-normalised; None for a run into CLIP's space."""
    tower = text_tower(projector)
    if tower is None:
        return None
    if emb.text_enc is None:
        raise ConfigError("this two-tower run needs the eval set's text encoder embeddings "
                          "(text_enc), and the set has none: extract it with the run's "
                          "extract.text_encoder")
    return project_pooled(tower, emb.text_enc, "text_enc", batch)
