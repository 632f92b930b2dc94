"""configs/demo-no-teacher.toml through the real entry point: extract with no teacher writes no
CLIP arrays, train selects by the towers' own recall, eval and zero-shot report absolute numbers
with no CLIP row, and the run loads, indexes, searches and round-trips through the fake hub."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dinov2clip.pipeline import app
from tests.helpers import REPO, run_cli, write_config, write_shape_classes
from tests.test_hub import FakeModelHub, hub_here

pytestmark = pytest.mark.slow  # the whole pipeline (about 40 s here)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-noteacher")
    art = root / "artifacts"
    models = art / "models"
    config = write_config(root / "demo.toml", {
        "artifacts": str(art), "data.synthetic.num_train": 384, "data.synthetic.num_eval": 60,
        "data.synthetic.shard_size": 128, "data.synthetic.zeroshot_per_class": 3,
        "extract.dino_model": str(models / "tiny-dinov2"),
        "extract.text_encoder": str(models / "tiny-text"), "extract.num_workers": 0,
        "train.epochs": 3, "eval.zeroshot": str(art / "zeroshot" / "shapes")},
        base=REPO / "configs" / "demo-no-teacher.toml")
    run_cli("run", "--stage", "all", "--config", str(config))
    return art, art / "runs" / "demo-no-teacher"


def test_extract_writes_no_teacher_arrays(demo):
    art, _ = demo
    (emb,) = (p for p in (art / "embeddings" / "shapes").iterdir() if p.is_dir())
    assert emb.name == "tiny-dinov2__no-teacher__tiny-text"  # the derived tag names it
    arrays = {p.name for p in emb.iterdir() if p.is_dir()} - {"done", "meta"}
    assert arrays == {"dino_cls", "dino_mean", "text_enc"}
    manifest = json.loads((emb / "manifest.json").read_text())
    assert manifest["clip_model"] == "" and "clip" not in manifest["dims"]


def test_train_selects_by_the_towers_own_recall(demo):
    _, run = demo
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["config"]["train"]["select_metric"] == "val_t2i_R@1"
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
              if '"kind": "epoch"' in line]
    assert len(epochs) == 3 and all("val_t2i_R@1" in e for e in epochs)
    assert not any(k.startswith(("val_clip_", "val_pct")) for e in epochs for k in e)
    best = max(range(3), key=lambda i: epochs[i]["val_t2i_R@1"])  # first of the best on ties
    assert epochs[-1]["best_epoch"] == best + 1


def test_eval_reports_absolute_recalls_only(demo):
    _, run = demo
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["teacher"] is None
    res = results["sets"]["shapes-test"]
    assert set(res) == {"n_images", "n_captions", "projected", "summary"}
    assert 0 <= res["projected"]["t2i_R@10"] <= 100
    assert res["summary"]["projected_mean"]["t2i"] == pytest.approx(
        sum(res["projected"][f"t2i_R@{k}"] for k in (1, 5, 10)) / 3)
    report = (run / "eval" / "report.md").read_text()
    assert "% of CLIP |" not in report and "| clip |" not in report and "No teacher" in report
    assert (run / "eval" / "recall.png").stat().st_size > 0
    zs = json.loads((run / "eval" / "zeroshot.json").read_text())
    assert "projected" in zs and "clip" not in zs and "projected_pct" not in zs


def test_load_push_index_and_search(demo, tmp_path, monkeypatch):
    from dinov2clip import DinoV2Clip
    from dinov2clip.config import ConfigError, UseOptions
    from dinov2clip.index import build_index
    from dinov2clip.serve import SearchEngine

    _, run = demo
    model = DinoV2Clip.from_pretrained(run, device="cpu")
    assert model.two_tower and not model.has_teacher
    with pytest.raises(ConfigError, match="without a teacher"):
        model.encode_clip_text(["a circle"])
    fake = FakeModelHub()
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    hub_here(monkeypatch, tmp_path / "hf-home" / "hub", fake.url)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_tests")
    try:
        result = CliRunner().invoke(app, ["push", "--run", str(run), "--repo", "me/no-teacher"])
        assert result.exit_code == 0, result.output
        pulled = DinoV2Clip.from_pretrained("hf-hub:me/no-teacher", device="cpu")
        torch.testing.assert_close(pulled.encode_text(["a circle"]),
                                   model.encode_text(["a circle"]))
        images = write_shape_classes(tmp_path / "imgs", per_class=2)
        build_index(run="hf-hub:me/no-teacher", images=images, out_dir=tmp_path / "idx",
                    options=UseOptions(device="cpu", num_workers=0))
        engine = SearchEngine(tmp_path / "idx", device="cpu")
        try:
            scores, ids = engine.search_text("a circle", 3).result(timeout=60)
            assert len(ids) == 3 and np.all(np.diff(scores) <= 0)
        finally:
            engine.close()
    finally:
        fake.close()
