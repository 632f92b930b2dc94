"""R@k both ways for one eval set and three image embeddings: CLIP, projected, ensemble.

Every number comes from dinov2clip.retrieval.recall_at_k, on the eval device. CLIP's own row
does not depend on the projector, so a SetEval computes it once and reuses it for every
checkpoint (--all-epochs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dinov2clip.config import ConfigError
from dinov2clip.device import METRIC_DTYPE
from dinov2clip.retrieval import percent_of, recall_at_k


class SetEval:
    """One eval set's text side and CLIP images, kept for as many projections as asked."""

    def __init__(self, text: torch.Tensor, clip_image: torch.Tensor,
                 caption_to_image: torch.Tensor, ks: list[int],
                 device: torch.device | str = "cpu"):
        _check_finite("CLIP text", text)
        _check_finite("CLIP image", clip_image)
        self.text, self.clip_image = text, clip_image  # (n_captions, D), (n_images, D)
        self.c2i = caption_to_image.long()  # (n_captions,)
        self.ks, self.device = list(ks), device
        self.clip = self._recalls(clip_image)

    def rows(self, projected: torch.Tensor) -> dict[str, dict[str, float]]:
        """{'clip', 'projected', 'ensemble'}: R@k in percent, plus the two % of CLIP rows."""
        _check_finite("projected", projected)
        if projected.shape != self.clip_image.shape:
            raise ConfigError(f"projected embeddings are {tuple(projected.shape)}, CLIP's "
                              f"images {tuple(self.clip_image.shape)}")
        out = {"clip": self.clip, "projected": self._recalls(projected),
               "ensemble": self._recalls(ensemble(self.clip_image, projected))}
        out["projected_pct"] = percent_of(self.clip, out["projected"])
        out["ensemble_pct"] = percent_of(self.clip, out["ensemble"])
        return out

    def _recalls(self, image: torch.Tensor) -> dict[str, float]:
        return recall_at_k(self.text, image, self.c2i, self.ks, self.device)


def ensemble(clip_image: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
    """normalize(normalize(clip) + normalize(projected)): (n_images, D), float32."""
    return F.normalize(_unit(clip_image) + _unit(projected), dim=-1)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.to(METRIC_DTYPE), dim=-1)


def _check_finite(what: str, x: torch.Tensor) -> None:
    if not torch.isfinite(x).all():
        raise ConfigError(f"{what} embeddings contain NaN or inf; refusing to rank them")
