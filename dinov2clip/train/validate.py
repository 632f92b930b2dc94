"""Per-epoch validation: the held-out split, and optionally an eval set used as validation.

Recalls come from the one ranking function the eval uses (dinov2clip.retrieval.recall_at_k), on
the training device; CLIP's own image embeddings on the same pairs give the reference for
"% of CLIP".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dinov2clip.config import VAL_KS as KS
from dinov2clip.device import autocast
from dinov2clip.retrieval import percent_of, recall_at_k
from dinov2clip.store import EvalPairs, Split


@torch.no_grad()
def predict(model, x: torch.Tensor, device, dtype, chunk: int = 8192) -> torch.Tensor:
    """(N, D_clip) float32 raw projector outputs, computed in chunks on the model's device."""
    model.eval()
    out = []
    for s in range(0, x.shape[0], chunk):
        with autocast(device, dtype):
            out.append(model(x[s:s + chunk].to(device).float()).float())
    return torch.cat(out)


@torch.no_grad()
def validate_split(model, loss_fn, val: Split, batch_size: int, max_retrieval: int, device,
                   dtype) -> dict:
    """Val loss (in training-size batches, as contrastive terms see them), cosine to CLIP, and
    R@1/5 of projected images against their own captions, also as % of CLIP's own recalls."""
    pred = predict(model, val.x, device, dtype)
    img, txt = val.clip_img.to(device).float(), val.clip_txt.to(device).float()  # may be on host
    total = 0.0
    for s in range(0, len(val), batch_size):
        loss, _ = loss_fn(pred[s:s + batch_size], img[s:s + batch_size], txt[s:s + batch_size])
        total += loss.item() * min(batch_size, len(val) - s)
    n = min(len(val), max_retrieval)
    pairs = torch.arange(n)  # one caption per image
    ours = recall_at_k(txt[:n], pred[:n], pairs, KS, device)
    clip = recall_at_k(txt[:n], img[:n], pairs, KS, device)
    return {
        "val_loss": total / len(val),
        "val_cosine": F.cosine_similarity(pred, img, dim=-1).mean().item(),
        **{f"val_{k}": v for k, v in ours.items()},
        **{f"val_clip_{k}": v for k, v in clip.items()},
        "val_pct_clip": mean_pct_r1(clip, ours),
    }


def clip_recalls(pairs: EvalPairs, device="cpu") -> dict:
    return recall_at_k(pairs.clip_text, pairs.clip_image, pairs.caption_to_image, KS, device)


@torch.no_grad()
def validate_evalset(model, pairs: EvalPairs, clip: dict, device, dtype) -> dict:
    """Retrieval of projected images against an eval set's captions (e.g. COCO Karpathy val)."""
    proj = predict(model, pairs.x, device, dtype)  # (n_images, D_clip), raw
    ours = recall_at_k(pairs.clip_text, proj, pairs.caption_to_image, KS, device)
    return {**{f"evalset_{k}": v for k, v in ours.items()},
            **{f"evalset_clip_{k}": v for k, v in clip.items()},
            "evalset_pct_clip": mean_pct_r1(clip, ours)}


def mean_pct_r1(clip: dict, ours: dict) -> float:
    """The mean of text->image and image->text R@1 as % of CLIP's."""
    pct = percent_of(clip, ours)
    return 0.5 * (pct["t2i_R@1"] + pct["i2t_R@1"])
