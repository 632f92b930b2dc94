"""Retrieval recall under the CLIP_benchmark protocol, as pure tensor functions.

Scores are text @ image^T on L2-normalised embeddings. Text->image R@k: share of captions whose
image ranks in the top k. Image->text R@k: share of images with at least one of their captions in
the top k. Ties are broken deterministically: among equal scores the lower index ranks first.
Ranks are counted exactly (no top-k call), in chunks, so memory stays bounded at any set size.
"""

from __future__ import annotations

import torch

from dinov2clip.device import METRIC_DTYPE

_NEVER = torch.iinfo(torch.long).max  # the rank of something that is never retrieved


def rank_of_targets(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Rank (0 = first) of column targets[i] in row i; equal scores: lower column first."""
    target_scores = scores.gather(1, targets[:, None])  # (Q, 1)
    cols = torch.arange(scores.shape[1], device=scores.device)[None, :]
    ahead = (scores > target_scores) | ((scores == target_scores) & (cols < targets[:, None]))
    return ahead.sum(dim=1)


def text_to_image_ranks(text: torch.Tensor, image: torch.Tensor, caption_to_image: torch.Tensor,
                        chunk: int = 4096) -> torch.Tensor:
    """(n_captions,) rank of each caption's own image among all images."""
    image = image.to(METRIC_DTYPE)
    ranks = []
    for s in range(0, text.shape[0], chunk):
        scores = text[s:s + chunk].to(METRIC_DTYPE) @ image.T  # (chunk, n_images)
        ranks.append(rank_of_targets(scores, caption_to_image[s:s + chunk]))
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)


def image_to_text_ranks(image: torch.Tensor, text: torch.Tensor, caption_to_image: torch.Tensor,
                        chunk: int = 1024) -> torch.Tensor:
    """(n_images,) best rank, among all captions, of any caption belonging to each image."""
    n_images = image.shape[0]
    text = text.to(METRIC_DTYPE)
    best = torch.full((n_images,), _NEVER, dtype=torch.long)  # an image with no captions
    caption_ids = torch.arange(text.shape[0])
    for s in range(0, n_images, chunk):
        rows = image[s:s + chunk].to(METRIC_DTYPE) @ text.T  # (chunk, n_captions)
        # One query row per (image, own caption) pair whose image is in this chunk.
        mine = (caption_to_image >= s) & (caption_to_image < s + rows.shape[0])
        owner = caption_to_image[mine] - s
        ranks = rank_of_targets(rows[owner], caption_ids[mine])
        chunk_best = torch.full((rows.shape[0],), _NEVER, dtype=torch.long)
        best[s:s + rows.shape[0]] = chunk_best.scatter_reduce_(0, owner, ranks, reduce="amin")
    return best


def recall_from_ranks(ranks: torch.Tensor, ks: list[int]) -> dict[int, float]:
    """{k: share of queries whose rank is below k}, as a fraction in [0, 1] (exact count / n)."""
    n = ranks.numel()
    return {k: int((ranks < k).sum()) / n if n else float("nan") for k in ks}


def retrieval_recalls(image: torch.Tensor, text: torch.Tensor, caption_to_image: torch.Tensor,
                      ks: list[int] = (1, 5, 10)) -> dict[str, float]:
    """{'t2i_R@1': .., 'i2t_R@1': .., ...} in percent, for one image/text embedding pair."""
    return recalls_percent(text_to_image_ranks(text, image, caption_to_image),
                           image_to_text_ranks(image, text, caption_to_image), ks)


def recalls_percent(t2i_ranks, i2t_ranks, ks: list[int]) -> dict[str, float]:
    """{'t2i_R@k': .., 'i2t_R@k': ..} in percent from the two rank vectors (tensor or array)."""
    out = {}
    for direction, ranks in (("t2i", torch.as_tensor(t2i_ranks)),
                             ("i2t", torch.as_tensor(i2t_ranks))):
        n = ranks.numel()
        for k in ks:
            out[f"{direction}_R@{k}"] = 100.0 * int((ranks < k).sum()) / n if n else float("nan")
    return out


def percent_of(reference: dict[str, float], other: dict[str, float]) -> dict[str, float]:
    """other / reference per metric, in percent (reference 0 -> nan)."""
    return {k: (100.0 * (other[k] / reference[k])) if reference[k] else float("nan")
            for k in reference}
