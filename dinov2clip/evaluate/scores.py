"""Exact retrieval ranks in both directions, screened by a cheap low-precision product.

The eval's CPU path. A rank is the number of entries that beat a target: a higher score, or an
equal score at a lower index. Counting only needs each score to be on the right side of its
target, so:

1. Every target's own score is computed exactly: float64 dot products of the float32 inputs
   (each product is exact; the sum is off by ~1e-14).
2. All scores are screened by one text @ image^T in low precision: bfloat16 where the CPU
   multiplies it natively (about 3x faster than float32 there), float32 elsewhere. A proven
   bound on the screen's error splits each row and column into entries surely ahead of the
   target, surely behind it, and a thin band of undecided ones.
3. Only the undecided entries of targets that can still rank below `cap` are scored exactly.

So the ranks are exact, not approximately so. They are clipped at cap, since R@k for any
k <= cap needs no more. On CLIP-like data about a third of the rows hold undecided entries, a
few each. The result is a pure function of (embeddings, caption -> image);
tests/test_metrics_oracle.py checks it against a naive Python loop.

The screens and their error bounds live in screen.py. As x - u|x| increases with x, "surely
ahead" and "surely behind" are each one threshold on S~ per row (and per column).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from dinov2clip.device import METRIC_DTYPE
from dinov2clip.evaluate.metrics import rank_of_targets
from dinov2clip.evaluate.screen import EnsembleScreen, Screen, screen_dtype

_PAIR_BATCH = 256  # exact dot products per step: the float64 copies stay in cache
# A target with more undecided entries than this gets its whole row (or column) in float64 by
# one product instead of pair by pair: cheaper per entry, and bounded in memory where the
# screen cannot decide anything (near-duplicate images, a collapsed projector).
_WIDE = 128
_DENSE_BYTES = 1 << 28  # float64 score rows per product: 256 MiB at most


def exact_ranks(text: torch.Tensor, image: torch.Tensor, caption_to_image: torch.Tensor,
                cap: int, chunk: int = 512, dtype: torch.dtype | None = None,
                threads: int | None = None, screen: Screen | EnsembleScreen | None = None,
                ) -> tuple[np.ndarray, np.ndarray]:
    """(t2i (n_captions,), i2t (n_images,)) exact ranks, 0 = first, clipped at cap.

    t2i: rank of each caption's own image among all images. i2t: for each image, the best rank of
    any of its captions among all captions; an image without captions gets cap (never retrieved).
    Equal scores: the lower index ranks first. `chunk` text rows are screened at a time, `dtype`
    is the screen's precision (default: screen_dtype()), `threads` share the counting.
    `screen`: one already built for these text and image embeddings (see SetEval).
    """
    text = text.detach().to("cpu", METRIC_DTYPE).contiguous()
    image = image.detach().to("cpu", METRIC_DTYPE).contiguous()
    c2i = caption_to_image.long().numpy()
    n_cap, n_img = text.shape[0], image.shape[0]
    own = pair_dots(text, image, np.arange(n_cap), c2i)  # (n_captions,) exact own scores
    best, first = _best_captions(own, c2i, n_img)
    no_caption = first == n_cap

    if screen is None:
        screen = Screen.build(text, image, dtype or screen_dtype())
    rows = _Targets(*screen.thresholds(own, screen.row_slack), own, c2i)
    cols = _Targets(*screen.thresholds(best, screen.col_slack), best, first)
    cols.hi[no_caption] = cols.lo[no_caption] = np.inf  # nothing is counted against them
    row_band, col_band = _screen_pass(screen, rows, cols, cap, chunk,
                                      threads or torch.get_num_threads())

    def exact(captions: np.ndarray, images: np.ndarray) -> np.ndarray:
        return pair_dots(text, image, captions, images)

    t2i = rows.ranks(*row_band, cap, exact)
    wide = np.flatnonzero(rows.wide(cap))
    t2i[wide] = _dense_ranks(text, image, wide, cap, targets=c2i[wide])
    i2t = cols.ranks(col_band[1], col_band[0], cap, lambda img, caption: exact(caption, img))
    wide = np.flatnonzero(cols.wide(cap))
    i2t[wide] = _dense_ranks(image, text, wide, cap, key_owner=c2i)
    i2t[no_caption] = cap
    return t2i, i2t


def _dense_ranks(queries: torch.Tensor, keys: torch.Tensor, which: np.ndarray, cap: int,
                 targets: np.ndarray | None = None, key_owner: np.ndarray | None = None,
                 ) -> np.ndarray:
    """Exact ranks, clipped at cap, of each query[which[i]]'s target key, from whole float64
    score rows. The target is targets[i] (a caption's image) or, given key_owner (caption ->
    image), the query's best own key in the same row (an image's best caption: highest score,
    then lowest index). Target and rivals come from one product, so exact ties stay ties.
    """
    if not len(which):
        return np.zeros(0, dtype=np.int64)
    # Identical keys share one column: a BLAS product may sum different columns in different
    # orders (edge tiles), which would split exact ties between duplicates.
    unique, inverse = np.unique(keys.numpy(), axis=0, return_inverse=True)
    unique, inverse = torch.from_numpy(unique).double(), torch.from_numpy(inverse.reshape(-1))
    out = np.empty(len(which), dtype=np.int64)
    batch = max(1, _DENSE_BYTES // (8 * keys.shape[0]))
    for s in range(0, len(which), batch):
        rows = torch.from_numpy(which[s:s + batch])
        scores = (queries[rows].double() @ unique.T)[:, inverse]  # (batch, n_keys)
        if key_owner is None:
            target = torch.from_numpy(targets[s:s + batch])
        else:  # argmax returns the first of equal maxima: the lowest index
            own = torch.from_numpy(key_owner)[None, :] == rows[:, None]
            target = scores.masked_fill(~own, -torch.inf).argmax(dim=1)
        out[s:s + batch] = rank_of_targets(scores, target).clamp(max=cap).numpy()
    return out


def pair_dots(text: torch.Tensor, image: torch.Tensor, rows: np.ndarray,
              cols: np.ndarray) -> np.ndarray:
    """(n_pairs,) float64 text[rows] . image[cols], the same value whenever a pair recurs.

    Each float32 product is exact in float64 and numpy's per-row loop sums in a fixed order, so
    equal vectors give equal scores: exact ties stay ties.
    """
    t, im = text.numpy(), image.numpy()
    out = np.empty(len(rows), dtype=np.float64)
    for s in range(0, len(rows), _PAIR_BATCH):
        a = t[rows[s:s + _PAIR_BATCH]].astype(np.float64)
        b = im[cols[s:s + _PAIR_BATCH]].astype(np.float64)
        np.einsum("ij,ij->i", a, b, out=out[s:s + _PAIR_BATCH])
    return out


def _best_captions(own: np.ndarray, c2i: np.ndarray, n_img: int) -> tuple[np.ndarray, np.ndarray]:
    """Per image, its best caption's exact score and index (highest score, then lowest index).

    An image's i2t rank is that of its best caption. Without captions: -inf and n_captions.
    """
    best = np.full(n_img, -np.inf)
    np.maximum.at(best, c2i, own)
    is_best = own == best[c2i]
    first = np.full(n_img, len(own), dtype=np.int64)
    np.minimum.at(first, c2i[is_best], np.flatnonzero(is_best))
    return best, first


@dataclass
class _Targets:
    """One direction's targets: float32 thresholds on the screen, and the counts against them."""

    hi: np.ndarray  # a screened score above hi is surely ahead of the target
    lo: np.ndarray  # a screened score below lo is surely behind it
    score: np.ndarray  # the target's exact score (float64)
    own: np.ndarray  # the target's index on the other side
    sure: np.ndarray | None = None  # entries above hi: surely ahead
    upto: np.ndarray | None = None  # entries at or above lo: surely ahead or undecided

    def recheck(self, cap: int, span: slice = slice(None)) -> np.ndarray:
        """Mask of targets (in span) whose rank hangs on undecided entries other than their own.

        The own entry is always undecided, as its exact score sits mid-band, hence the "> 1".
        """
        sure, upto = self.sure[span], self.upto[span]
        return (sure < cap) & (upto - sure > 1)

    def wide(self, cap: int, span: slice = slice(None)) -> np.ndarray:
        """Mask of targets to re-check whole, in float64, rather than pair by pair."""
        return self.recheck(cap, span) & (self.upto[span] - self.sure[span] - 1 > _WIDE)

    def pairwise(self, cap: int, span: slice = slice(None)) -> np.ndarray:
        """Mask of targets whose undecided entries are re-checked pair by pair."""
        return self.recheck(cap, span) & ~self.wide(cap, span)

    def ranks(self, owner: np.ndarray, rival: np.ndarray, cap: int, exact) -> np.ndarray:
        """Exact ranks clipped at cap: the sure count, plus the undecided rivals of `owner` that
        beat its target when scored exactly by exact(owner, rival): higher, or equal at a lower
        index. Pairs of targets that need no recheck (or a whole one), and the own entry, are
        dropped first."""
        keep = self.pairwise(cap)[owner] & (rival != self.own[owner])
        owner, rival = owner[keep], rival[keep]
        scores, target = exact(owner, rival), self.score[owner]
        ahead = (scores > target) | ((scores == target) & (rival < self.own[owner]))
        return np.minimum(self.sure + np.bincount(owner[ahead], minlength=len(self.sure)), cap)


def _count(hits: np.ndarray, axis: int) -> np.ndarray:
    """Number of True along axis; a uint8 view summed in uint16 when that cannot overflow."""
    dtype = np.uint16 if hits.shape[axis] < 65536 else np.int64
    return hits.view(np.uint8).sum(axis=axis, dtype=dtype).astype(np.int64)


def _screen_pass(screen: Screen | EnsembleScreen, rows: _Targets, cols: _Targets, cap: int,
                 chunk: int, threads: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Count both directions against the screen, filling rows' and cols' sure and upto.

    Returns two sets of undecided (caption, image) pairs: the rows' that can still change a
    rank, and every column's (which columns need theirs is only known at the end).
    """
    n_cap, n_img = screen.shape
    rows.sure, rows.upto = np.zeros(n_cap, np.int64), np.zeros(n_cap, np.int64)
    cols.sure, cols.upto = np.zeros(n_img, np.int64), np.zeros(n_img, np.int64)
    buffer = torch.empty((min(chunk, n_cap), n_img), dtype=torch.float32)
    row_pairs, col_pairs = [], []
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for start in range(0, n_cap, chunk):
            stop = min(start + chunk, n_cap)
            block = screen.block(start, stop, out=buffer)
            # Columns whose undecided entries are still wanted, from the earlier blocks' counts:
            # one already past cap needs nothing more, one with a wide band is re-checked whole.
            # Decided here, before the workers start, as the counts change under them after.
            open_cols = (cols.sure < cap) & (cols.upto - cols.sure <= _WIDE)
            jobs = [pool.submit(_count_part, block[a - start:b - start], a, rows, cols, open_cols,
                                cap) for a, b in _split(start, stop, threads)]
            for col_sure, col_upto, row_band, col_band in [job.result() for job in jobs]:
                cols.sure += col_sure
                cols.upto += col_upto
                row_pairs.append(row_band)
                col_pairs.append(col_band)
    return _concat(row_pairs), _concat(col_pairs)


def _split(start: int, stop: int, parts: int) -> list[tuple[int, int]]:
    bounds = np.linspace(start, stop, max(1, min(parts, stop - start)) + 1).astype(int)
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))


def _count_part(part: np.ndarray, first_row: int, rows: _Targets, cols: _Targets,
                open_cols: np.ndarray, cap: int):
    """Screened rows [first_row, first_row + len(part)): fill their counts and return this part's
    column counts, plus its rows' and its open columns' undecided pairs."""
    span = slice(first_row, first_row + part.shape[0])
    rows.sure[span] = _count(part > rows.hi[span, None], axis=1)
    rows.upto[span] = _count(part >= rows.lo[span, None], axis=1)
    col_sure, col_upto = _count(part > cols.hi, axis=0), _count(part >= cols.lo, axis=0)
    # Only rows and columns with undecided entries are searched: a small slice of the part.
    need = np.flatnonzero(rows.pairwise(cap, span))
    r, c = _band(part[need], rows.lo[first_row + need, None], rows.hi[first_row + need, None])
    row_band = (first_row + need[r], c)
    need = np.flatnonzero((col_upto > col_sure) & open_cols)
    r, c = _band(part[:, need], cols.lo[need], cols.hi[need])
    return col_sure, col_upto, row_band, (first_row + r, need[c])


def _band(scores: np.ndarray, lo, hi) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) positions of the scores in [lo, hi]."""
    flat = np.flatnonzero((scores >= lo) & (scores <= hi))
    return np.divmod(flat, scores.shape[1]) if scores.size else (flat, flat)


def _concat(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return tuple(np.concatenate(p) for p in zip(*pairs, strict=True))
