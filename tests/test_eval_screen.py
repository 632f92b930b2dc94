"""The screened exact-rank path on float data: its error bound holds, and its ranks are exact.

test_metrics_oracle.py covers ties on data where every score is exact. Here the scores are real
floats, so the low-precision screen really is off, and the ranks are checked against a float64
reference that sorts every row and column.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dinov2clip.evaluate import scores
from dinov2clip.evaluate.compute import ensemble
from dinov2clip.evaluate.scores import exact_ranks
from dinov2clip.evaluate.screen import Screen, ensemble_screen, screen_dtype

SCREENS = [torch.bfloat16, torch.float32]
CAP = 10


def reference_ranks(text: torch.Tensor, image: torch.Tensor, c2i: torch.Tensor, cap: int):
    """float64 scores, every list sorted by (score desc, index asc), ranks clipped at cap.

    numpy's own einsum loop, not BLAS: it sums every entry in the same order, so duplicate
    vectors score exactly alike (a BLAS product may not, at the edges of its tiles).
    """
    s = np.einsum("id,jd->ij", text.double().numpy(), image.double().numpy())
    c2i = c2i.numpy()
    t2i = np.array([np.lexsort((np.arange(s.shape[1]), -row)).tolist().index(c2i[c])
                    for c, row in enumerate(s)])
    i2t = np.full(s.shape[1], cap)
    for j in range(s.shape[1]):
        order = np.lexsort((np.arange(s.shape[0]), -s[:, j]))
        mine = np.flatnonzero(c2i[order] == j)
        if len(mine):
            i2t[j] = mine[0]
    return np.minimum(t2i, cap), np.minimum(i2t, cap)


def clip_like(n_images: int, per_image: int, dim: int, noise: float, seed: int):
    """Captions near their image, as in CLIP's space, unit norm, float32."""
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n_images, dim, generator=g), dim=-1)
    c2i = torch.arange(n_images).repeat_interleave(per_image)
    text = F.normalize(image[c2i] + noise * F.normalize(torch.randn(len(c2i), dim, generator=g),
                                                        dim=-1), dim=-1)
    return text, image, c2i


@pytest.mark.parametrize("dtype", SCREENS, ids=["bf16", "fp32"])
@pytest.mark.parametrize("dim", [24, 512, 1024])
def test_screen_error_is_within_its_bound(dtype, dim):
    g = torch.Generator().manual_seed(dim)
    # Not unit norm on purpose: the bound must hold for any input, and scale with the norms.
    text = torch.randn(300, dim, generator=g) * torch.rand(300, 1, generator=g) * 3
    image = torch.randn(200, dim, generator=g) * torch.rand(200, 1, generator=g) * 3
    screen = Screen.build(text, image, dtype)
    approx = screen.block(0, 300, torch.empty(300, 200)).astype(np.float64)
    err = np.abs(text.double().numpy() @ image.double().numpy().T - approx)
    allowed = screen.u * np.abs(approx)
    assert (err <= screen.row_slack[:, None] + allowed).all()
    assert (err <= screen.col_slack[None, :] + allowed).all()
    # Not vacuous either: a small fraction of |a||b|. bf16 keeps 8 bits (rounding ~2 x 2^-9 of
    # it); float32 only pays for summing `dim` products (~2 dim 2^-24).
    scale = (text.norm(dim=1)[:, None] * image.norm(dim=1)[None, :]).double().numpy()
    tight = 0.01 if dtype == torch.bfloat16 else 3 * dim * 2.0 ** -24
    assert (screen.row_slack[:, None] <= tight * scale.max(axis=1, keepdims=True)).all()
    if dtype == torch.bfloat16:  # and the screen really is off
        assert (err / scale).max() > 1e-4


def test_ensemble_screen_by_linearity_is_within_its_bound():
    g = torch.Generator().manual_seed(5)
    text = F.normalize(torch.randn(400, 64, generator=g), dim=-1)
    clip = F.normalize(torch.randn(150, 64, generator=g), dim=-1)
    projected = F.normalize(clip + torch.randn(150, 64, generator=g), dim=-1)
    mixed = ensemble(clip, projected)
    screens = [Screen.build(text, x, torch.float32, keep=True) for x in (clip, projected)]
    screen = ensemble_screen(*screens, text, clip, projected, mixed)
    approx = screen.block(0, 400, torch.empty(400, 150)).astype(np.float64)
    err = np.abs(text.double().numpy() @ mixed.double().numpy().T - approx)
    assert err.max() > 0  # the sum really differs from the product with e
    assert (err <= screen.row_slack[:, None]).all() and (err <= screen.col_slack[None, :]).all()
    assert screen.row_slack.max() < 1e-4  # and the band stays thin


def test_ensemble_screen_only_where_it_pays():
    text, clip = F.normalize(torch.randn(20, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    projected = F.normalize(torch.randn(6, 8), dim=-1)
    kept = [Screen.build(text, x, torch.float32, keep=True) for x in (clip, projected)]
    args = (text, clip, projected, ensemble(clip, projected))
    assert ensemble_screen(*kept, *args) is not None
    bf16 = [Screen.build(text, x, torch.bfloat16) for x in (clip, projected)]
    assert ensemble_screen(*bf16, *args) is None  # bf16 screens are neither kept nor exact enough
    opposite = projected.clone()
    opposite[2] = -clip[2]  # c + p cancels: 1/|c + p| would widen every band
    kept[1] = Screen.build(text, opposite, torch.float32, keep=True)
    assert ensemble_screen(*kept, text, clip, opposite, ensemble(clip, opposite)) is None


# Re-check every undecided entry pair by pair, or every target whole (dense float64 rows).
WIDE = {"pairs": 10 ** 9, "whole": -1}


@pytest.mark.parametrize("recheck", WIDE)
@pytest.mark.parametrize("dtype", SCREENS, ids=["bf16", "fp32"])
@pytest.mark.parametrize(("noise", "chunk"), [(3.0, 64), (5.0, 1000)])
def test_ranks_are_exact_on_float_data(dtype, noise, chunk, recheck, monkeypatch):
    monkeypatch.setattr(scores, "_WIDE", WIDE[recheck])
    text, image, c2i = clip_like(300, 5, 64, noise, seed=int(noise * 10))
    image[[40, 77, 299]] = image[12].clone()  # exact duplicates of a float vector: exact ties
    t2i, i2t = exact_ranks(text, image, c2i, CAP, chunk=chunk, dtype=dtype, threads=2)
    want_t2i, want_i2t = reference_ranks(text, image, c2i, CAP)
    np.testing.assert_array_equal(t2i, want_t2i)
    np.testing.assert_array_equal(i2t, want_i2t)
    assert 0 < (t2i == 0).mean() < 1 and 0 < (i2t < CAP).mean() < 1  # not degenerate


def test_near_duplicates_below_bf16_resolution_are_ranked_exactly():
    # Images 1e-4 apart: far below bf16's ~4e-3 resolution, so the screen cannot tell them
    # apart and every decision falls to the exact re-check.
    g = torch.Generator().manual_seed(11)
    base = F.normalize(torch.randn(1, 32, generator=g), dim=-1)
    image = F.normalize(base + 1e-4 * torch.randn(40, 32, generator=g), dim=-1)
    image[7] = image[3]  # and one exact tie
    c2i = torch.arange(40).repeat_interleave(2)
    text = F.normalize(image[c2i] + 1e-4 * torch.randn(80, 32, generator=g), dim=-1)
    for dtype in SCREENS:
        t2i, i2t = exact_ranks(text, image, c2i, CAP, chunk=16, dtype=dtype)
        want_t2i, want_i2t = reference_ranks(text, image, c2i, CAP)
        np.testing.assert_array_equal(t2i, want_t2i)
        np.testing.assert_array_equal(i2t, want_i2t)
    assert (want_t2i[14:16] >= 1).all()  # image 7's captions: image 3 ties and ranks first


def test_screen_dtype_is_one_the_bound_knows():
    assert screen_dtype() in SCREENS


def test_a_collapsed_projector_is_ranked_exactly_and_fast():
    # Every image the same vector: nothing can be screened out, every target is re-checked
    # whole, and the lower index wins every tie, so caption c finds its image at rank c2i[c].
    text, image, c2i = clip_like(400, 3, 32, 1.0, seed=8)
    image[:] = image[0].clone()
    for dtype in SCREENS:
        t2i, i2t = exact_ranks(text, image, c2i, CAP, dtype=dtype)
        np.testing.assert_array_equal(t2i, np.minimum(c2i.numpy(), CAP))
        want_t2i, want_i2t = reference_ranks(text, image, c2i, CAP)
        np.testing.assert_array_equal(i2t, want_i2t)


def test_a_lowered_float32_matmul_precision_does_not_reach_the_float32_screen(monkeypatch):
    # "medium" lets a CPU float32 product use bf16 arithmetic, outside the float32 bound (how
    # far depends on the CPU), so the screen's products run at "highest" and the user's
    # setting comes back afterwards.
    seen, mm = [], torch.mm
    monkeypatch.setattr(torch, "mm", lambda *a, **k: seen.append(
        torch.get_float32_matmul_precision()) or mm(*a, **k))
    text, image, c2i = clip_like(300, 5, 64, 3.0, seed=2)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        Screen.build(text, image, torch.float32, keep=True)
        t2i, i2t = exact_ranks(text, image, c2i, CAP, dtype=torch.float32)
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)
    assert len(seen) >= 2 and set(seen) == {"highest"}
    want_t2i, want_i2t = reference_ranks(text, image, c2i, CAP)
    np.testing.assert_array_equal(t2i, want_t2i)
    np.testing.assert_array_equal(i2t, want_i2t)
