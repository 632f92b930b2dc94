"""Exact retrieval ranks in both directions from one score matrix: the eval's fast CPU path.

One float32 matmul per embedding, scores = text @ image^T of shape (n_captions, n_images), serves
both directions: text->image reads rows, image->text reads columns. FAISS would search twice (once
per direction), and counting is cheaper than a top-k: the rank of a target is the number of
entries that beat it, where "beat" means a higher score, or an equal score at a lower index. The
counts run in numpy over uint8 views of comparisons, which is several times faster than torch's
bool reductions on a CPU.

Ranks are exact but clipped at `cap` (a rank >= cap is reported as cap): R@k for any k <= cap
needs no more, and exact ties only need fixing up for the few targets that can still make it.
The result is a pure function of (scores, caption -> image); tests/test_metrics_oracle.py checks
it against a naive Python loop.
"""

from __future__ import annotations

import numpy as np
import torch

from dinov2clip.device import METRIC_DTYPE


def score_matrix(text: torch.Tensor, image: torch.Tensor) -> np.ndarray:
    """(n_captions, n_images) float32 text @ image^T; fp16 inputs are upcast before the product."""
    text, image = text.to(METRIC_DTYPE), image.to(METRIC_DTYPE)
    return (text @ image.T).numpy()


def ensemble_scores_(clip_scores: np.ndarray, projected_scores: np.ndarray,
                     clip_image: torch.Tensor, projected: torch.Tensor) -> np.ndarray:
    """Scores of normalize(clip + projected), by linearity, written over projected_scores.

    text . (c + p) / |c + p| = (text . c + text . p) / |c + p|: no third matmul, no new buffer.
    Both matrices are (n_captions, n_images) float32; the image norms are (n_images,).
    """
    norms = torch.linalg.vector_norm(clip_image.to(METRIC_DTYPE) + projected.to(METRIC_DTYPE),
                                     dim=-1).clamp_min(1e-12).numpy()
    out = np.add(clip_scores, projected_scores, out=projected_scores)
    out *= (1.0 / norms)[None, :]
    return out


def _count(hits: np.ndarray, axis: int) -> np.ndarray:
    """Number of True along axis; a uint8 view summed in uint16 when that cannot overflow."""
    dtype = np.uint16 if hits.shape[axis] < 65536 else np.int64
    return hits.view(np.uint8).sum(axis=axis, dtype=dtype).astype(np.int64)


def ranks_from_scores(scores: np.ndarray, caption_to_image: np.ndarray, cap: int,
                      chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(t2i (n_captions,), i2t (n_images,)) exact ranks, 0 = first, clipped at cap.

    t2i: rank of each caption's own image among all images. i2t: for each image, the best rank of
    any of its captions among all captions; an image without captions gets cap (never retrieved).
    Equal scores: the lower index ranks first.
    """
    s = np.asarray(scores)
    if s.dtype != np.float32:
        s = s.astype(np.float32)
    n_cap, n_img = s.shape
    c2i = np.asarray(caption_to_image, dtype=np.int64)
    own = s[np.arange(n_cap), c2i]  # (n_captions,) each caption's score with its own image
    return _t2i_ranks(s, c2i, own, cap, chunk), _i2t_ranks(s, c2i, own, cap, chunk)


def _t2i_ranks(s: np.ndarray, c2i: np.ndarray, own: np.ndarray, cap: int,
               chunk: int) -> np.ndarray:
    ranks = np.empty(s.shape[0], dtype=np.int64)
    for a in range(0, s.shape[0], chunk):
        block, target = s[a:a + chunk], own[a:a + chunk, None]  # (rows, n_images), (rows, 1)
        ranks[a:a + chunk] = _count(block > target, axis=1)
        # An equal score ahead of the own image only matters when it can still change a hit;
        # the own image itself is one of the equal entries.
        tied = (_count(block == target, axis=1) > 1) & (ranks[a:a + chunk] < cap)
        for r in np.flatnonzero(tied):
            ranks[a + r] += np.count_nonzero(block[r, :c2i[a + r]] == target[r, 0])
    return np.minimum(ranks, cap)


def _i2t_ranks(s: np.ndarray, c2i: np.ndarray, own: np.ndarray, cap: int,
               chunk: int) -> np.ndarray:
    n_cap, n_img = s.shape
    # An image's best rank is that of its best caption: the highest own score, lowest index.
    best = np.full(n_img, -np.inf, dtype=np.float32)
    np.maximum.at(best, c2i, own)
    is_best = own == best[c2i]
    first = np.full(n_img, n_cap, dtype=np.int64)
    np.minimum.at(first, c2i[is_best], np.flatnonzero(is_best))
    ahead = np.zeros(n_img, dtype=np.int64)
    equal = np.zeros(n_img, dtype=np.int64)
    for a in range(0, n_cap, chunk):
        block = s[a:a + chunk]  # (rows, n_images)
        ahead += _count(block > best, axis=0)
        equal += _count(block == best, axis=0)
    for j in np.flatnonzero((equal > 1) & (ahead < cap)):
        ahead[j] += np.count_nonzero(s[:first[j], j] == best[j])
    ahead[first == n_cap] = cap  # no captions at all
    return np.minimum(ahead, cap)
