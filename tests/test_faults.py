"""OS faults and interrupts end in one `error:` line naming the path and the cause, exit 1,
with no traceback and nothing half-written under a final name.

A full disk is simulated deterministically: the chosen file's temp is a symlink to /dev/full,
so the real writer (torch.save, safetensors, numpy, pyarrow) meets a real ENOSPC.
"""

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dinov2clip import io_utils
from dinov2clip.config import load_config
from dinov2clip.pipeline import app
from tests.helpers import extract_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NO_SPACE = "No space left on device"


def pipeline(*args):
    result = CliRunner().invoke(app, list(args))
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    return result, errors


def fill_disk(monkeypatch, module, name_part: str) -> None:
    """atomic_write, as `module` calls it, writes files named like *name_part* to /dev/full."""
    real = io_utils.atomic_write

    def full(path, write):
        if name_part not in Path(path).name:
            return real(path, write)

        def onto_full_device(tmp: str) -> None:
            os.unlink(tmp)
            os.symlink("/dev/full", tmp)
            write(tmp)

        return real(path, onto_full_device)

    monkeypatch.setattr(module, "atomic_write", full)


def debris(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*.tmp"))


@pytest.mark.parametrize(("module", "name"), [("dinov2clip.train.state", "train_state.pt"),
                                              ("dinov2clip.models.projector", "epoch_001"),
                                              ("dinov2clip.train.plots", "loss.png")])
def test_train_on_a_full_disk(train_setup, monkeypatch, module, name):
    import importlib

    art, config = train_setup
    fill_disk(monkeypatch, importlib.import_module(module), name)
    result, errors = pipeline("train", "-c", config)
    assert result.exit_code == 1 and len(errors) == 1, result.output
    assert NO_SPACE in errors[0] and str(art / "runs" / "r") in errors[0] and name in errors[0]
    assert "Traceback" not in result.output and "inline_container" not in result.output
    run_dir = art / "runs" / "r"
    assert not (run_dir / "train_state.pt").exists() and debris(run_dir) == []
    assert not list(run_dir.rglob(f"{name}*"))  # nothing under the final name


def test_permission_denied_names_the_path(train_setup, monkeypatch):
    art, config = train_setup

    def read_only(path, write):  # a directory this user may not write: open() refuses
        raise PermissionError(13, "Permission denied", str(Path(path).parent / ".tmp"))

    monkeypatch.setattr(io_utils, "atomic_write", read_only)
    result, errors = pipeline("train", "-c", config)
    assert result.exit_code == 1 and len(errors) == 1, result.output
    assert "Permission denied" in errors[0] and str(art / "runs" / "r") in errors[0]
    assert "Traceback" not in result.output


def test_artifacts_under_proc(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('artifacts = "/proc/dinov2clip-artifacts"\n')
    result, errors = pipeline("data", "-c", str(config))
    assert result.exit_code == 1 and len(errors) == 1, result.output
    assert errors[0].startswith("error: /proc/dinov2clip-artifacts: No such file or directory")


def test_extract_on_a_full_disk(tmp_path, tiny_models, monkeypatch):
    from dinov2clip.data.synthetic import write_train_shards

    art = tmp_path / "art"
    write_train_shards(art / "shards" / "toy", num=8, shard_size=4, image_size=64, seed=1)
    config = extract_config(tmp_path / "c.toml", art, tiny_models, ["shards/toy"])
    load_config(config)
    fill_disk(monkeypatch, io_utils, "00001.npy")  # the second shard's first array
    result, errors = pipeline("extract", "-c", str(config))
    assert result.exit_code == 1 and len(errors) == 1, result.output
    out = art / "embeddings" / "toy" / "t"
    assert NO_SPACE in errors[0] and str(out / "dino_cls" / "00001.npy") in errors[0]
    assert "Traceback" not in result.output
    assert debris(out) == [] and not (out / "done" / "00001.json").exists()
    assert (out / "done" / "00000.json").exists()  # the shard before the fault is kept


def test_ctrl_c_in_train_says_resume_and_a_finished_run_says_so(train_setup, monkeypatch, caplog):
    from dinov2clip.train import loop

    art, config = train_setup

    def interrupt(run_dir):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "draw_curves", interrupt)  # after epoch 1's weights
    result, _ = pipeline("train", "-c", config)
    assert result.exit_code == 130 and "re-run the same command with --resume" in result.stderr
    monkeypatch.undo()
    result, errors = pipeline("train", "-c", config, "--resume", "--force")
    assert result.exit_code == 2 and "--resume and --force contradict" in errors[0]
    result, errors = pipeline("run", "--stage", "all", "-c", config, "--resume", "--force")
    assert result.exit_code == 2 and "--resume and --force contradict" in errors[0]
    assert pipeline("train", "-c", config, "--resume")[0].exit_code == 0
    with caplog.at_level("INFO", logger="dinov2clip"):
        assert pipeline("train", "-c", config, "--resume")[0].exit_code == 0
    assert "is finished: all 3 epochs are trained" in caplog.text
