"""FAISS against torch.topk, and the two eval engines against each other and the reference."""

import pytest
import torch
import torch.nn.functional as F

from dinov2clip.config import ConfigError
from dinov2clip.evaluate.compute import SetEval, ensemble, resolve_engine
from dinov2clip.evaluate.metrics import retrieval_recalls
from dinov2clip.evaluate.retrieval import faiss_topk, tie_safe_topk

KS = [1, 5, 10]


def unit(*shape, seed):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_faiss_topk_equals_torch_topk():
    queries, keys = unit(300, 32, seed=0), unit(500, 32, seed=1)
    scores = queries @ keys.T
    want_scores, want_ids = scores.topk(10, dim=1)
    got_scores, got_ids = faiss_topk(queries, keys, 10, use_gpu=False)
    assert torch.equal(got_ids, want_ids)
    torch.testing.assert_close(got_scores, want_scores, atol=1e-6, rtol=0)
    assert torch.equal(tie_safe_topk(queries, keys, 10, use_gpu=False), want_ids)


def test_tie_safe_topk_is_the_stable_order_on_ties():
    g = torch.Generator().manual_seed(3)
    queries = torch.randint(-1, 2, (200, 3), generator=g).float()
    keys = torch.randint(-1, 2, (120, 3), generator=g).float()  # 27 distinct keys: ties galore
    scores = queries @ keys.T
    order = torch.sort(-scores, dim=1, stable=True).indices[:, :10]  # (score desc, index asc)
    got = tie_safe_topk(queries, keys, 10, use_gpu=False)
    assert torch.equal(got, order)
    # The same scores torch.topk finds, only in a defined order.
    assert torch.equal(scores.gather(1, got), scores.topk(10, dim=1).values)


def test_tie_safe_topk_looks_past_a_long_run_of_equal_scores():
    keys = torch.ones(50, 4)  # every key ties: the answer is keys 0..4, whatever FAISS returns
    got = tie_safe_topk(torch.ones(7, 4), keys, 5, use_gpu=False)
    assert got.tolist() == [[0, 1, 2, 3, 4]] * 7


def test_tie_safe_topk_sorts_exactly_past_the_fetch_limit(monkeypatch):
    from dinov2clip.evaluate import retrieval

    monkeypatch.setattr(retrieval, "_MAX_FETCH", 8)  # 50 equal keys: more than FAISS may return
    keys = torch.ones(50, 4)
    keys[30] = 2.0  # one better key, far down the index order
    got = tie_safe_topk(torch.ones(3, 4), keys, 5, use_gpu=False)
    assert got.tolist() == [[30, 0, 1, 2, 3]] * 3


@pytest.fixture(scope="module")
def random_set():
    n_images = 120
    counts = torch.randint(1, 6, (n_images,), generator=torch.Generator().manual_seed(4))
    c2i = torch.repeat_interleave(torch.arange(n_images), counts)
    clip = unit(n_images, 24, seed=5)
    text = F.normalize(clip[c2i] + 2.0 * unit(len(c2i), 24, seed=6), dim=-1)
    projected = F.normalize(clip + 1.0 * unit(n_images, 24, seed=7), dim=-1)
    return text.half(), clip.half(), projected, c2i


def test_one_set_eval_serves_many_projections_as_fresh_ones_do(random_set):
    # --all-epochs calls rows() once per checkpoint; float32 screens reuse one score buffer.
    text, clip, projected, c2i = random_set
    other = F.normalize(projected + unit(*projected.shape, seed=9), dim=-1)
    for screen in (torch.float32, torch.bfloat16):
        ev = SetEval(text, clip, c2i, KS, engine="exact", screen=screen)
        first, second = ev.rows(projected), ev.rows(other)
        assert first != second
        assert first == SetEval(text, clip, c2i, KS, engine="exact", screen=screen).rows(projected)
        assert second == SetEval(text, clip, c2i, KS, engine="exact", screen=screen).rows(other)
        assert ev.rows(projected) == first


@pytest.mark.parametrize(("screen", "keep_bytes"), [
    (torch.bfloat16, None), (torch.float32, None), (torch.float32, 0)],
    ids=["bf16", "fp32-kept", "fp32-blocks"])
def test_exact_and_faiss_engines_agree_with_the_reference(random_set, screen, keep_bytes,
                                                          monkeypatch):
    from dinov2clip.evaluate import compute

    if keep_bytes is not None:  # a set too large to keep: float32 screens block by block
        monkeypatch.setattr(compute, "_KEEP_BYTES", keep_bytes)
    text, clip, projected, c2i = random_set
    ev = SetEval(text, clip, c2i, KS, engine="exact", screen=screen)
    assert (ev._clip_screen is not None) == (screen == torch.float32 and keep_bytes is None)
    exact = ev.rows(projected)
    via_faiss = SetEval(text, clip, c2i, KS, engine="faiss", use_gpu=False).rows(projected)
    assert exact == via_faiss
    # The reference path on the same inputs: upcast, then L2-normalised again in float32.
    text, clip, projected = (F.normalize(x.float(), dim=-1) for x in (text, clip, projected))
    assert exact["clip"] == retrieval_recalls(clip, text, c2i, KS)
    assert exact["projected"] == retrieval_recalls(projected, text, c2i, KS)
    assert exact["ensemble"] == retrieval_recalls(ensemble(clip, projected), text, c2i, KS)
    assert exact["projected_pct"]["t2i_R@1"] == pytest.approx(
        100 * exact["projected"]["t2i_R@1"] / exact["clip"]["t2i_R@1"])
    # The numbers are not degenerate: CLIP beats the noisier projection, nothing is perfect.
    assert 0 < exact["projected"]["t2i_R@5"] < exact["clip"]["t2i_R@5"] < 100


def test_set_eval_reuses_clip_across_projections(random_set):
    text, clip, projected, c2i = random_set
    ev = SetEval(text, clip, c2i, KS)
    first, second = ev.rows(projected), ev.rows(clip.float())
    assert first["clip"] == second["clip"]
    # Projecting onto CLIP itself: 100% of CLIP, and the ensemble is CLIP again.
    assert second["projected"] == second["clip"] == second["ensemble"]
    assert all(v == 100.0 for v in second["projected_pct"].values())


def test_bad_engine_and_non_finite_embeddings_are_errors(random_set):
    text, clip, projected, c2i = random_set
    with pytest.raises(ConfigError, match="eval.search: unknown 'annoy'"):
        resolve_engine("annoy", use_gpu=False)
    assert resolve_engine("auto", use_gpu=False) == "exact"
    bad = projected.clone()
    bad[3, 0] = float("nan")
    with pytest.raises(ConfigError, match="NaN or inf"):
        SetEval(text, clip, c2i, KS).rows(bad)
