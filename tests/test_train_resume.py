"""A real SIGKILL mid-run, then --resume: the final weights are bitwise those of a whole run."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from dinov2clip.io_utils import HOST
from dinov2clip.train.loop import train
from tests.conftest import REPO
from tests.train_helpers import load, make_embeddings, one_thread, write_config

pytestmark = pytest.mark.slow  # kills a training run
single_thread = pytest.fixture(one_thread)
EPOCHS = 6


def epoch_records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    drop = {"train_seconds", "train_samples_per_s"}
    return [{k: v for k, v in r.items() if k not in drop}
            for r in map(json.loads, lines) if r["kind"] == "epoch"]


def test_sigkill_then_resume_is_bitwise_equal_to_an_uninterrupted_run(tmp_path, single_thread):
    art = tmp_path / "artifacts"
    make_embeddings(art, n=400)
    config = write_config(art)
    killed = art / "runs" / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dinov2clip.pipeline", "train", "-c",
                             str(config), "--set", "train.run=killed", "--set",
                             f"train.epochs={EPOCHS}"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        state = killed / "train_state.pt"
        first = _wait_for(lambda: state.exists() and state.stat().st_mtime_ns, proc)
        second = _wait_for(lambda: (state.stat().st_mtime_ns != first
                                    and state.stat().st_mtime_ns), proc)
        # Anywhere in the next epoch, or its writes: at most one epoch's measured length, so a
        # fast machine cannot run out of epochs before the kill.
        time.sleep(random.uniform(0.0, (second - first) / 1e9))
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    done = torch.load(killed / "train_state.pt", weights_only=False)["epoch"]
    assert 1 <= done < EPOCHS

    train(load(art, "train.run=killed", f"train.epochs={EPOCHS}"), resume=True)
    whole = train(load(art, "train.run=whole", f"train.epochs={EPOCHS}"))

    for name in ["model.safetensors"] + [f"checkpoints/epoch_{e:03d}.safetensors"
                                         for e in range(1, EPOCHS + 1)]:
        assert (killed / name).read_bytes() == (whole / name).read_bytes(), name
    assert epoch_records(killed) == epoch_records(whole)  # no duplicated or lost epochs


def _wait_for(condition, proc, timeout: float = 240):
    """condition()'s first truthy value, polling while the training process runs."""
    deadline = time.time() + timeout
    while not (value := condition()):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline, "no epoch finished in time"
        time.sleep(0.01)
    return value


def test_resume_removes_temps_a_killed_run_left(tmp_path, single_thread):
    art = tmp_path / "artifacts"
    make_embeddings(art, n=200)
    run_dir = train(load(art, "train.epochs=1"))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = [run_dir / "checkpoints" / f".epoch_002.safetensors.{HOST}.{gone.pid}.0badcafe.tmp",
                run_dir / f".model.safetensors.{HOST}.{gone.pid}.0badcafe.tmp",
                run_dir / ".train_state.pt.k2j_x9aq.tmp"]  # an older version's name
        busy = run_dir / f".metrics.jsonl.{HOST}.{live.pid}.0badcafe.tmp"  # not ours to touch
        for path in [*dead, busy]:
            path.write_bytes(b"half")
        train(load(art, "train.epochs=1"), resume=True)
        assert busy.exists() and not any(p.exists() for p in dead)
    finally:
        live.kill()
        live.wait()
