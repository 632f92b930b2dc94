"""loss.png and val.png from a hand-written metrics.jsonl: what each figure draws and says."""

import json

import pytest

from dinov2clip.config import LOSS_NAMES, write_resolved
from dinov2clip.store import RunDir
from dinov2clip.train.losses import LABELS, describe
from dinov2clip.train.plots import draw_curves, loss_figure, val_figure
from tests.helpers import load

EPOCHS = [{"kind": "epoch", "epoch": e, "step": 10 * e, "val_loss": 1.0 / e, "val_cosine": c,
           "val_pct_clip": p, "evalset_pct_clip": p - 5, "best_epoch": 2}
          for e, c, p in ((1, 0.41, 52.0), (2, 0.63, 71.0), (3, 0.62, 70.5))]
STEPS = [{"kind": "step", "step": s, "loss": 2.0 / s} for s in range(1, 31, 3)]


def test_every_loss_has_a_name_and_weights_are_said():
    assert set(LABELS) == set(LOSS_NAMES)
    assert describe({"unit_mse": 1.0}) == "unit-norm MSE"
    assert describe({"unit_mse": 1.0, "text_infonce": 0.2}) == "unit-norm MSE + 0.2 x text InfoNCE"
    assert describe({"cos_smoothl1": 0.5}) == "0.5 x (0.9 cosine + 0.1 smooth-L1)"


def test_loss_figure_names_the_loss():
    ax = loss_figure(STEPS, EPOCHS, "run7", "unit-norm MSE + 0.2 x text InfoNCE").axes[0]
    assert ax.get_title() == "run7: loss = unit-norm MSE + 0.2 x text InfoNCE"
    assert [list(line.get_ydata()) for line in ax.lines][1] == [1.0, 0.5, pytest.approx(1 / 3)]


def test_val_figure_keeps_percent_and_cosine_on_their_own_axes():
    fig = val_figure(EPOCHS, "run7")
    pct, cos = fig.axes  # the left axis and its twin
    assert pct.get_ylabel() == "% of CLIP" and cos.get_ylabel() == "cosine to CLIP"
    assert pct.get_shared_x_axes().joined(pct, cos)
    left = {line.get_label(): list(line.get_ydata()) for line in pct.lines}
    assert left["val % of CLIP (R@1, both ways)"] == [52.0, 71.0, 70.5]
    assert left["eval set % of CLIP (R@1, both ways)"] == [47.0, 66.0, 65.5]
    [cosine] = cos.lines
    assert list(cosine.get_ydata()) == [0.41, 0.63, 0.62]  # as measured, not scaled x100
    assert cos.get_ylim()[1] < 1.0  # its own scale: the cosine's range, not 0-100
    texts = {t.get_text() for t in fig.legends[0].get_texts()}
    assert texts == {"val % of CLIP (R@1, both ways)", "eval set % of CLIP (R@1, both ways)",
                     "best epoch 2", "val cosine to CLIP"}


def test_draw_curves_reads_the_loss_from_the_runs_config(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    write_resolved(load(tmp_path / "art", "train.loss={cosine=1.0, retrieval_kd=0.5}"), run)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in STEPS + EPOCHS))
    titles = []
    real = loss_figure

    def spy(*args):
        fig = real(*args)
        titles.append(fig.axes[0].get_title())
        return fig

    monkeypatch.setattr("dinov2clip.train.plots.loss_figure", spy)
    draw_curves(RunDir(run))
    assert titles == ["r: loss = cosine distance + 0.5 x retrieval KD"]
    for name in ("loss.png", "val.png"):
        assert (run / name).read_bytes()[:4] == b"\x89PNG"
