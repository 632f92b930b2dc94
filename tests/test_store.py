"""The embeddings store: a killed extract never passes for a finished one, and weights, library
versions and the plan of shards are part of a set's identity."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dinov2clip.config import ConfigError, load_config
from dinov2clip.data.synthetic import write_train_shards
from dinov2clip.data.tiny_models import build_tiny_dinov2
from dinov2clip.extract import run, runner
from dinov2clip.io_utils import HOST
from dinov2clip.models import identity
from dinov2clip.store import EmbeddingSet, load_eval_embeddings
from tests.helpers import (
    extract_config,
    hub_here,
    live_process,
    make_embeddings,
    run_cli,
    run_killed,
    write_config,
)

N_SHARDS = 3
pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAIN = {"train.dataset": "toy", "train.run": "r", "train.epochs": 1, "train.batch_size": 4,
         "train.val_fraction": 0.3, "train.device": "cpu", "train.projector.in_dim": 48,
         "train.projector.out_dim": 32, "train.projector.width": 16, "train.projector.depth": 1,
         "train.projector.head_width": 16}

@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("store") / "shards"
    write_train_shards(out, num=2 * N_SHARDS, shard_size=2, image_size=64, seed=5)
    return out


@pytest.fixture(autouse=True)
def private_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def new_config(root: Path, shards: Path, models: dict) -> Path:
    shutil.copytree(shards, root / "art" / "shards" / "toy")
    config = extract_config(root / "c.toml", root / "art", models, ["shards/toy"])
    return write_config(config, TRAIN, base=config)


def emb_dir(config: Path) -> Path:
    return config.parent / "art" / "embeddings" / "toy" / "t"


@pytest.mark.slow  # kills an extract
def test_extract_killed_between_shards_is_refused_by_train_and_eval(tmp_path, shards,
                                                                      tiny_models):
    config = new_config(tmp_path, shards, tiny_models)
    # kill -9 right after the first shard's done-marker lands: between two shards, every time
    run_killed("dinov2clip.store:DoneMarkers.write", 1, "extract", "-c", str(config))
    out = emb_dir(config)
    plan = json.loads((out / "plan.json").read_text())
    assert sorted(plan["shards"]) == [f"{i:05d}" for i in range(N_SHARDS)]
    assert sorted(p.stem for p in (out / "done").glob("*.json")) == ["00000"]
    assert not (out / "manifest.json").exists()

    line = f"{out} is incomplete: 2 of 3 shards missing (00001, 00002); re-run extract"
    proc = run_cli("train", "-c", str(config), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {line} to finish it"]
    with pytest.raises(ConfigError, match="2 of 3 shards missing"):
        load_eval_embeddings(out)

    run(load_config(config))  # the fix the line names
    assert EmbeddingSet(out).complete_shards() == sorted(plan["shards"])
    assert json.loads((out / "manifest.json").read_text())["n_images"] == 2 * N_SHARDS


def test_a_shard_cut_before_its_meta_or_a_set_without_a_plan_is_refused(tmp_path):
    out = make_embeddings(tmp_path / "art", n=60, shard_size=20)
    assert EmbeddingSet(out).complete_shards() == ["00000", "00001", "00002"]
    (out / "meta" / "00001.parquet").unlink()  # killed after its arrays were renamed in
    (out / "done" / "00001.json").unlink()
    with pytest.raises(ConfigError, match=r"1 of 3 shards missing \(00001\)"):
        load_eval_embeddings(out)
    (out / "plan.json").unlink()
    with pytest.raises(ConfigError, match="no plan.json.*re-run extract"):
        EmbeddingSet(out).complete_shards()


def test_other_weights_at_the_same_path_are_refused_naming_them(tmp_path, shards, tiny_models):
    dino = build_tiny_dinov2(tmp_path / "dino")
    config = new_config(tmp_path, shards, {**tiny_models, "dino": str(dino)})
    run(load_config(config))
    out = emb_dir(config)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["weights"]["dino"]["sha256"]["model.safetensors"]
    assert manifest["weights"]["clip"]["sha256"] == identity.file_sha256(
        Path(tiny_models["clip_pretrained"]))
    assert manifest["clip_tokenizer"]["context_length"] == 77
    assert manifest["runtime"]["torch"] and manifest["runtime"]["open_clip"]
    assert set(manifest["provenance"][0]) == {"device", "git_sha", "git_dirty"}

    other = build_tiny_dinov2(tmp_path / "other", seed=1)  # same shapes, other weights
    shutil.copyfile(other / "model.safetensors", dino / "model.safetensors")
    (out / "done" / "00002.json").unlink()
    with pytest.raises(ConfigError, match=r"other models .*weights\.dino\.sha256\."
                                          r"model\.safetensors [0-9a-f]{12} -> [0-9a-f]{12}"):
        run(load_config(config))
    assert not (out / "done" / "00002.json").exists()


@pytest.fixture(scope="module")
def finished(tmp_path_factory, shards, tiny_models) -> Path:
    """The art dir of one finished extract, to copy."""
    config = new_config(tmp_path_factory.mktemp("finished"), shards, tiny_models)
    run(load_config(config))
    return config.parent


def copy_of(finished: Path, tmp_path: Path) -> Path:
    """A copy of the finished dir, its config pointing at the copy."""
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    return write_config(copy / "c.toml", {"artifacts": str(copy / "art")}, base=copy / "c.toml")


def damage_three_shards(out: Path, kinds: str) -> list[Path]:
    """One damaged file in each of the three shards; returns them."""
    if kinds == "cut, garbage, dtype":
        cut = out / "dino_cls" / "00000.npy"
        cut.write_bytes(cut.read_bytes()[:40])
        meta = out / "meta" / "00001.parquet"
        meta.write_bytes(b"x" * meta.stat().st_size)
        wide = out / "clip_text" / "00002.npy"
        np.save(wide, np.load(wide).astype(np.float32))
        return [cut, meta, wide]
    half = out / "clip_image" / "00000.npy"
    half.write_bytes(half.read_bytes()[:half.stat().st_size // 2])
    gone = out / "dino_mean" / "00001.npy"
    gone.unlink()
    short = out / "meta" / "00002.parquet"
    short.write_bytes(short.read_bytes()[:-10])
    return [half, gone, short]


@pytest.mark.parametrize("kinds", ["cut, garbage, dtype", "half, missing, short"])
def test_extract_re_does_the_shards_whose_files_do_not_match_their_markers(
        finished, tmp_path, kinds, caplog):
    from tests.helpers import tree_bytes

    config = copy_of(finished, tmp_path)
    out = emb_dir(config)
    damaged = damage_three_shards(out, kinds)
    with caplog.at_level("WARNING", logger="dinov2clip"):
        run(load_config(config))
    assert tree_bytes(out) == tree_bytes(emb_dir(finished / "c.toml"))
    for path in damaged:
        assert f"{path} " in caplog.text


def test_extract_keeps_a_shard_whose_marker_predates_file_records(finished, tmp_path):
    config = copy_of(finished, tmp_path)
    marker = emb_dir(config) / "done" / "00000.json"
    record = json.loads(marker.read_text())
    del record["files"]
    marker.write_text(json.dumps(record))
    run(load_config(config))
    assert "files" not in json.loads(marker.read_text())  # accepted as done, not re-done


def test_other_library_versions_are_refused_naming_them(finished, tmp_path, monkeypatch):
    config = copy_of(finished, tmp_path)
    (emb_dir(config) / "done" / "00001.json").unlink()
    monkeypatch.setattr(runner, "runtime",
                        lambda dino: {**identity.runtime(dino), "transformers": "0.0.1"})
    with pytest.raises(ConfigError, match=r"other library versions \(transformers \S+ -> "
                                          r"0\.0\.1\)"):
        run(load_config(config))


def test_a_live_ranks_manifest_temp_survives_another_ranks_start(finished, tmp_path):
    config = copy_of(finished, tmp_path)
    out = emb_dir(config)
    with live_process() as live:
        temp = out / f".manifest.json.{HOST}.{live.pid}.0123abcd.tmp"
        temp.write_text("{")
        (out / "done" / "00002.json").unlink()  # this rank has work; the other is writing
        run(load_config(config))
        assert temp.exists() and (out / "done" / "00002.json").exists()


def test_weight_files_are_hashed_once_and_a_set_back_mtime_does_not_fool_the_cache(
        tmp_path, monkeypatch):
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"a" * 100)
    monkeypatch.setattr(identity, "RACY_NS", 0)  # cache a file written a moment ago
    first = identity.file_sha256(f)
    real_hash = identity._hash_file
    monkeypatch.setattr(identity, "_hash_file", lambda path: pytest.fail("hashed again"))
    assert identity.file_sha256(f) == first  # unchanged: the cache answers
    monkeypatch.setattr(identity, "_hash_file", real_hash)
    st = f.stat()
    f.write_bytes(b"b" * 100)  # same size, same inode; the old mtime put back
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (f.stat().st_size, f.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert identity.file_sha256(f) == identity._hash_file(f) != first


def test_a_file_changed_a_moment_ago_is_not_cached(tmp_path, monkeypatch):
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"a" * 100)
    hashed = []
    real_hash = identity._hash_file
    monkeypatch.setattr(identity, "_hash_file", lambda path: hashed.append(1) or real_hash(path))
    identity.file_sha256(f)
    identity.file_sha256(f)  # within RACY_NS of its write: a same-tick rewrite could hide
    assert len(hashed) == 2


def test_a_teacher_resaved_with_the_old_size_and_mtime_is_refused_naming_its_hash(
        tmp_path, shards, tiny_models, monkeypatch):
    from dinov2clip.data.tiny_models import build_tiny_clip

    monkeypatch.setattr(identity, "RACY_NS", 0)  # the first extract caches the teacher's hash
    ckpt = tmp_path / "teacher.safetensors"
    shutil.copyfile(tiny_models["clip_pretrained"], ckpt)
    config = new_config(tmp_path, shards, {**tiny_models, "clip_pretrained": str(ckpt)})
    run(load_config(config))
    before = identity.file_sha256(ckpt)
    st = ckpt.stat()
    _, other = build_tiny_clip(tmp_path / "other", seed=1)  # same shapes, other weights
    shutil.copyfile(other, ckpt)  # re-saved in place: same inode
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (ckpt.stat().st_size, ckpt.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    (emb_dir(config) / "done" / "00002.json").unlink()
    with pytest.raises(ConfigError) as refused:
        run(load_config(config))
    after = identity._hash_file(ckpt)
    assert after != before
    # Only what changed: plan.json's lists are not "changed" into the fresh tuples.
    assert f"(weights.clip.sha256 {before[:12]} -> {after[:12]});" in str(refused.value)
    assert not (emb_dir(config) / "done" / "00002.json").exists()


def test_changes_compare_as_json_and_put_the_weights_first():
    from dinov2clip.store import changes

    old = {"clip_model": "a", "clip_preprocess": {"mean": [0.5, 0.25], "size": 224},
           "weights": {"clip": {"sha256": "0" * 64}}}
    new = {"clip_model": "b", "clip_preprocess": {"mean": (0.5, 0.25), "size": 224},
           "weights": {"clip": {"sha256": "f" * 64}}}
    assert changes(old, new) == ["weights.clip.sha256 000000000000 -> ffffffffffff",
                                 "clip_model a -> b"]
    assert changes(old, {**old, "clip_preprocess": {"mean": (0.5, 0.25), "size": 224}}) == []


def test_a_hub_dinov2_is_identified_by_the_commit_it_was_loaded_from(tmp_path, tiny_models,
                                                                      monkeypatch):
    from dinov2clip.models.loaders import load_dino

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--tiny-dinov2"
    shutil.copytree(tiny_models["dino"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    hub_here(monkeypatch, tmp_path / "hub")  # offline: the cache alone
    for rev in ("", "main"):
        model, _ = load_dino("org/tiny-dinov2", torch.device("cpu"), rev)
        assert identity.dino_weights(model, "org/tiny-dinov2", rev) == {"commit": commit}
