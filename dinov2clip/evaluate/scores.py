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

The screen's error, for a text row a, an image row b, their low-precision copies a^ and b^,
da = a - a^, db = b - b^, and the screen's output S~:
    a.b - a^.b^ = da.b + a^.db, so |.| <= |da||b| + |a^||db|   (Cauchy-Schwarz)
    float32 accumulation of K products adds <= gamma_2K |a^||b^|  (in any order, FMA or not)
    rounding the output to bfloat16 adds <= u |S~|
The norm terms are maximised over the other side, so each row (and each column) gets one slack
R with |a.b - S~| <= R + u|S~|. As x - u|x| increases with x, "surely ahead" and "surely behind"
are each one threshold on S~ per row.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from dinov2clip.device import METRIC_DTYPE

_U32 = 2.0 ** -24  # float32 unit roundoff
# The rounding of the screen's output, relative. bfloat16 rounds to nearest (2^-8); allowing a
# whole ulp keeps the bound true for a kernel that truncates instead.
_U_OUT = {torch.bfloat16: 2.0 ** -7, torch.float32: 0.0}
_TINY = 1e-30  # flushed subnormal products: far below any score difference that matters
_PAIR_BATCH = 256  # exact dot products per step: the float64 copies stay in cache


def screen_dtype() -> torch.dtype:
    """bfloat16 where the CPU multiplies it natively (AVX512-BF16 or AMX), else float32."""
    native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    native = native or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return torch.bfloat16 if native and torch.backends.mkldnn.is_available() else torch.float32


def exact_ranks(text: torch.Tensor, image: torch.Tensor, caption_to_image: torch.Tensor,
                cap: int, chunk: int = 512, dtype: torch.dtype | None = None,
                threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(t2i (n_captions,), i2t (n_images,)) exact ranks, 0 = first, clipped at cap.

    t2i: rank of each caption's own image among all images. i2t: for each image, the best rank of
    any of its captions among all captions; an image without captions gets cap (never retrieved).
    Equal scores: the lower index ranks first. `chunk` text rows are screened at a time, `dtype`
    is the screen's precision (default: screen_dtype()), `threads` share the counting.
    """
    text = text.detach().to("cpu", METRIC_DTYPE).contiguous()
    image = image.detach().to("cpu", METRIC_DTYPE).contiguous()
    c2i = caption_to_image.long().numpy()
    n_cap, n_img = text.shape[0], image.shape[0]
    own = pair_dots(text, image, np.arange(n_cap), c2i)  # (n_captions,) exact own scores
    best, first = _best_captions(own, c2i, n_img)
    no_caption = first == n_cap

    screen = _Screen.build(text, image, dtype or screen_dtype())
    rows = _Targets(*screen.thresholds(own, screen.row_slack), own, c2i)
    cols = _Targets(*screen.thresholds(best, screen.col_slack), best, first)
    cols.hi[no_caption] = cols.lo[no_caption] = np.inf  # nothing is counted against them
    row_band, col_band = _screen_pass(screen, rows, cols, cap, chunk,
                                      threads or torch.get_num_threads())

    def exact(captions: np.ndarray, images: np.ndarray) -> np.ndarray:
        return pair_dots(text, image, captions, images)

    t2i = rows.ranks(*row_band, cap, exact)
    i2t = cols.ranks(col_band[1], col_band[0], cap, lambda img, caption: exact(caption, img))
    i2t[no_caption] = cap
    return t2i, i2t


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

    def recheck(self, cap: int) -> np.ndarray:
        """Mask of targets whose rank hangs on undecided entries other than their own one.

        The own entry is always undecided, as its exact score sits mid-band, hence the "> 1".
        """
        return (self.sure < cap) & (self.upto - self.sure > 1)

    def ranks(self, owner: np.ndarray, rival: np.ndarray, cap: int, exact) -> np.ndarray:
        """Exact ranks clipped at cap: the sure count, plus the undecided rivals of `owner` that
        beat its target when scored exactly by exact(owner, rival): higher, or equal at a lower
        index. Pairs of targets that need no recheck, and the own entry, are dropped first."""
        keep = self.recheck(cap)[owner] & (rival != self.own[owner])
        owner, rival = owner[keep], rival[keep]
        scores, target = exact(owner, rival), self.score[owner]
        ahead = (scores > target) | ((scores == target) & (rival < self.own[owner]))
        return np.minimum(self.sure + np.bincount(owner[ahead], minlength=len(self.sure)), cap)


@dataclass
class _Screen:
    """The low-precision copies and each row's and column's error slack R (float64)."""

    text: torch.Tensor  # (n_captions, D) in the screen's dtype
    image: torch.Tensor  # (n_images, D)
    row_slack: np.ndarray  # (n_captions,)
    col_slack: np.ndarray  # (n_images,)
    u: float  # relative rounding of the output: |S' - S~| <= u |S~|

    @classmethod
    def build(cls, text: torch.Tensor, image: torch.Tensor, dtype: torch.dtype) -> _Screen:
        if dtype not in _U_OUT:
            raise ValueError(f"screen dtype must be bfloat16 or float32, got {dtype}")
        t_lo, i_lo = text.to(dtype), image.to(dtype)
        t, t_err, t_lo_norm = _norms(text, t_lo)
        i, i_err, i_lo_norm = _norms(image, i_lo)
        k = 2 * text.shape[1] * _U32
        gamma = k / (1 - k)
        row = t_err * i.max(initial=0) + t_lo_norm * i_err.max(initial=0)
        row += gamma * t_lo_norm * i_lo_norm.max(initial=0) + _TINY
        col = t_err.max(initial=0) * i + t_lo_norm.max(initial=0) * i_err
        col += gamma * t_lo_norm.max(initial=0) * i_lo_norm + _TINY
        u_out = _U_OUT[dtype]
        # 1e-6 relative head-room for the float64 arithmetic of the bound itself.
        return cls(t_lo, i_lo, row * (1 + 1e-6), col * (1 + 1e-6), u_out / (1 - u_out) * (1 + 1e-6))

    def thresholds(self, target: np.ndarray, slack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 (hi, lo): S~ > hi means surely above target, S~ < lo surely below.

        Surely above: S~ - u|S~| - R > target, i.e. S~ > f^-1(target + R) with f(x) = x - u|x|.
        Surely below: S~ + u|S~| + R < target. Rounded outwards to float32, so the float32
        comparisons on S~ (exact in float32) only ever leave more entries undecided.
        """
        up, down = target + slack, target - slack
        hi = np.where(up >= 0, up / (1 - self.u), up / (1 + self.u))
        lo = np.where(down >= 0, down / (1 + self.u), down / (1 - self.u))
        return _round_up(hi), _round_down(lo)

    def block(self, start: int, stop: int, columns: np.ndarray | None = None,
              out: torch.Tensor | None = None) -> np.ndarray:
        """float32 screened scores of text rows [start, stop) against all (or some) images."""
        image = self.image if columns is None else self.image[torch.from_numpy(columns)]
        scores = self.text[start:stop] @ image.T
        if out is None:
            return scores.float().numpy()
        return out[:stop - start].copy_(scores).numpy()


def _norms(x: torch.Tensor, x_lo: torch.Tensor) -> tuple[np.ndarray, ...]:
    """Row norms of x, of x - x_lo (the rounding error) and of x_lo, as float64 upper bounds.

    x - x_lo is exact in float32 (x_lo is x rounded to fewer bits). A float32 norm is off by
    at most ~D * 2^-24 relative (3e-5 at D = 512); 1e-3 of head-room covers D up to ~16k.
    """
    lo = x_lo.float()
    norm = lambda v: torch.linalg.vector_norm(v, dim=1).double().numpy() * (1 + 1e-3)  # noqa: E731
    return norm(x), norm(x - lo), norm(lo)


def _round_up(x: np.ndarray) -> np.ndarray:
    y = x.astype(np.float32)
    return np.where(y < x, np.nextafter(y, np.float32(np.inf)), y)


def _round_down(x: np.ndarray) -> np.ndarray:
    y = x.astype(np.float32)
    return np.where(y > x, np.nextafter(y, np.float32(-np.inf)), y)


def _count(hits: np.ndarray, axis: int) -> np.ndarray:
    """Number of True along axis; a uint8 view summed in uint16 when that cannot overflow."""
    dtype = np.uint16 if hits.shape[axis] < 65536 else np.int64
    return hits.view(np.uint8).sum(axis=axis, dtype=dtype).astype(np.int64)


def _screen_pass(screen: _Screen, rows: _Targets, cols: _Targets, cap: int, chunk: int,
                 threads: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Count both directions against the screen, filling rows' and cols' sure and upto.

    Returns two sets of undecided (caption, image) pairs: the rows' that can still change a
    rank, and every column's (which columns need theirs is only known at the end).
    """
    n_cap, n_img = screen.text.shape[0], screen.image.shape[0]
    rows.sure, rows.upto = np.zeros(n_cap, np.int64), np.zeros(n_cap, np.int64)
    cols.sure, cols.upto = np.zeros(n_img, np.int64), np.zeros(n_img, np.int64)
    buffer = torch.empty((min(chunk, n_cap), n_img), dtype=torch.float32)
    row_pairs, col_pairs = [], []
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for start in range(0, n_cap, chunk):
            stop = min(start + chunk, n_cap)
            block = screen.block(start, stop, out=buffer)
            work = lambda p: _count_part(block[p[0] - start:p[1] - start], p[0], rows, cols, cap)  # noqa: E731, B023
            for col_sure, col_upto, row_band, col_band in pool.map(work, _split(start, stop,
                                                                                threads)):
                cols.sure += col_sure
                cols.upto += col_upto
                row_pairs.append(row_band)
                col_pairs.append(col_band)
    return _concat(row_pairs), _concat(col_pairs)


def _split(start: int, stop: int, parts: int) -> list[tuple[int, int]]:
    bounds = np.linspace(start, stop, max(1, min(parts, stop - start)) + 1).astype(int)
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))


def _count_part(part: np.ndarray, first_row: int, rows: _Targets, cols: _Targets, cap: int):
    """Screened rows [first_row, first_row + len(part)): fill their counts and return this part's
    column counts, plus its rows' and columns' undecided pairs."""
    span = slice(first_row, first_row + part.shape[0])
    rows.sure[span] = _count(part > rows.hi[span, None], axis=1)
    rows.upto[span] = _count(part >= rows.lo[span, None], axis=1)
    col_sure, col_upto = _count(part > cols.hi, axis=0), _count(part >= cols.lo, axis=0)
    # Only the rows and columns with undecided entries are searched: a small slice of the part.
    need = np.flatnonzero(rows.recheck(cap)[span])
    r, c = _band(part[need], rows.lo[first_row + need, None], rows.hi[first_row + need, None])
    row_band = (first_row + need[r], c)
    need = np.flatnonzero(col_upto > col_sure)
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
