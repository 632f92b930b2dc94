"""Per-epoch validation: the held-out split, and optionally an eval set used as validation.

Recalls come from the one ranking function the eval uses (dinov2clip.retrieval.recall_at_k), on
the training device; CLIP's own image embeddings on the same pairs give the reference for
"% of CLIP". A two-tower run ranks its projected images against its projected captions (the text
encoder's, through the text projector); CLIP's row is still CLIP's, so "% of CLIP" compares the
two recipes on one scale, and val_cosine is the mean cosine of matched image and text outputs.
Without a teacher (no CLIP arrays in the set) the run's own recalls are all there is: no
val_clip_* and no val_pct_clip.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dinov2clip.config import VAL_KS as KS
from dinov2clip.device import autocast
from dinov2clip.models.projector import text_tower
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
    img, clip_txt = (None if t is None else t.to(device).float()  # or host
                     for t in (val.clip_img, val.clip_txt))
    txt = _text_side(model, clip_txt, val.text, device, dtype)
    total = 0.0
    for s in range(0, len(val), batch_size):
        part = None if img is None else img[s:s + batch_size]  # two-tower losses ignore it
        loss, _ = loss_fn(pred[s:s + batch_size], part, txt[s:s + batch_size])
        total += loss.item() * min(batch_size, len(val) - s)
    n = min(len(val), max_retrieval)
    pairs = torch.arange(n)  # one caption per image
    ours = recall_at_k(txt[:n], pred[:n], pairs, KS, device)
    partner = img if val.text is None else txt  # two-tower: its own text, not CLIP's image
    out = {"val_loss": total / len(val),
           "val_cosine": F.cosine_similarity(pred, partner, dim=-1).mean().item(),
           **{f"val_{k}": v for k, v in ours.items()}}
    if img is not None:
        clip = recall_at_k(clip_txt[:n], img[:n], pairs, KS, device)
        out.update({f"val_clip_{k}": v for k, v in clip.items()})
        out["val_pct_clip"] = mean_pct_r1(clip, ours)
    return out


def clip_recalls(pairs: EvalPairs, device="cpu") -> dict | None:
    """CLIP's own recalls on an eval set; None for a set without the teacher's arrays."""
    if pairs.clip_image is None:
        return None
    return recall_at_k(pairs.clip_text, pairs.clip_image, pairs.caption_to_image, KS, device)


@torch.no_grad()
def validate_evalset(model, pairs: EvalPairs, clip: dict, device, dtype) -> dict:
    """Retrieval of projected images against an eval set's captions (e.g. COCO Karpathy val)."""
    proj = predict(model, pairs.x, device, dtype)  # (n_images, D_clip), raw
    text = _text_side(model, pairs.clip_text, pairs.text_enc, device, dtype)
    ours = recall_at_k(text, proj, pairs.caption_to_image, KS, device)
    out = {f"evalset_{k}": v for k, v in ours.items()}
    if clip is not None:
        out.update({f"evalset_clip_{k}": v for k, v in clip.items()})
        out["evalset_pct_clip"] = mean_pct_r1(clip, ours)
    return out


def _text_side(model, clip_text: torch.Tensor, text_enc: torch.Tensor | None, device,
               dtype) -> torch.Tensor:
    """What the projected images are ranked against: CLIP's captions, or for a two-tower run
    its text projector's outputs for the text encoder's captions."""
    tower = text_tower(model)
    if tower is None:
        return clip_text
    if text_enc is None:
        raise ValueError("a two-tower model needs the text encoder's embeddings (text_enc)")
    return predict(tower, text_enc, device, dtype)


def mean_pct_r1(clip: dict, ours: dict) -> float:
    """The mean of text->image and image->text R@1 as % of CLIP's."""
    pct = percent_of(clip, ours)
    return 0.5 * (pct["t2i_R@1"] + pct["i2t_R@1"])
