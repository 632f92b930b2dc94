"""Loss registry. The config names a weighted sum, e.g. loss = {unit_mse = 1.0, text_infonce = 0.2}.

Every loss takes the raw projector output (B, D) and the batch's CLIP image and caption embeddings
(B, D each, L2-normalised) and returns a scalar. Losses with parameters (a learnable temperature)
are modules, so the optimiser trains them with the projector.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from dinov2clip.config import ConfigError


class UnitMSE(nn.Module):
    """The seed's loss: MSE between the L2-normalised output and the CLIP image embedding."""

    def forward(self, pred, clip_img, clip_txt):
        return F.mse_loss(F.normalize(pred, dim=-1), clip_img)


class Cosine(nn.Module):
    def forward(self, pred, clip_img, clip_txt):
        return 1.0 - F.cosine_similarity(pred, clip_img, dim=-1).mean()


class CosSmoothL1(nn.Module):
    """0.9 cosine + 0.1 smooth-L1, Theia's feature-distillation mix."""

    def forward(self, pred, clip_img, clip_txt):
        cos = 1.0 - F.cosine_similarity(pred, clip_img, dim=-1).mean()
        return 0.9 * cos + 0.1 * F.smooth_l1_loss(F.normalize(pred, dim=-1), clip_img)


class _InfoNCE(nn.Module):
    """Symmetric in-batch contrastive loss with a learnable temperature, initialised at 1/0.07."""

    def __init__(self):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def contrast(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        scale = self.log_scale.clamp(max=math.log(100.0)).exp()
        logits = scale * F.normalize(a, dim=-1) @ b.T  # (B, B)
        labels = torch.arange(a.shape[0], device=a.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


class TextInfoNCE(_InfoNCE):
    def forward(self, pred, clip_img, clip_txt):
        return self.contrast(pred, clip_txt)


class ImageInfoNCE(_InfoNCE):
    def forward(self, pred, clip_img, clip_txt):
        return self.contrast(pred, clip_img)


class RetrievalKD(nn.Module):
    """KL(CLIP's image->text softmax over the batch || the projector's), at CLIP's scale of 100."""

    def __init__(self, scale: float = 100.0):
        super().__init__()
        self.scale = scale

    def forward(self, pred, clip_img, clip_txt):
        teacher = F.log_softmax(self.scale * clip_img @ clip_txt.T, dim=-1)
        student = F.log_softmax(self.scale * F.normalize(pred, dim=-1) @ clip_txt.T, dim=-1)
        return F.kl_div(student, teacher, log_target=True, reduction="batchmean")


LOSSES = {
    "unit_mse": UnitMSE,
    "cosine": Cosine,
    "cos_smoothl1": CosSmoothL1,
    "text_infonce": TextInfoNCE,
    "image_infonce": ImageInfoNCE,
    "retrieval_kd": RetrievalKD,
}


# What each loss is called where a person reads it (a plot's title, a report).
LABELS = {
    "unit_mse": "unit-norm MSE",
    "cosine": "cosine distance",
    "cos_smoothl1": "0.9 cosine + 0.1 smooth-L1",
    "text_infonce": "text InfoNCE",
    "image_infonce": "image InfoNCE",
    "retrieval_kd": "retrieval KD",
}


def describe(weights: dict[str, float]) -> str:
    """train.loss in words, e.g. "unit-norm MSE + 0.2 x text InfoNCE" (a weight of 1 unsaid)."""
    def term(name: str, w: float) -> str:
        label = LABELS.get(name, name)
        label = f"({label})" if "+" in label and w != 1 else label
        return label if w == 1 else f"{w:g} x {label}"

    return " + ".join(term(name, w) for name, w in weights.items())


class WeightedLoss(nn.Module):
    def __init__(self, weights: dict[str, float]):
        super().__init__()
        unknown = sorted(set(weights) - set(LOSSES))
        if unknown or not weights:
            raise ConfigError(f"train.loss: unknown loss {unknown[0]!r} (known: "
                              f"{', '.join(LOSSES)})" if unknown else "train.loss is empty")
        self.weights = dict(weights)
        self.terms = nn.ModuleDict({name: LOSSES[name]() for name in weights})

    def forward(self, pred, clip_img, clip_txt) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted total, and each term's value for logging."""
        parts = {n: term(pred, clip_img, clip_txt) for n, term in self.terms.items()}
        total = sum(self.weights[n] * v for n, v in parts.items())
        return total, {n: v.detach() for n, v in parts.items()}
