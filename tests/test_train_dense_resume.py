"""The talk2dino head's training stopped mid-way, then --resume: the head's files and its
metrics.jsonl lines are those of a run never stopped; a changed dense config is refused."""

import shutil

import pytest
import torch
from typer.testing import CliRunner

from dinov2clip.config import ConfigError
from dinov2clip.pipeline import app
from dinov2clip.store import RunDir
from dinov2clip.train.loop import train
from tests.helpers import load, make_embeddings, run_killed, train_config, tree_bytes

pytestmark = pytest.mark.usefixtures("one_torch_thread")
HEAD_EPOCHS = 6
# two projector epochs, then six head epochs whose best (by val t2i R@1) moves: 1, 2, 3
HEAD = ("train.epochs=2", "train.dense.head='talk2dino'", f"train.dense.epochs={HEAD_EPOCHS}",
        "train.dense.batch_size=32", "train.dense.hidden=32", "train.dense.lr=1e-2")


def records(run_dir):
    """metrics.jsonl, projector and head lines in order, without the wall-clock fields."""
    drop = {"train_seconds", "train_samples_per_s"}
    return [{k: v for k, v in r.items() if k not in drop} for r in RunDir(run_dir).read_metrics()]


def head_state(run_dir):
    path = RunDir(run_dir).dense_head_state("talk2dino")
    return torch.load(path, weights_only=False)["epoch"] if path.exists() else None


def assert_same_as(run_dir, whole):
    files = tree_bytes(whole, skip=("config.json", "talk2dino_state.pt"))
    assert files.keys() == tree_bytes(run_dir, skip=("config.json", "talk2dino_state.pt")).keys()
    for name, data in files.items():
        if name.endswith((".safetensors", ".json")):
            assert (run_dir / name).read_bytes() == data, name
    assert records(run_dir) == records(whole)  # no duplicated or lost line, projector or head


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    art = tmp_path_factory.mktemp("dense-resume") / "artifacts"
    make_embeddings(art, n=400, heads=3)
    return art


@pytest.fixture(scope="module")
def whole(art, one_torch_thread):
    run_dir = train(load(art, "train.run=whole", *HEAD))
    epochs = [r for r in records(run_dir) if r["kind"] == "dense_epoch"]
    # the best epoch moves after the first: a resume must carry best-so-far to get it right
    assert [r["epoch"] for r in epochs] == list(range(1, HEAD_EPOCHS + 1))
    assert epochs[-1]["best_epoch"] > 1
    return run_dir


class Stopped(BaseException):
    """Stands in for a kill: nothing catches it, so nothing after it runs."""


# Where in the head's training the stop lands (the owner, its attribute, the call it stops
# after), and the last head epoch whose state it leaves (None: none yet).
STOPS = {
    "between head epochs, after head epoch 2 committed": (
        "dinov2clip.train.dense_head", "save_head_state", 2, 2),
    "in head epoch 3, stepped and validated, nothing written": (
        "dinov2clip.train.dense_head", "validate", 3, 2),
    "in head epoch 1's writes, its best weights in, its state not": (
        "dinov2clip.dense.talk2dino", "Talk2DinoMap.save", 1, None),
}


def stop_after(monkeypatch, module: str, attribute: str, calls: int) -> None:
    import importlib

    owner = importlib.import_module(module)
    *path, name = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    original, made = getattr(owner, name), []

    def call_then_stop(*args, **kwargs):
        result = original(*args, **kwargs)
        made.append(1)
        if len(made) == calls:
            raise Stopped
        return result

    monkeypatch.setattr(owner, name, call_then_stop)


@pytest.mark.parametrize("module, attribute, calls, done", STOPS.values(), ids=STOPS.keys())
def test_a_head_stopped_mid_training_resumes_to_the_same_files(art, whole, monkeypatch, module,
                                                               attribute, calls, done):
    run = f"stopped-{attribute}-{calls}"
    with monkeypatch.context() as patched:
        stop_after(patched, module, attribute, calls)
        with pytest.raises(Stopped):
            train(load(art, f"train.run={run}", *HEAD))
    stopped = art / "runs" / run
    assert head_state(stopped) == done
    assert len([r for r in records(stopped) if r["kind"] == "dense_epoch"]) >= (done or 0)

    train(load(art, f"train.run={run}", *HEAD), resume=True)

    assert_same_as(stopped, whole)
    assert head_state(stopped) == HEAD_EPOCHS  # kept once done, as train_state.pt is


@pytest.mark.slow  # kills a training run three times
@pytest.mark.parametrize("module, attribute, calls, done", STOPS.values(), ids=STOPS.keys())
def test_sigkill_in_the_head_then_resume_is_bitwise_equal_to_an_uninterrupted_run(
        art, whole, module, attribute, calls, done):
    run = f"killed-{attribute}-{calls}"
    settings = [arg for s in (f"train.run={run}", *HEAD) for arg in ("--set", s)]
    run_killed(f"{module}:{attribute}", calls, "train", "-c", str(train_config(art)), *settings)
    killed = art / "runs" / run
    assert head_state(killed) == done
    assert torch.load(RunDir(killed).state, weights_only=False)["epoch"] == 2  # projector done

    proc = CliRunner().invoke(app, ["train", "-c", str(train_config(art)), "--resume",
                                    *settings])
    assert proc.exit_code == 0, proc.output

    assert_same_as(killed, whole)


def copy_of(whole, name):
    shutil.copytree(whole, whole.parent / name)
    return whole.parent / name


def test_a_finished_head_is_not_trained_again(art, whole):
    again = copy_of(whole, "again")
    before = tree_bytes(again, skip=())
    train(load(art, "train.run=again", *HEAD), resume=True)
    assert tree_bytes(again, skip=()) == before


@pytest.mark.parametrize("setting, named", [
    ("train.dense.lr=2e-2", "train.dense.lr 0.01 -> 0.02"),
    ("train.dense.hidden=16", "train.dense.hidden 32 -> 16"),
    ("train.dense.epochs=8", "train.dense.epochs 6 -> 8"),
])
def test_a_resume_that_changes_the_head_config_is_refused_naming_the_key(art, whole, setting,
                                                                         named):
    name = f"changed-{setting.partition('=')[0].rpartition('.')[2]}"
    changed = copy_of(whole, name)
    before = tree_bytes(changed, skip=())
    settings = [arg for s in (f"train.run={name}", *HEAD, setting) for arg in ("--set", s)]
    result = CliRunner().invoke(app, ["train", "-c", str(train_config(art)), "--resume",
                                      *settings])
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1, result.output
    assert named in errors[0] and "talk2dino" in errors[0] and "Traceback" not in result.output
    assert tree_bytes(changed, skip=()) == before  # refused before anything was written
    with pytest.raises(ConfigError, match=named):  # and in process, as train() raises it
        train(load(art, f"train.run={name}", *HEAD, setting), resume=True)
