"""`pipeline train` refuses bad input with one line and exit code 2, before any training."""

import shutil

import pytest
from typer.testing import CliRunner

from dinov2clip.pipeline import app
from tests.helpers import train_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def pipeline(*args):
    result = CliRunner().invoke(app, list(args))
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    return result.exit_code, errors


def test_missing_embeddings(tmp_path):
    code, errors = pipeline("train", "-c", str(train_config(tmp_path / "artifacts")))
    assert code == 2 and len(errors) == 1
    assert "embeddings directory not found" in errors[0]


def test_incomplete_embeddings_lists_the_shards_without_a_done_marker(train_setup):
    art, config = train_setup
    for shard in ("00000", "00002"):
        (art / "embeddings" / "syn" / "t" / "done" / f"{shard}.json").unlink()
    code, errors = pipeline("train", "-c", config)
    assert code == 2 and len(errors) == 1
    assert "2 of 3 shards missing (00000, 00002); re-run extract" in errors[0]


def test_dims_that_do_not_match_the_config(train_setup):
    _, config = train_setup
    code, errors = pipeline("train", "-c", config, "--set", 'train.pooling="concat"')
    assert code == 2 and len(errors) == 1
    assert "dims 16->8 do not match" in errors[0] and "32-d inputs" in errors[0]


def test_existing_run_needs_resume_or_force_and_bad_options_fail_early(train_setup):
    art, config = train_setup
    (art / "runs" / "r").mkdir(parents=True)
    (art / "runs" / "r" / "config.json").write_text("{}")
    code, errors = pipeline("train", "-c", config)
    assert code == 2 and "pass --resume to continue it or --force" in errors[0]
    code, errors = pipeline("train", "-c", config, "--force", "--set",
                            'train.select_metric="val_r1"')
    assert code == 2 and "'train.select_metric' must be one of val_loss" in errors[0]
    code, errors = pipeline("train", "-c", config, "--force", "--set",
                            'train.val_evalset="coco-val"')
    assert code == 2 and "embeddings directory not found" in errors[0] and "coco-val" in errors[0]
    assert (art / "runs" / "r" / "config.json").exists(), "refused before touching the run"
    code, errors = pipeline("train", "-c", config, "--average", "last:2")
    assert code == 2 and "no trained run" in errors[0]


def test_train_force_then_average_through_the_cli(train_setup):
    art, config = train_setup
    shutil.rmtree(art / "runs", ignore_errors=True)
    code, errors = pipeline("train", "-c", config, "--set", "train.epochs=2")
    assert (code, errors) == (0, [])
    code, errors = pipeline("train", "-c", config, "--average", "1,2")
    assert (code, errors) == (0, []) and (art / "runs" / "r-avg-1-2" / "model.safetensors").exists()
    code, _ = pipeline("train", "-c", config, "--force", "--set", "train.epochs=1")
    assert code == 0
    assert sorted(p.name for p in (art / "runs" / "r" / "checkpoints").iterdir()) == [
        "epoch_001.safetensors"]
