"""Dense heads: from a backbone's tokens to per-patch features in the teacher's text space.

`projector`: the run's trained projector applied to every patch token. Training saw a pooled
vector (CLS, the patch mean, or their token mean); here it sees one patch token in its place
(with "concat" pooling, [CLS, patch] where it saw [CLS, patch mean]), so this head is a
zero-training baseline whose numbers say how far a pooled projector carries to patches.
"""

from __future__ import annotations

import torch

from dinov2clip.config.values import DENSE_HEADS  # noqa: F401 - the heads built here


def split_tokens(hidden: torch.Tensor, n_registers: int, grid: tuple[int, int]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """last_hidden_state (B, 1+R+h*w, D) -> CLS (B, D) and patch tokens (B, h, w, D), float32,
    registers left out (DINOv2-reg, DINOv3): they carry no place in the image."""
    hidden = hidden.float()
    b, n, d = hidden.shape
    h, w = grid
    if n != 1 + n_registers + h * w:
        raise ValueError(f"{n} tokens do not make CLS + {n_registers} registers + a {h}x{w} grid")
    return hidden[:, 0], hidden[:, 1 + n_registers:].reshape(b, h, w, d)


def projector_input(cls: torch.Tensor, patches: torch.Tensor, pooling: str) -> torch.Tensor:
    """What the projector sees per patch: (B, h, w, in_dim). The patch token stands where the
    pooled vector stood; "concat" keeps the image's CLS beside it."""
    if pooling == "concat":
        return torch.cat([cls[:, None, None].expand(*patches.shape[:3], -1), patches], dim=-1)
    return patches


class ProjectorHead:
    """The run's projector over every patch: (B, h, w, D) patches -> (B, h, w, D_teacher)."""

    name = "projector"

    def __init__(self, projector: torch.nn.Module, pooling: str):
        self.projector, self.pooling = projector, pooling

    def __call__(self, cls: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        x = projector_input(cls, patches, self.pooling)
        b, h, w, d = x.shape
        return self.projector(x.reshape(b * h * w, d)).float().reshape(b, h, w, -1)
