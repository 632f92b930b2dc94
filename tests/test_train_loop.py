"""The training loop in process: validation, model selection, EMA, the eval-set check, averaging,
NaN stops and resume refusals."""

import json

import pytest
import torch
from safetensors.torch import load_file

from dinov2clip.config import ConfigError
from dinov2clip.models.projector import Projector
from dinov2clip.train import average
from dinov2clip.train.loop import train
from tests.helpers import load, make_embeddings

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    art = tmp_path_factory.mktemp("train") / "artifacts"
    make_embeddings(art, n=600)
    make_embeddings(art, n=80, dataset="syn-val", captions=5, seed=9)
    return art


@pytest.fixture(scope="module")
def run(art):
    """One run: EMA on, the eval set logged, the best epoch chosen by val loss."""
    cfg = load(art, "train.run=main", "train.epochs=4", "train.ema_decay=0.5",
               'train.val_evalset="syn-val"', 'train.select_metric="val_loss"',
               'train.loss={unit_mse=1.0, text_infonce=0.1}', "train.projector.standardize=true")
    return cfg, train(cfg)


def epochs_of(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "epoch"]


def test_every_epoch_logs_validation_and_eval_set_retrieval(run):
    _, run_dir = run
    epochs = epochs_of(run_dir)
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4]
    for r in epochs:
        for key in ("val_loss", "val_cosine", "val_t2i_R@1", "val_i2t_R@5", "val_clip_t2i_R@1",
                    "val_pct_clip", "evalset_t2i_R@1", "evalset_clip_i2t_R@5",
                    "evalset_pct_clip", "train_samples_per_s"):
            assert key in r, key
        pct = 50 * (r["val_t2i_R@1"] / r["val_clip_t2i_R@1"] +
                    r["val_i2t_R@1"] / r["val_clip_i2t_R@1"])
        assert r["val_pct_clip"] == pytest.approx(pct)
    assert epochs[-1]["val_cosine"] > epochs[0]["val_cosine"] + 0.1
    assert epochs[0]["evalset_clip_t2i_R@1"] == epochs[-1]["evalset_clip_t2i_R@1"]  # fixed ref
    assert (run_dir / "val.png").stat().st_size > 1000 and (run_dir / "loss.png").exists()


def test_model_is_the_best_epoch_by_the_metric_and_saves_the_ema(run):
    _, run_dir = run
    epochs = epochs_of(run_dir)
    best = min(epochs, key=lambda r: r["val_loss"])["epoch"]
    assert epochs[-1]["best_epoch"] == best
    saved = load_file(str(run_dir / "model.safetensors"))
    ckpt = load_file(str(run_dir / "checkpoints" / f"epoch_{best:03d}.safetensors"))
    assert saved.keys() == ckpt.keys() and all(torch.equal(saved[k], ckpt[k]) for k in saved)
    # checkpoints hold the EMA, not the live weights that train_state.pt carries for resume
    state = torch.load(run_dir / "train_state.pt", weights_only=False)
    last = load_file(str(run_dir / "checkpoints" / "epoch_004.safetensors"))
    assert all(torch.equal(state["ema"][k], last[k]) for k in last)
    assert not torch.equal(state["model"]["net.0.weight"], last["net.0.weight"])
    assert saved["input_norm.std"].min() > 0 and not torch.all(saved["input_norm.mean"] == 0)


def test_average_of_the_last_epochs_is_a_loadable_run(run):
    cfg, run_dir = run
    out = average(cfg, "last:2")
    assert out.name == "main-avg-last2"
    assert json.loads((out / "average.json").read_text())["epochs"] == [3, 4]
    a, b = (load_file(str(run_dir / "checkpoints" / f"epoch_{e:03d}.safetensors"))
            for e in (3, 4))
    avg = load_file(str(out / "model.safetensors"))
    torch.testing.assert_close(avg["net.0.weight"], (a["net.0.weight"] + b["net.0.weight"]) / 2)
    assert Projector.from_pretrained(out).cfg.width == 32
    assert json.loads((out / "config.json").read_text())["config"]["train"]["pooling"]
    assert average(cfg, "1,3").name == "main-avg-1-3"
    for bad, msg in (("last:9", "4 saved epochs"), ("2,8", "epoch.s. 8"), ("x", "last:K")):
        with pytest.raises(ConfigError, match=msg):
            average(cfg, bad)


def test_resume_refuses_other_architecture_or_data(run, art):
    with pytest.raises(ConfigError, match="this config changes its architecture \\("):
        train(load(art, "train.run=main", "train.epochs=4", "train.projector.width=48",
                   "train.ema_decay=0.5", 'train.val_evalset="syn-val"',
                   'train.loss={unit_mse=1.0, text_infonce=0.1}',
                   "train.projector.standardize=true"), resume=True)
    with pytest.raises(ConfigError, match="changes its data, loss and schedule \\("):
        train(load(art, "train.run=main", "train.epochs=4", "train.dataset=syn-val",
                   "train.projector.standardize=true"), resume=True)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(art, monkeypatch):
    from dinov2clip.train import losses

    calls = {"n": 0}
    real = losses.UnitMSE.forward

    def poisoned(self, pred, img, txt):
        calls["n"] += 1
        out = real(self, pred, img, txt)
        return out * float("nan") if calls["n"] > 12 else out  # epoch 1 is 8 steps + val

    monkeypatch.setattr(losses.UnitMSE, "forward", poisoned)
    cfg = load(art, "train.run=diverged", "train.epochs=3")
    with pytest.raises(FloatingPointError, match="epoch 2.*epoch_001.safetensors"):
        train(cfg)
    run_dir = art / "runs" / "diverged"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "epoch_001.safetensors"]
    weights = load_file(str(run_dir / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_schedulers_warm_up_and_decay():
    from dinov2clip.train.loop import _scheduler

    def lrs(kind):
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = _scheduler(opt, kind, 1.0, 100, 0.1)
        out = []
        for _ in range(100):
            out.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
        return out

    cos = lrs("cosine")
    assert cos[0] == pytest.approx(0.1) and cos[9] == pytest.approx(1.0)
    assert cos[55] == pytest.approx(0.5, abs=0.02) and cos[-1] < 0.01
    one = lrs("onecycle")  # PyTorch's OneCycleLR: peak at 30%, from max_lr / 25
    assert one[0] == pytest.approx(1 / 25) and max(one) == pytest.approx(1.0, abs=1e-3)
    assert one.index(max(one)) in (29, 30) and one[-1] < 1e-3
    assert set(lrs("constant")) == {1.0}


def test_concat_pooling_linear_baseline_selected_on_the_eval_set(art):
    cfg = load(art, "train.run=linear", "train.epochs=3", 'train.pooling="concat"',
               'train.projector.kind="linear"', "train.projector.in_dim=32",
               'train.scheduler="cosine"', 'train.val_evalset="syn-val"',
               'train.select_metric="evalset_pct_clip"', "train.lr=1e-2")
    run_dir = train(cfg)
    epochs = epochs_of(run_dir)
    scores = [r["evalset_pct_clip"] for r in epochs]
    assert epochs[-1]["best_epoch"] == 1 + scores.index(max(scores))
    assert Projector.from_pretrained(run_dir).cfg.in_dim == 32
    with pytest.raises(ConfigError, match="must not see a test set"):
        train(load(art, "train.run=x", 'train.val_evalset="syn-val"', 'eval.sets=["syn-val"]'))
