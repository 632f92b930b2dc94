"""The eval stage on the demo run: what results.json records, --all-epochs, and bad input."""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from dinov2clip import evaluate
from dinov2clip.config import ConfigError, load_config
from dinov2clip.evaluate.compute import ensemble
from dinov2clip.evaluate.embeddings import project
from dinov2clip.models.projector import Projector
from dinov2clip.pipeline import app
from dinov2clip.retrieval import recall_at_k
from dinov2clip.store import EmbeddingSet, load_eval_embeddings
from tests.helpers import write_config

SET = "shapes-test"


def test_results_match_the_reference_and_say_where_they_come_from(demo_run):
    config, art = demo_run
    results = json.loads((art / "runs" / "demo" / "eval" / "results.json").read_text())
    info = results["run_info"]
    assert info["checkpoint"] == "model.safetensors" and info["best_epoch"] == 4
    assert info["tag"] == "tiny" and info["device"] == "cpu"
    # What actually ran: float32, not the configured GPU autocast dtype; and no screen any more.
    assert info["compute_dtype"] == "float32" and "screen" not in info and "engine" not in info
    assert info["run_dir"] == str(art / "runs" / "demo") and len(info["git_sha"] or "x" * 40) == 40
    assert results["config"]["eval"]["sets"] == [SET] and results["config"]["source"] == str(config)
    # Every number, recomputed here with the ranking function from the same files.
    run_dir, emb_dir = art / "runs" / "demo", art / "embeddings" / SET / "tiny"
    emb = load_eval_embeddings(emb_dir)
    proj = project(emb, Projector.from_pretrained(run_dir), "token_mean", 256)
    text, clip = emb.clip_text, emb.clip_image
    res = results["sets"][SET]
    for row, image in (("clip", clip), ("projected", proj), ("ensemble", ensemble(clip, proj))):
        assert res[row] == recall_at_k(text, image, emb.caption_to_image, [1, 5, 10])
    pct = res["projected_pct"]
    want_mean = sum(pct[f"t2i_R@{k}"] for k in (1, 5, 10) if pct[f"t2i_R@{k}"] is not None)
    assert res["summary"]["projected_pct_mean"]["t2i"] == pytest.approx(want_mean / 3)
    assert "seed_comparison" not in res  # not one of the seed's sets


def test_all_epochs_reuses_embeddings_and_ends_at_the_chosen_checkpoint(demo_run):
    config, art = demo_run
    results = evaluate.run(load_config(config), all_epochs=True)
    out = art / "runs" / "demo" / "eval"
    epochs = json.loads((out / "epochs.json").read_text())
    assert epochs["epochs"] == [1, 2, 3, 4]
    per_epoch = epochs["sets"][SET]["per_epoch"]
    assert [p["epoch"] for p in per_epoch] == [1, 2, 3, 4]
    # model.safetensors is epoch 4 (the best by val_cosine): the same numbers either way.
    assert per_epoch[-1]["projected"] == results["sets"][SET]["projected"]
    assert per_epoch[0]["projected"] != per_epoch[-1]["projected"]
    assert epochs["sets"][SET]["clip"] == results["sets"][SET]["clip"]
    assert (out / "epochs.png").stat().st_size > 5000
    assert "NaN" not in (out / "epochs.json").read_text()  # strict JSON: null, never NaN


@pytest.fixture()
def scratch(demo_run, tmp_path):
    """A copy of the demo's run and eval-set embeddings that a test may break."""
    config, art = demo_run
    root = tmp_path / "art"
    shutil.copytree(art / "runs" / "demo", root / "runs" / "demo",
                    ignore=shutil.ignore_patterns("eval"))
    shutil.copytree(art / "embeddings" / SET, root / "embeddings" / SET)
    return write_config(tmp_path / "c.toml", {"artifacts": str(root)}, base=config), root


def fake_set(root: Path, name: str, n_captions: list[int], d_dino: int = 48) -> None:
    """An extracted eval set in the contract's layout, with chosen caption counts and dims, made
    by the demo's models (as its plan says) but for d_dino."""
    emb = root / "embeddings" / name / "tiny"
    n, m = len(n_captions), sum(n_captions)
    rng = np.random.default_rng(0)
    for sub, shape in (("dino_cls", (n, d_dino)), ("dino_mean", (n, d_dino)),
                       ("clip_image", (n, 32)), ("clip_text", (m, 32))):
        (emb / sub).mkdir(parents=True)
        np.save(emb / sub / "0.npy", rng.standard_normal(shape).astype(np.float16))
    (emb / "meta").mkdir()
    pq.write_table(pa.table({"n_captions": pa.array(n_captions, pa.int64())}),
                   emb / "meta" / "0.parquet")
    store = EmbeddingSet(emb)
    models = EmbeddingSet(root / "embeddings" / SET / "tiny").read_plan()["models"]
    models = {**models, "dims": {**models["dims"], "dino": d_dino}}
    store.write_plan({"0": "fake"}, "fake", models, {})
    store.markers.write("0", {})


def cli_error(cfg_path: Path, *args: str) -> str:
    result = CliRunner().invoke(app, ["eval", "--config", str(cfg_path), *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_eval_set_without_captions_exits_2(scratch):
    cfg_path, root = scratch
    fake_set(root, "empty", [0, 0, 0])
    assert "has no captions" in cli_error(cfg_path, "--set", 'eval.sets=["empty"]')


def test_embeddings_that_do_not_fit_the_projector_exit_2(scratch):
    cfg_path, root = scratch
    fake_set(root, "wide", [2, 1, 3], d_dino=40)
    line = cli_error(cfg_path, "--set", 'eval.sets=["wide"]')  # other models made it
    assert "eval set 'wide'" in line and "dims.dino 48 -> 40" in line
    assert "--allow-other-embeddings" in line
    line = cli_error(cfg_path, "--set", 'eval.sets=["wide"]', "--allow-other-embeddings")
    assert "40-d" in line and "expects 48" in line


def test_run_without_weights_exits_2(scratch):
    cfg_path, root = scratch
    (root / "runs" / "demo" / "model.safetensors").unlink()
    assert "no weights" in cli_error(cfg_path)
    with pytest.raises(ConfigError, match="run not found: 'nope'"):
        evaluate.run(load_config(cfg_path, ["eval.run=nope"]))


def test_unknown_eval_set_exits_2(scratch):
    cfg_path, _ = scratch
    line = cli_error(cfg_path, "--set", 'eval.sets=["imagenet-r"]')
    assert "unknown eval set 'imagenet-r'" in line and SET in line  # names what exists
    line = cli_error(cfg_path, "--set", 'eval.sets=["mscoco"]')
    assert "evalsets/mscoco" in line  # a known set that was never extracted: how to fix it
    # The removed FAISS/screen engines: the old flag and key say so and what to do instead.
    line = cli_error(cfg_path, "--search", "faiss")
    assert "--search was removed" in line and "pipeline index" in line
    line = cli_error(cfg_path, "--set", "eval.search=exact")
    assert "'eval.search' was removed, delete it" in line


def test_bad_zeroshot_settings_exit_2_before_any_retrieval(scratch):
    cfg_path, root = scratch
    (root / "runs" / "demo" / "eval").mkdir(parents=True, exist_ok=True)
    line = cli_error(cfg_path, "--set", f'eval.zeroshot="{root / "nope"}"')
    assert "dataset folder not found" in line and "nope" in line
    line = cli_error(cfg_path, "--set", "eval.zeroshot_templates=imagenet1k")
    assert "must be one of imagenet80, short, plain" in line
    assert not (root / "runs" / "demo" / "eval" / "results.json").exists()


def test_all_epochs_without_checkpoints_exits_2(scratch):
    cfg_path, root = scratch
    shutil.rmtree(root / "runs" / "demo" / "checkpoints")
    assert "no saved epochs" in cli_error(cfg_path, "--all-epochs")


def test_cli_eval_with_run_option_writes_reports(scratch):
    cfg_path, root = scratch
    shutil.copytree(root / "runs" / "demo", root / "runs" / "other")
    result = CliRunner().invoke(app, ["eval", "--config", str(cfg_path), "--run", "other"])
    assert result.exit_code == 0, result.output
    out = root / "runs" / "other" / "eval"
    results = json.loads((out / "results.json").read_text())
    assert results["run"] == "other" and results["run_info"]["device"] == "cpu"
    assert "| projected, % of CLIP |" in (out / "report.md").read_text()
    assert (out / "recall.png").stat().st_size > 5000
    assert "% of CLIP" in result.stdout  # the rich table
    assert torch.isfinite(torch.tensor(results["sets"][SET]["clip"]["t2i_R@10"]))
