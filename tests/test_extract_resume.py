"""Resume after a real SIGKILL, debris from a killed writer, config changes, and rank splits.

Every run here uses one torch thread (OMP_NUM_THREADS=1 in subprocesses, as torchrun sets), so
runs in different processes can be compared byte for byte.
"""

import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from dinov2clip.config import ConfigError, load_config
from dinov2clip.data.synthetic import write_train_shards
from dinov2clip.extract import run
from tests.helpers import REPO, TIMEOUT, extract_config, one_process_env, run_killed, tree_bytes

N_SHARDS = 8
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def new_root(base: Path, name: str, shards: Path, models: dict, **extract) -> Path:
    """An artifacts dir with a copy of the toy shards and its config; returns the config."""
    root = base / name
    shutil.copytree(shards, root / "art" / "shards" / "toy")
    return extract_config(root / "c.toml", root / "art", models, ["shards/toy"], **extract)


def out_dir(config: Path) -> Path:
    return config.parent / "art" / "embeddings" / "toy" / "t"


@pytest.fixture(scope="module")
def toy(tmp_path_factory, tiny_models):
    base = tmp_path_factory.mktemp("resume")
    shards = base / "shards"
    write_train_shards(shards, num=6 * N_SHARDS, shard_size=6, image_size=256, seed=3)
    ns = SimpleNamespace(base=base, shards=shards, models=tiny_models)
    ns.reference = new_root(base, "reference", shards, tiny_models)
    run(load_config(ns.reference))
    ns.expected = tree_bytes(out_dir(ns.reference))
    return ns


def test_reference_run_is_complete(toy):
    names = set(toy.expected)
    for a in ("dino_cls", "dino_mean", "clip_image", "clip_text"):
        assert {f"{a}/{i:05d}.npy" for i in range(N_SHARDS)} <= names
    assert {f"done/{i:05d}.json" for i in range(N_SHARDS)} <= names
    assert "manifest.json" in names and not [n for n in names if n.endswith(".tmp")]


@pytest.mark.slow
def test_sigkill_then_rerun_gives_identical_files(toy):
    config = new_root(toy.base, "killed", toy.shards, toy.models)
    done = out_dir(config) / "done"
    # kill -9 right after the second shard's done-marker lands
    run_killed("dinov2clip.store:DoneMarkers.write", 2, "extract", "-c", str(config))
    assert len(list(done.glob("*.json"))) == 2 < N_SHARDS, "the kill must land mid-run"
    assert not (out_dir(config) / "manifest.json").exists()
    run(load_config(config))  # the re-run skips finished shards and redoes the rest
    assert tree_bytes(out_dir(config)) == toy.expected


def test_debris_of_a_killed_writer_is_replaced(toy):
    """The states a kill can leave mid-shard: arrays without a marker, half-written temps."""
    config = new_root(toy.base, "debris", toy.shards, toy.models)
    shutil.copytree(out_dir(toy.reference), out_dir(config))
    out = out_dir(config)
    (out / "done" / "00003.json").unlink()  # shard 3: arrays renamed in, marker not yet
    (out / "clip_text" / "00003.npy").write_bytes(b"stale")
    for shard in ("00005", "00006"):  # shards 5 and 6: killed during their first writes
        for f in out.glob(f"*/{shard}.*"):
            f.unlink()
        (out / "dino_cls" / f".{shard}.npy.abc123.tmp").write_bytes(b"half")
    (out / "done" / ".00006.json.x1.tmp").write_bytes(b"{")
    (out / ".manifest.json.q9.tmp").write_bytes(b"{")
    (out / "manifest.json").unlink()
    run(load_config(config))
    assert tree_bytes(out) == toy.expected


def test_changed_models_never_mix_with_old_embeddings(toy):
    config = new_root(toy.base, "changed", toy.shards, toy.models, num_workers=0)
    shutil.copytree(out_dir(toy.reference), out_dir(config))
    (out_dir(config) / "done" / "00007.json").unlink()
    changed = extract_config(config, config.parent / "art",
                             {**toy.models, "dino": toy.models["dino_reg"]}, ["shards/toy"])
    with pytest.raises(ConfigError, match="other models or preprocessing"):
        run(load_config(changed))


@pytest.mark.parametrize(("launcher", "rank_var", "world_var"), [
    ("srun", "SLURM_PROCID", "SLURM_NTASKS"), ("torchrun", "RANK", "WORLD_SIZE")],
    ids=["srun", "torchrun"])
def test_ranks_split_shards_and_union_equals_one_process(toy, monkeypatch, launcher, rank_var,
                                                          world_var):
    """Rank 1 then rank 0 in this process, with the variables srun or torchrun sets."""
    config = new_root(toy.base, launcher, toy.shards, toy.models)
    for var in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(world_var, "2")
    monkeypatch.setenv(rank_var, "1")
    run(load_config(config))
    done = sorted(p.stem for p in (out_dir(config) / "done").glob("*.json"))
    assert done == [f"{i:05d}" for i in range(1, N_SHARDS, 2)]  # sorted(shards)[1::2]
    assert not (out_dir(config) / "manifest.json").exists()  # rank 0 has not finished
    monkeypatch.setenv(rank_var, "0")
    run(load_config(config))
    assert tree_bytes(out_dir(config)) == toy.expected


@pytest.mark.slow  # real torchrun: three more processes importing torch; ranks are tested above
def test_torchrun_two_ranks_union_equals_one_process(toy):
    config = new_root(toy.base, "torchrun-real", toy.shards, toy.models)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", "2", "-m", "dinov2clip.pipeline", "extract", "-c",
                           str(config)], cwd=REPO, env=one_process_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT)
    out = proc.stdout
    assert proc.returncode == 0, out
    assert "rank 1/2" in out and "rank 0/2" in out
    assert out.count("waiting for decoded batches") == 2  # each rank logs its phase times
    assert tree_bytes(out_dir(config)) == toy.expected
