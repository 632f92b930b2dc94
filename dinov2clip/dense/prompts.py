"""Class prompts for open-vocabulary segmentation: the seven ImageNet sub-templates of CLIP's
prompt-engineering notebook (its greedy selection from the 80), as TCL, FreeDA and Talk2DINO use
them, embedded per class and averaged."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

SUB_IMAGENET = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)


def class_embeddings(encode_text: Callable[[list[str]], torch.Tensor], classes: Sequence[str],
                     templates: Sequence[str] = SUB_IMAGENET) -> torch.Tensor:
    """(C, D) float32, L2-normalised: per class, the mean of its unit prompt embeddings,
    re-normalised (CLIP's zero-shot recipe). encode_text: texts -> (n, D)."""
    prompts = [t.format(c) for c in classes for t in templates]
    emb = F.normalize(encode_text(prompts).float(), dim=-1)
    return F.normalize(emb.view(len(classes), len(templates), -1).mean(1), dim=-1)
