"""A damaged embeddings set is refused in one line naming the file and the fix, by train and by
eval, before anything is written; markers from before files were recorded still pass."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dinov2clip.pipeline import app
from dinov2clip.store import EmbeddingSet, load_split
from tests.helpers import make_embeddings, write_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SHARD = "00001"


def cut_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def cut_40(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:40])


def as_float32(path: Path) -> None:
    np.save(path, np.load(path).astype(np.float32))


def garbage_same_size(path: Path) -> None:  # the size the marker records: the footer fails
    path.write_bytes(b"x" * path.stat().st_size)


def nan_row(path: Path) -> None:  # in place: size and header as recorded
    data = np.load(path, mmap_mode="r+")
    data[3, 2] = np.nan
    data.flush()


# damage: (file of shard 00001, what is done to it, what the line says about it)
DAMAGE = {
    "cut-to-half": ("dino_cls/{s}.npy", cut_half, r"is \d+ bytes, its done-marker says \d+"),
    "cut-to-40-bytes": ("clip_image/{s}.npy", cut_40,
                        r"is not a readable npy file \(EOF: reading array header"),
    "missing": ("dino_mean/{s}.npy", Path.unlink, "is missing"),
    "wrong-dtype": ("clip_text/{s}.npy", as_float32, "holds float32, not float16"),
    "parquet-garbage": ("meta/{s}.parquet", garbage_same_size, "does not parse as Parquet"),
}
REDO = f"; shard {SHARD} is damaged: run `pipeline extract` to re-do it"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """Artifacts with a training set (syn), an eval set (evalset, 3 captions per image) and a
    run trained on them: each test breaks a copy."""
    root = tmp_path_factory.mktemp("integrity")
    art = root / "art"
    make_embeddings(art, n=300, shard_size=100)
    make_embeddings(art, n=60, shard_size=20, dataset="evalset", captions=3, seed=2)
    config = write_config(root / "c.toml", settings(art))
    assert pipeline("train", "-c", str(config), "--set", "train.epochs=1")[0] == 0
    return root


def settings(art: Path) -> dict:
    from tests.helpers import TRAIN_SETTINGS

    return {"artifacts": str(art), **TRAIN_SETTINGS, "eval.sets": ["evalset"],
            "eval.device": "cpu"}


@pytest.fixture
def art(base, tmp_path) -> tuple[Path, Path]:
    """(artifacts, config) copied from base."""
    shutil.copytree(base / "art", tmp_path / "art")
    return tmp_path / "art", write_config(tmp_path / "c.toml", settings(tmp_path / "art"))


def pipeline(*args: str) -> tuple[int, list[str], str]:
    """(exit code, its `error:` lines, everything it printed)."""
    result = CliRunner().invoke(app, list(args))
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    return result.exit_code, errors, result.output


def refused(code: int, errors: list[str], output: str, path: Path, says: str) -> None:
    assert code == 2 and len(errors) == 1, output
    assert "Traceback" not in output
    line = errors[0]
    assert line.startswith(f"error: {path} ") and line.endswith(REDO), line
    assert re.search(says, line), line


@pytest.mark.parametrize("kind", DAMAGE)
def test_train_refuses_a_damaged_file_in_one_line_and_leaves_no_run(art, kind):
    art, config = art
    name, damage, says = DAMAGE[kind]
    path = art / "embeddings" / "syn" / "t" / name.format(s=SHARD)
    damage(path)
    refused(*pipeline("train", "-c", str(config), "--set", 'train.run="new"'), path, says)
    assert not (art / "runs" / "new").exists()


@pytest.mark.parametrize("kind", DAMAGE)
def test_eval_refuses_a_damaged_file_in_one_line(art, kind):
    art, config = art
    name, damage, says = DAMAGE[kind]
    path = art / "embeddings" / "evalset" / "t" / name.format(s=SHARD)
    damage(path)
    refused(*pipeline("eval", "-c", str(config)), path, says)
    assert not (art / "runs" / "r" / "eval").exists()


@pytest.mark.parametrize("dataset", ["syn", "evalset"])
def test_nan_rows_are_refused_naming_the_file_the_row_and_the_marker(art, dataset):
    art, config = art
    emb = art / "embeddings" / dataset / "t"
    path = emb / "dino_mean" / f"{SHARD}.npy"
    nan_row(path)
    assert EmbeddingSet(emb).damage(SHARD) is None  # no marker records values
    command = ["train", "-c", str(config), "--set", 'train.run="new"'] if dataset == "syn" \
        else ["eval", "-c", str(config)]
    code, errors, output = pipeline(*command)
    assert code == 2 and len(errors) == 1 and "Traceback" not in output, output
    rows = 100 if dataset == "syn" else 20
    assert errors[0] == (f"error: {path}: row 3 holds NaN or inf (1 of {rows} rows); shard "
                         f"{SHARD} is damaged: delete {emb / 'done' / SHARD}.json and run "
                         "`pipeline extract` to re-do it")
    assert not (art / "runs" / "new").exists() and not (art / "runs" / "r" / "eval").exists()


def test_a_failed_train_over_an_existing_run_with_force_keeps_it(art):
    art, config = art
    before = sorted(p.name for p in (art / "runs" / "r").iterdir())
    cut_half(art / "embeddings" / "syn" / "t" / "clip_image" / "00002.npy")
    code, errors, _ = pipeline("train", "-c", str(config), "--force")
    assert code == 2 and "clip_image/00002.npy is" in errors[0]
    assert sorted(p.name for p in (art / "runs" / "r").iterdir()) == before


def strip_file_records(emb: Path) -> None:
    """The done-markers as extract wrote them before files were recorded."""
    for marker in (emb / "done").glob("*.json"):
        record = json.loads(marker.read_text())
        del record["files"]
        marker.write_text(json.dumps(record))


def test_markers_without_file_records_pass_with_the_checks_the_headers_allow(art, base):
    art, config = art
    emb = art / "embeddings" / "syn" / "t"
    want = load_split(emb, "cls", 0.2)
    strip_file_records(emb)
    got = load_split(emb, "cls", 0.2)
    assert all(torch.equal(getattr(g, f), getattr(w, f)) for g, w in zip(got, want, strict=True)
               for f in ("x", "clip_img", "clip_txt"))

    path = emb / "dino_cls" / f"{SHARD}.npy"
    np.save(path, np.load(path)[:99])  # a whole npy, one row short of its marker's n_images
    refused(*pipeline("train", "-c", str(config), "--set", 'train.run="new"'), path,
            "has 99 rows, its done-marker says 100")
    shutil.copy(base / "art" / "embeddings" / "syn" / "t" / "dino_cls" / f"{SHARD}.npy", path)
    path = emb / "clip_text" / f"{SHARD}.npy"
    cut_half(path)  # no recorded size: the size its own header implies
    refused(*pipeline("train", "-c", str(config), "--set", 'train.run="new"'), path,
            r"is \d+ bytes, its npy header needs \d+")
    assert not (art / "runs" / "new").exists()
