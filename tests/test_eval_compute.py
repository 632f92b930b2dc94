"""SetEval: the eval's three rows, each the one ranking function on the right embeddings."""

import pytest
import torch
import torch.nn.functional as F

from dinov2clip.config import ConfigError
from dinov2clip.evaluate.compute import SetEval, ensemble
from dinov2clip.retrieval import recall_at_k

KS = [1, 5, 10]


def unit(*shape, seed):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


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
    # --all-epochs calls rows() once per checkpoint on one SetEval.
    text, clip, projected, c2i = random_set
    other = F.normalize(projected + unit(*projected.shape, seed=9), dim=-1)
    ev = SetEval(text, clip, c2i, KS)
    first, second = ev.rows(projected), ev.rows(other)
    assert first != second
    assert first == SetEval(text, clip, c2i, KS).rows(projected)
    assert second == SetEval(text, clip, c2i, KS).rows(other)
    assert ev.rows(projected) == first


def test_rows_are_the_ranking_function_on_each_embedding(random_set):
    text, clip, projected, c2i = random_set
    rows = SetEval(text, clip, c2i, KS).rows(projected)
    assert rows["clip"] == recall_at_k(text, clip, c2i, KS)
    assert rows["projected"] == recall_at_k(text, projected, c2i, KS)
    # The ensemble: normalize(CLIP + projected) of the float32, re-normalised embeddings.
    mixed = F.normalize(F.normalize(clip.float(), dim=-1) + projected, dim=-1)
    torch.testing.assert_close(ensemble(clip, projected), mixed, rtol=0, atol=1e-7)
    assert rows["ensemble"] == recall_at_k(text, ensemble(clip, projected), c2i, KS)
    assert rows["projected_pct"]["t2i_R@1"] == pytest.approx(
        100 * rows["projected"]["t2i_R@1"] / rows["clip"]["t2i_R@1"])
    # The numbers are not degenerate: CLIP beats the noisier projection, nothing is perfect.
    assert 0 < rows["projected"]["t2i_R@5"] < rows["clip"]["t2i_R@5"] < 100


def test_set_eval_reuses_clip_across_projections(random_set):
    text, clip, projected, c2i = random_set
    ev = SetEval(text, clip, c2i, KS)
    first, second = ev.rows(projected), ev.rows(clip.float())
    assert first["clip"] == second["clip"]
    # Projecting onto CLIP itself: 100% of CLIP, and the ensemble is CLIP again.
    assert second["projected"] == second["clip"] == second["ensemble"]
    assert all(v == 100.0 for v in second["projected_pct"].values())


def test_non_finite_and_misshapen_embeddings_are_errors(random_set):
    text, clip, projected, c2i = random_set
    bad = projected.clone()
    bad[3, 0] = float("nan")
    with pytest.raises(ConfigError, match="NaN or inf"):
        SetEval(text, clip, c2i, KS).rows(bad)
    bad[3, 0] = float("-inf")
    with pytest.raises(ConfigError, match="projected embeddings contain NaN or inf"):
        SetEval(text, clip, c2i, KS).rows(bad)
    with pytest.raises(ConfigError, match="projected embeddings are"):
        SetEval(text, clip, c2i, KS).rows(projected[:-1])
