"""Low-precision screens of text @ image^T, each with a proven bound on its error.

A screen gives every score S~ quickly, and one slack R per row (and per column) such that the
exact score S = a.b of the float32 inputs satisfies |S - S~| <= R + u|S~|. scores.py counts ranks
against it and re-checks exactly only what the bound leaves undecided.

A product screen (Screen), for a text row a, an image row b, their low-precision copies a^ and
b^, da = a - a^ and db = b - b^:
    a.b - a^.b^ = da.b + a^.db, so |.| <= |da||b| + |a^||db|   (Cauchy-Schwarz)
    float32 accumulation of K products adds <= gamma_2K |a^||b^|  (in any order, FMA or not)
    rounding the output to bfloat16 adds <= u |S~|
The norm terms are maximised over the other side, so each row and each column gets one slack.

The ensemble image e = normalize(c + p) is, up to e's own float32 rounding, w (c + p) with
w = 1/|c + p|, so its scores are w (S_c + S_p): where the CLIP and projected screens are float32
and kept, the ensemble's screen is their weighted sum, with no third product
(ensemble_screen). Its slack adds the two screens' slacks times w, |a| |e - w (c + p)|, and the
float32 rounding of the sum and the product.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

_U32 = 2.0 ** -24  # float32 unit roundoff
# The rounding of the screen's output, relative. bfloat16 rounds to nearest (2^-8); allowing a
# whole ulp keeps the bound true for a kernel that truncates instead.
_U_OUT = {torch.bfloat16: 2.0 ** -7, torch.float32: 0.0}
_TINY = 1e-30  # flushed subnormal products: far below any score difference that matters
_HEADROOM = 1 + 1e-6  # for the float64 arithmetic of the bound itself
_MIN_ENSEMBLE_NORM = 0.1  # below it, an image's 1/|c + p| would widen every row's band


def screen_dtype() -> torch.dtype:
    """bfloat16 where the CPU multiplies it natively (AVX512-BF16 or AMX), else float32."""
    native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    native = native or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return torch.bfloat16 if native and torch.backends.mkldnn.is_available() else torch.float32


@dataclass
class _Bounded:
    row_slack: np.ndarray  # (n_captions,) float64
    col_slack: np.ndarray  # (n_images,) float64
    u: float  # relative rounding of the output: |S' - S~| <= u |S~|

    def thresholds(self, target: np.ndarray, slack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 (hi, lo): S~ > hi means surely above target, S~ < lo surely below.

        Surely above: S~ - u|S~| - R > target, i.e. S~ > f^-1(target + R) with f(x) = x - u|x|,
        which increases. Surely below: S~ + u|S~| + R < target. Rounded outwards to float32,
        so the comparisons on S~ (exact in float32) only ever leave more entries undecided.
        """
        up, down = target + slack, target - slack
        hi = np.where(up >= 0, up / (1 - self.u), up / (1 + self.u))
        lo = np.where(down >= 0, down / (1 + self.u), down / (1 - self.u))
        return _round_up(hi), _round_down(lo)


@dataclass
class Screen(_Bounded):
    """text @ image^T in a low precision; `keep` (float32 only) computes and holds it whole,
    for an EnsembleScreen."""

    text: torch.Tensor  # (n_captions, D) in the screen's dtype
    image: torch.Tensor  # (n_images, D)
    kept: torch.Tensor | None = None  # (n_captions, n_images) float32, the whole product

    @classmethod
    def build(cls, text: torch.Tensor, image: torch.Tensor, dtype: torch.dtype,
              keep: bool = False, out: torch.Tensor | None = None) -> Screen:
        """text and image: float32 (n_captions, D) and (n_images, D). A kept product goes into
        `out` when given (a reused buffer spares fresh pages: ~0.1 s at COCO size)."""
        if dtype not in _U_OUT:
            raise ValueError(f"screen dtype must be bfloat16 or float32, got {dtype}")
        t_lo, i_lo = text.to(dtype), image.to(dtype)
        t, t_err, t_lo_norm = _norms(text, t_lo)
        i, i_err, i_lo_norm = _norms(image, i_lo)
        k = 2 * text.shape[1] * _U32
        gamma = k / (1 - k)
        row = t_err * _max(i) + t_lo_norm * _max(i_err) + gamma * t_lo_norm * _max(i_lo_norm)
        col = _max(t_err) * i + _max(t_lo_norm) * i_err + gamma * _max(t_lo_norm) * i_lo_norm
        u_out = _U_OUT[dtype]
        kept = None
        if keep and dtype == torch.float32:  # one whole product: faster than row blocks
            with full_float32():
                kept = torch.mm(t_lo, i_lo.T, out=out)
        return cls((row + _TINY) * _HEADROOM, (col + _TINY) * _HEADROOM,
                   u_out / (1 - u_out) * _HEADROOM, t_lo, i_lo, kept)

    @property
    def shape(self) -> tuple[int, int]:
        return self.text.shape[0], self.image.shape[0]

    def block(self, start: int, stop: int, out: torch.Tensor) -> np.ndarray:
        """float32 screened scores of text rows [start, stop), in `out` (or the kept matrix)."""
        if self.kept is not None:
            return self.kept[start:stop].numpy()
        target = out[:stop - start]
        if self.text.dtype == torch.float32:
            with full_float32():
                torch.mm(self.text[start:stop], self.image.T, out=target)
        else:
            target.copy_(self.text[start:stop] @ self.image.T)
        return target.numpy()


@dataclass
class EnsembleScreen(_Bounded):
    """Scores of normalize(clip + projected) as w (S~_clip + S~_proj), from two kept float32
    screens: no third product."""

    clip: Screen
    projected: Screen
    weight: torch.Tensor  # (n_images,) float32, 1 / |c + p|

    @property
    def shape(self) -> tuple[int, int]:
        return self.clip.shape

    def block(self, start: int, stop: int, out: torch.Tensor) -> np.ndarray:
        target = out[:stop - start]
        torch.add(self.clip.kept[start:stop], self.projected.kept[start:stop], out=target)
        return target.mul_(self.weight).numpy()


def ensemble_screen(clip: Screen, projected: Screen, text: torch.Tensor, clip_image: torch.Tensor,
                    projected_image: torch.Tensor, ensemble_image: torch.Tensor,
                    ) -> EnsembleScreen | None:
    """The ensemble's screen from two kept float32 screens, or None where it does not apply.

    All embeddings float32; ensemble_image is the normalize(c + p) that the re-checks score.
    None when either screen is not kept in float32, or where c + p nearly cancels for some image
    (|c + p| < 0.1): its weight would blow up every row's slack, and a product screen is cheaper.
    """
    if clip.kept is None or projected.kept is None or clip.u or projected.u:
        return None
    both = clip_image + projected_image
    norm = torch.linalg.vector_norm(both, dim=1)
    if len(norm) and float(norm.min()) < _MIN_ENSEMBLE_NORM:
        return None
    weight = 1.0 / norm
    w = weight.double().numpy()
    # e differs from w (c + p) by its own float32 rounding: |a.e - w a.(c + p)| <= |a| d.
    d = torch.linalg.vector_norm(ensemble_image.double() - weight.double()[:, None]
                                 * both.double(), dim=1).numpy() * (1 + 1e-3)
    t = torch.linalg.vector_norm(text, dim=1).double().numpy() * (1 + 1e-3)
    c_plus_p = (torch.linalg.vector_norm(clip_image, dim=1)
                + torch.linalg.vector_norm(projected_image, dim=1)).double().numpy() * (1 + 1e-3)
    rounding = 2.0001 * _U32  # one float32 sum, then one float32 product
    row_both = clip.row_slack + projected.row_slack
    col_both = clip.col_slack + projected.col_slack
    row = _max(w) * (row_both * (1 + rounding) + rounding * t * _max(c_plus_p)) + t * _max(d)
    col = w * (col_both * (1 + rounding) + rounding * _max(t) * c_plus_p) + _max(t) * d
    return EnsembleScreen((row + _TINY) * _HEADROOM, (col + _TINY) * _HEADROOM, 0.0, clip,
                          projected, weight)


@contextlib.contextmanager
def full_float32():
    """Products at full float32 inside the block. torch.set_float32_matmul_precision("medium"),
    set by a user or a library, lets a CPU product use bf16 arithmetic (how much that loses
    depends on the CPU and oneDNN), which the float32 bound does not cover."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def _max(x: np.ndarray) -> float:
    return float(x.max(initial=0.0))


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
