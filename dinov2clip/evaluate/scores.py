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

from concurrent.futures import ThreadPoolExecutor

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
                      chunk: int = 256, threads: int | None = None,
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(t2i (n_captions,), i2t (n_images,)) exact ranks, 0 = first, clipped at cap.

    t2i: rank of each caption's own image among all images. i2t: for each image, the best rank of
    any of its captions among all captions; an image without captions gets cap (never retrieved).
    Equal scores: the lower index ranks first. Row blocks of `chunk` stay in cache while they
    are counted; `threads` (default: torch's) split the rows, as numpy releases the GIL.
    """
    s = np.asarray(scores)
    if s.dtype != np.float32:
        s = s.astype(np.float32)
    n_cap, n_img = s.shape
    c2i = np.asarray(caption_to_image, dtype=np.int64)
    own = s[np.arange(n_cap), c2i]  # (n_captions,) each caption's score with its own image
    # An image's best rank is that of its best caption: the highest own score, lowest index.
    best = np.full(n_img, -np.inf, dtype=np.float32)
    np.maximum.at(best, c2i, own)
    is_best = own == best[c2i]
    first = np.full(n_img, n_cap, dtype=np.int64)
    np.minimum.at(first, c2i[is_best], np.flatnonzero(is_best))

    t2i = np.empty(n_cap, dtype=np.int64)
    parts = _row_ranges(n_cap, threads or torch.get_num_threads(), chunk)
    with ThreadPoolExecutor(len(parts)) as pool:
        counts = list(pool.map(lambda r: _count_rows(s, c2i, own, best, t2i, cap, chunk, *r),
                               parts))
    ahead = sum(c[0] for c in counts)
    equal = sum(c[1] for c in counts)
    for j in np.flatnonzero((equal > 1) & (ahead < cap)):
        ahead[j] += np.count_nonzero(s[:first[j], j] == best[j])
    ahead[first == n_cap] = cap  # no captions at all
    return np.minimum(t2i, cap), np.minimum(ahead, cap)


def _row_ranges(n: int, parts: int, chunk: int) -> list[tuple[int, int]]:
    parts = max(1, min(parts, -(-n // chunk)))
    bounds = np.linspace(0, n, parts + 1).astype(int)
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))


def _count_rows(s, c2i, own, best, t2i, cap, chunk, start, stop):
    """Fill t2i[start:stop]; return this row range's (ahead, equal) counts per image column."""
    ahead = np.zeros(s.shape[1], dtype=np.int64)
    equal = np.zeros(s.shape[1], dtype=np.int64)
    for a in range(start, stop, chunk):
        b = min(a + chunk, stop)
        block, target = s[a:b], own[a:b, None]  # (rows, n_images), (rows, 1)
        ranks = _count(block > target, axis=1)
        # An equal score ahead of the own image only matters where it can still change a hit;
        # the own image itself is one of the equal entries.
        tied = (_count(block == target, axis=1) > 1) & (ranks < cap)
        for r in np.flatnonzero(tied):
            ranks[r] += np.count_nonzero(block[r, :c2i[a + r]] == target[r, 0])
        t2i[a:b] = ranks
        # Image->text: captions ahead of each image's best caption, in this block of captions.
        ahead += _count(block > best, axis=0)
        equal += _count(block == best, axis=0)
    return ahead, equal
