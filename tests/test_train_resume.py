"""A real SIGKILL mid-run, then --resume: the final weights are bitwise those of a whole run."""

import json

import pytest
import torch

from dinov2clip.io_utils import HOST
from dinov2clip.train.loop import train
from tests.helpers import dead_pid, live_process, load, make_embeddings, run_killed, train_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")
EPOCHS = 6


def epoch_records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    drop = {"train_seconds", "train_samples_per_s"}
    return [{k: v for k, v in r.items() if k not in drop}
            for r in map(json.loads, lines) if r["kind"] == "epoch"]


# Where in an epoch the kill lands, and the last epoch whose train_state.pt it leaves.
KILL_POINTS = {
    "between epochs, after epoch 2 committed": ("dinov2clip.train.loop:save_state", 2, 2),
    "in epoch 3, stepped and validated, nothing written": (
        "dinov2clip.train.validate:validate_split", 3, 2),
    "in epoch 3's writes, its checkpoint in, its state not": (
        "dinov2clip.train.loop:save_weights", 3, 2),
}


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    art = tmp_path_factory.mktemp("resume") / "artifacts"
    make_embeddings(art, n=400)
    return art


@pytest.fixture(scope="module")
def whole(art, one_torch_thread):
    return train(load(art, "train.run=whole", f"train.epochs={EPOCHS}"))


@pytest.mark.slow  # kills a training run three times
@pytest.mark.parametrize("target, calls, done", KILL_POINTS.values(), ids=KILL_POINTS.keys())
def test_sigkill_then_resume_is_bitwise_equal_to_an_uninterrupted_run(art, whole, target, calls,
                                                                       done):
    run = f"killed-{target.rpartition(':')[2]}"
    killed = art / "runs" / run
    run_killed(target, calls, "train", "-c", str(train_config(art)), "--set", f"train.run={run}",
               "--set", f"train.epochs={EPOCHS}")
    assert torch.load(killed / "train_state.pt", weights_only=False)["epoch"] == done

    train(load(art, f"train.run={run}", f"train.epochs={EPOCHS}"), resume=True)

    for name in ["model.safetensors"] + [f"checkpoints/epoch_{e:03d}.safetensors"
                                         for e in range(1, EPOCHS + 1)]:
        assert (killed / name).read_bytes() == (whole / name).read_bytes(), name
    assert epoch_records(killed) == epoch_records(whole)  # no duplicated or lost epochs


def test_resume_removes_temps_a_killed_run_left(tmp_path):
    art = tmp_path / "artifacts"
    make_embeddings(art, n=200)
    run_dir = train(load(art, "train.epochs=1"))
    gone = dead_pid()
    with live_process() as live:
        dead = [run_dir / "checkpoints" / f".epoch_002.safetensors.{HOST}.{gone}.0badcafe.tmp",
                run_dir / f".model.safetensors.{HOST}.{gone}.0badcafe.tmp",
                run_dir / ".train_state.pt.k2j_x9aq.tmp"]  # an older version's name
        busy = run_dir / f".metrics.jsonl.{HOST}.{live.pid}.0badcafe.tmp"  # not ours to touch
        for path in [*dead, busy]:
            path.write_bytes(b"half")
        train(load(art, "train.epochs=1"), resume=True)
        assert busy.exists() and not any(p.exists() for p in dead)
