"""Retrieval recall under the CLIP_benchmark protocol: the one ranking function of the project.

Scores are text @ image.T of L2-normalised float32 embeddings. Text->image R@k: the share of
captions whose own image is among the k best images. Image->text R@k: the share of images with at
least one of their captions among the k best captions. A rank counts what is ahead of a target: a
higher score, or an equal score at a lower index (equal scores go to the lower index), so no
number depends on a library's tie order. The eval, --all-epochs, per-epoch validation and
zero-shot all rank here; tests/test_metrics_oracle.py checks it against a naive loop.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

_NEVER = torch.iinfo(torch.long).max  # the rank of an image that has no caption
CHUNK = 2048  # text rows per count: 40 MB of scores at 5k images


def recall_at_k(text: torch.Tensor, image: torch.Tensor, caption_to_image: torch.Tensor,
                ks, device: torch.device | str = "cpu", chunk: int = CHUNK) -> dict[str, float]:
    """{'t2i_R@k': .., 'i2t_R@k': ..} in percent (exact count / n) for every k in ks."""
    return recall_of(score_matrix(text, image, device), caption_to_image, ks, chunk)


def retrieval_ranks(text: torch.Tensor, image: torch.Tensor, caption_to_image: torch.Tensor,
                    device: torch.device | str = "cpu", chunk: int = CHUNK,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(t2i (n_captions,), i2t (n_images,)) ranks of text against image, 0 = first: for what a
    recall cannot say, e.g. zero-shot's per-class recall (each image's rank of its class)."""
    return _ranks_of(score_matrix(text, image, device), caption_to_image, chunk)


@torch.no_grad()
def score_matrix(text: torch.Tensor, image: torch.Tensor,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """(n_captions, n_images) cosines, float32 on device: 500 MB at COCO's 25k x 5k.

    text (n_captions, D) and image (n_images, D) in any float dtype: re-normalised here in
    float32, as fp16 storage leaves norms off by ~1e-3, enough to reorder near ties. One product
    at full float32, kept whole so that both directions rank from the very same scores.
    """
    text, image = unit_float32(text, device), unit_float32(image, device)
    if not (all_finite(text) and all_finite(image)):
        raise FloatingPointError("embeddings contain NaN or inf: refusing to rank them")
    with _full_float32():
        return text @ image.T


def unit_float32(x: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """x on device, float32, each row scaled to norm 1: what every score is made of."""
    return F.normalize(x.to(device, torch.float32), dim=-1)


def all_finite(x: torch.Tensor) -> bool:
    """No NaN or inf in x, from one float64 sum: a NaN or inf entry makes it non-finite, finite
    entries cannot (float64 does not overflow on float32 values), and no mask is allocated."""
    return bool(torch.isfinite(x.sum(dtype=torch.float64)))


def recall_of(scores: torch.Tensor, caption_to_image: torch.Tensor, ks,
              chunk: int = CHUNK) -> dict[str, float]:
    """R@k both ways in percent (exact count / n) from scores (n_captions, n_images)."""
    out = {}
    for direction, ranks in zip(("t2i", "i2t"), _ranks_of(scores, caption_to_image, chunk),
                                strict=True):
        for k in ks:
            out[f"{direction}_R@{k}"] = 100.0 * int((ranks < k).sum()) / len(ranks) if len(
                ranks) else float("nan")
    return out


@torch.no_grad()
def _ranks_of(scores: torch.Tensor, caption_to_image: torch.Tensor, chunk: int = CHUNK,
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(t2i (n_captions,), i2t (n_images,)) ranks, 0 = first, on the CPU, from scores
    (n_captions, n_images). t2i: the rank of each caption's image. i2t: the rank of each image's
    best caption (highest score, then lowest index), which is the best rank any of its captions
    has. Counted in row chunks of `chunk` captions, on the scores' device."""
    device = scores.device
    c2i = caption_to_image.to(device, torch.long)
    n_cap, n_img = scores.shape
    if n_cap == 0 or n_img == 0:
        return torch.full((n_cap,), _NEVER), torch.full((n_img,), _NEVER)
    own = scores[torch.arange(n_cap, device=device), c2i]  # (n_captions,)
    best = torch.full((n_img,), -torch.inf, device=device).scatter_reduce(0, c2i, own, "amax")
    is_best = own == best[c2i]
    first = torch.full((n_img,), n_cap, device=device).scatter_reduce(
        0, c2i[is_best], torch.arange(n_cap, device=device)[is_best], "amin")

    def count(rows: tuple[int, int]):  # both directions' counts over one chunk of captions
        block = scores[rows[0]:rows[1]]
        return (_count_ahead(block, own[rows[0]:rows[1], None], dim=1),
                _count_ahead(block, best, dim=0))

    # Chunks are counted on all of torch's threads: numpy's comparisons use one core each.
    with ThreadPoolExecutor(torch.get_num_threads()) as pool:
        row_counts, col_counts = zip(*pool.map(count, [
            (s, min(s + chunk, n_cap)) for s in range(0, n_cap, chunk)]), strict=True)
    t2i = _settle_ties(*(torch.cat(c) for c in zip(*row_counts, strict=True)),
                       lambda r: _rank_of_targets(scores[r], c2i[r]), device)
    i2t = _settle_ties(*(sum(c) for c in zip(*col_counts, strict=True)),
                       lambda c: _rank_of_targets(scores[:, c].T, first[c]), device)
    i2t[(first == n_cap).cpu()] = _NEVER
    return t2i, i2t


def _count_ahead(block: torch.Tensor, target: torch.Tensor, dim: int) -> tuple[torch.Tensor, ...]:
    """(entries > target, entries >= target) counted along dim, int64 on the CPU. On the CPU in
    numpy, on uint8 views: comparisons and sums several times faster than torch's there."""
    if block.device.type != "cpu":
        return (block > target).sum(dim).cpu(), (block >= target).sum(dim).cpu()
    scores, target = block.numpy(), target.numpy()
    dtype = np.uint16 if scores.shape[dim] < 65536 else np.int64
    return tuple(torch.from_numpy(m.view(np.uint8).sum(axis=dim, dtype=dtype).astype(np.int64))
                 for m in (scores > target, scores >= target))


def _settle_ties(above: torch.Tensor, at_or_above: torch.Tensor, exact, device) -> torch.Tensor:
    """Ranks: the count above the target, except where another entry ties with it exactly
    (rare outside duplicates): there exact(which) counts with the full rule."""
    ranks = above.clone()
    tied = torch.nonzero(at_or_above - above > 1)[:, 0]
    if len(tied):
        ranks[tied] = exact(tied.to(device)).cpu()
    return ranks


def _rank_of_targets(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(n,) rank of column targets[i] in row i of scores (n, m); ties: the lower column first."""
    target = scores.gather(1, targets[:, None])  # (n, 1)
    cols = torch.arange(scores.shape[1], device=scores.device)
    return ((scores > target) | ((scores == target) & (cols < targets[:, None]))).sum(1)


def percent_of(reference: dict[str, float], other: dict[str, float]) -> dict[str, float]:
    """other / reference per metric, in percent (reference 0 -> nan)."""
    return {k: (100.0 * (other[k] / reference[k])) if reference[k] else float("nan")
            for k in reference}


class _full_float32:  # noqa: N801 - used like a function
    """Products at full float32 inside the block: torch.set_float32_matmul_precision("high"),
    set by a user or a library, would let them run in TF32 or bf16 and move the numbers."""

    def __enter__(self):
        self.before = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")

    def __exit__(self, *exc):
        torch.set_float32_matmul_precision(self.before)
