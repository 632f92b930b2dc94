"""One writer per embeddings set and per index directory: a second one stops at once naming the
holder's pid, or waits with --wait; a killed holder frees the lock; the ranks of one job each
take their own lock and never wait on each other."""

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dinov2clip.data.synthetic import write_train_shards
from dinov2clip.io_utils import HOST
from dinov2clip.pipeline import app
from dinov2clip.store import EmbeddingSet, WriterLock, lock, lock_path
from tests.helpers import REPO, extract_config, one_process_env, write_shape_classes

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SHARDS = ["00000", "00001", "00002"]


@pytest.fixture
def config(tmp_path, tiny_models) -> Path:
    write_train_shards(tmp_path / "art" / "shards" / "toy", num=6, shard_size=2, image_size=64,
                       seed=5)
    return extract_config(tmp_path / "c.toml", tmp_path / "art", tiny_models, ["shards/toy"])


def out_dir(config: Path) -> Path:
    return config.parent / "art" / "embeddings" / "toy" / "t"


def pipeline(*args: str) -> tuple[int, list[str], str]:
    result = CliRunner().invoke(app, list(args))
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    return result.exit_code, errors, result.output


def is_held(path: Path) -> bool:
    """Whether some open file description holds an flock on path (this test's own included)."""
    fd = os.open(path, os.O_RDWR)
    try:
        return not lock._try_lock(fd)
    finally:
        os.close(fd)


HOLDER = """
import sys
from dinov2clip.store import WriterLock
WriterLock(sys.argv[1]).acquire()
print("held", flush=True)
sys.stdin.read()
"""


def test_a_held_lock_stops_a_second_extract_at_once_and_a_killed_holder_frees_it(config):
    out = out_dir(config)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], cwd=REPO,
                              env=one_process_env(), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"  # the lock is taken: a deterministic point
        code, errors, output = pipeline("extract", "-c", str(config))
        assert code == 2 and len(errors) == 1 and "Traceback" not in output, output
        assert errors[0] == (f"error: {out} is being written by pid {holder.pid} on {HOST} "
                             f"(it holds {lock_path(out)}); let it finish, or run `pipeline "
                             "extract --wait` to start once it has")
        assert not out.exists()  # stopped before it wrote anything
        holder.send_signal(signal.SIGKILL)  # kill -9: no clean-up, the kernel frees the flock
        holder.wait()
    finally:
        holder.kill()
        holder.wait()
    assert pipeline("extract", "-c", str(config))[0] == 0
    assert EmbeddingSet(out).complete_shards() == SHARDS


def wait_hook(monkeypatch, holder: WriterLock) -> list[bool]:
    """lock.block, as --wait reaches it, releases HOLDER from another thread once it is
    waiting; returns, per wait, whether the release had begun by the time the wait ended."""
    real_block, waits = lock.block, []

    def block_then_release(fd: int) -> None:
        releasing = threading.Event()

        def release() -> None:
            releasing.set()  # before the release: a wait that ends before this did not wait
            holder.release()

        assert is_held(holder.path)
        threading.Timer(0.2, release).start()
        real_block(fd)
        waits.append(releasing.is_set())

    monkeypatch.setattr(lock, "block", block_then_release)
    return waits


def test_wait_waits_for_the_holder_then_extracts(config, monkeypatch, caplog):
    out = out_dir(config)
    holder = WriterLock(out).acquire()  # a second description in this process: flock refuses it
    waits = wait_hook(monkeypatch, holder)
    with caplog.at_level("INFO", logger="dinov2clip"):
        code, errors, output = pipeline("extract", "-c", str(config), "--wait")
    assert (code, errors) == (0, []), output
    assert waits == [True]
    assert f"being written by pid {os.getpid()} on {HOST}; waiting" in caplog.text
    assert EmbeddingSet(out).complete_shards() == SHARDS
    assert not is_held(lock_path(out)) and lock_path(out).read_text() == ""  # released


def test_the_ranks_of_one_job_each_take_their_own_lock(config, monkeypatch):
    from dinov2clip.store import writer

    out = out_dir(config)
    rank1 = WriterLock(out, rank=1).acquire()  # rank 1 of the job, still running
    seen = []
    real_write = writer.ShardWriter.write

    def write(self, shard, *args, **kwargs):  # mid-extract: both ranks' locks are held
        seen.append((shard, is_held(lock_path(out, 0)), is_held(lock_path(out, 1))))
        return real_write(self, shard, *args, **kwargs)

    monkeypatch.setattr(writer.ShardWriter, "write", write)
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert pipeline("extract", "-c", str(config))[0] == 0  # not blocked by rank 1
    assert seen == [("00000", True, True), ("00002", True, True)]  # shards[0::2]

    monkeypatch.setenv("RANK", "1")  # a second rank 1, of another job: refused
    code, errors, _ = pipeline("extract", "-c", str(config))
    assert code == 2 and f"pid {os.getpid()} on {HOST} (it holds {lock_path(out, 1)})" in errors[0]
    rank1.release()
    assert pipeline("extract", "-c", str(config))[0] == 0
    assert EmbeddingSet(out).complete_shards() == SHARDS


def test_index_takes_the_same_lock(demo_run, tmp_path, monkeypatch):
    _, art = demo_run
    images = write_shape_classes(tmp_path / "imgs", per_class=1)
    out = tmp_path / "idx"
    args = ["index", "--run", str(art / "runs" / "demo"), "--images", str(images), "--out",
            str(out), "--device", "cpu", "--num-workers", "0"]
    holder = WriterLock(out, command="index").acquire()
    code, errors, output = pipeline(*args)
    assert code == 2 and len(errors) == 1 and "Traceback" not in output, output
    assert f"pid {os.getpid()} on {HOST}" in errors[0] and "`pipeline index --wait`" in errors[0]
    assert not out.exists()
    waits = wait_hook(monkeypatch, holder)
    code, errors, output = pipeline(*args, "--wait")
    assert (code, errors, waits) == (0, [], [True]), output
    assert (out / "index.json").is_file()
