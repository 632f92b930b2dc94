"""A run owns what it was trained on: every user of a run reads the embeddings tag and models from
the run (RunDir), never from the config at hand; --run takes a name, a directory or hf-hub:."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from dinov2clip.config import ConfigError
from dinov2clip.pipeline import app
from dinov2clip.store import EmbeddingSet, RunDir
from tests.helpers import write_config, write_shape_classes

SET = "shapes-test"


@pytest.fixture
def other_tag(demo_run, tmp_path):
    """(config, artifacts): a copy of the demo in which run "other" was trained on embeddings
    tagged "other" while the config at hand names tag "tiny"; only tag "other" exists for the
    eval set, so an eval that read the config's tag would fail."""
    config, art = demo_run
    root = tmp_path / "art"
    shutil.copytree(art / "runs" / "demo", root / "runs" / "other",
                    ignore=shutil.ignore_patterns("eval", "zeroshot", "index"))
    shutil.copytree(art / "embeddings" / SET / "tiny", root / "embeddings" / SET / "other")
    run = RunDir(root / "runs" / "other")
    payload = json.loads(run.config.read_text())
    assert payload["embeddings"]["tag"] == "tiny"  # what train recorded
    payload["embeddings"]["tag"] = "other"
    run.config.write_text(json.dumps(payload))
    cfg = write_config(tmp_path / "c.toml", {"artifacts": str(root), "eval.zeroshot": ""},
                       base=config)
    return cfg, root


def evaluate(cfg, *args: str):
    return CliRunner().invoke(app, ["eval", "--config", str(cfg), *args])


def test_train_records_the_embeddings_it_trained_on(demo_run):
    _, art = demo_run
    recorded = json.loads(RunDir(art / "runs" / "demo").config.read_text())["embeddings"]
    plan = EmbeddingSet(art / "embeddings" / "shapes" / "tiny").read_plan()
    assert recorded == {"tag": "tiny", "dataset": "shapes", "models_hash": plan["models_hash"],
                        "models": plan["models"]}


def test_eval_reads_the_tag_from_the_run_not_the_config(other_tag):
    cfg, root = other_tag
    result = evaluate(cfg, "--run", "other")
    assert result.exit_code == 0, result.output
    info = json.loads(RunDir(root / "runs" / "other").results.read_text())["run_info"]
    assert info["tag"] == "other" and info["trained_on"]["tag"] == "other"
    assert info["allow_other_embeddings"] is False


def test_a_run_without_the_record_takes_the_tag_from_its_own_config(other_tag):
    cfg, root = other_tag
    run = RunDir(root / "runs" / "other")
    payload = json.loads(run.config.read_text())
    del payload["embeddings"]  # trained before the record existed
    payload["config"]["extract"]["tag"] = "other"
    run.config.write_text(json.dumps(payload))
    assert run.trained_on().tag == "other" and run.trained_on().models == {}
    result = evaluate(cfg, "--run", str(run.path))  # a directory works as well as a name
    assert result.exit_code == 0, result.output
    assert json.loads(run.results.read_text())["run_info"]["tag"] == "other"


def test_an_eval_set_from_other_weights_is_refused_unless_asked(other_tag):
    cfg, root = other_tag
    plan_path = EmbeddingSet(root / "embeddings" / SET / "other").path / "plan.json"
    plan = json.loads(plan_path.read_text())
    plan["models"]["weights"]["dino"] = {"commit": "f" * 40}  # as if other DINO weights made it
    plan_path.write_text(json.dumps(plan))
    result = evaluate(cfg, "--run", "other")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: eval set '{SET}'")
    assert "weights.dino" in lines[0] and "--allow-other-embeddings" in lines[0]
    result = evaluate(cfg, "--run", "other", "--allow-other-embeddings")
    assert result.exit_code == 0, result.output
    info = json.loads(RunDir(root / "runs" / "other").results.read_text())["run_info"]
    assert info["allow_other_embeddings"] is True


def test_run_names_directories_and_hub_ids_resolve(tmp_path, monkeypatch):
    (tmp_path / "runs" / "r").mkdir(parents=True)
    assert RunDir.resolve("r", tmp_path).path == tmp_path / "runs" / "r"
    assert RunDir.resolve(tmp_path / "runs" / "r").path == tmp_path / "runs" / "r"
    with pytest.raises(ConfigError, match=r"run not found: 'nope' \(no run directory at "
                                          r".*/runs/nope or nope\)"):
        RunDir.resolve("nope", tmp_path)
    import dinov2clip.store.run

    monkeypatch.setattr(dinov2clip.store.run, "download_run", lambda run: tmp_path / run[7:])
    assert RunDir.resolve("hf-hub:org/x").path == tmp_path / "org" / "x"


def test_use_commands_take_a_run_name(demo_run, tmp_path):
    _, art = demo_run
    runner = CliRunner()
    classes = write_shape_classes(tmp_path / "classes", per_class=1)
    out = tmp_path / "zs.json"
    result = runner.invoke(app, ["zeroshot", "--run", "demo", "--artifacts", str(art),
                                 "--data", str(classes), "--templates", "plain", "--out",
                                 str(out), "--device", "cpu", "--num-workers", "0"])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["tag"] == "tiny"
    index = tmp_path / "idx"
    result = runner.invoke(app, ["index", "--run", "demo", "--artifacts", str(art), "--images",
                                 str(classes), "--out", str(index), "--device", "cpu",
                                 "--num-workers", "0"])
    assert result.exit_code == 0, result.output
    assert json.loads((index / "index.json").read_text())["run_dir"] == str(
        (art / "runs" / "demo").resolve())
    result = runner.invoke(app, ["search", "a circle", "--index", str(index), "--run", "demo",
                                 "--artifacts", str(art), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    from dinov2clip.serve import SearchEngine

    engine = SearchEngine(index, run="demo", root=art, device="cpu")
    try:
        assert engine.info()["run"] == "demo" and engine.size == 3
    finally:
        engine.close()
    missing = runner.invoke(app, ["index", "--run", "demo", "--images", str(classes)])
    assert missing.exit_code == 2 and "run not found: 'demo'" in missing.stderr
