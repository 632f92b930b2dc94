"""Bad samples are skipped and counted by reason; bad options stop at once with exit code 2."""

import io
import json
import tarfile

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from dinov2clip.config import ConfigError, load_config
from dinov2clip.data.synthetic import draw, jpeg_bytes, random_scene
from dinov2clip.extract import run
from dinov2clip.pipeline import app
from tests.helpers import extract_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def good_jpeg(seed: int) -> bytes:
    import random

    rng = random.Random(seed)
    return jpeg_bytes(draw(random_scene(rng), 256, rng))


def write_tar(path, members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def sample(key: str, image: bytes | None, caption: bytes | None, ext: str = "jpg"):
    out = [] if image is None else [(f"{key}.{ext}", image)]
    if caption is not None:
        out.append((f"{key}.txt", caption))
    out.append((f"{key}.json", json.dumps({"url": f"http://x/{key}"}).encode()))
    return out


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("bad")
    shards = root / "art" / "shards" / "bad"
    shards.mkdir(parents=True)
    jpeg = good_jpeg(0)
    write_tar(shards / "00000.tar", [
        *sample("a0", jpeg, b"a good one"),
        *sample("a1", jpeg[: len(jpeg) // 2], b"truncated jpeg"),
        *sample("a2", b"<html>not found</html>", b"html saved as .jpg"),
        *sample("a3", jpeg, None),  # no caption
        *sample("a4", jpeg, b"  \n "),  # empty caption
        *sample("a5", b"", b"zero-byte image"),
        *sample("a6", None, b"caption without an image"),
        *sample("./sub/a7", good_jpeg(1), b"key with a folder", ext="png.jpg"),
        *sample("a0", jpeg, b"the same key again, later in the tar"),
    ])
    full = write_tar(shards / "00001.tar", [*sample("b0", jpeg, b"kept before the cut"),
                                            *sample("b1", good_jpeg(2), b"cut in half")])
    cut = full.index(good_jpeg(2)) + 100  # inside b1's image data
    (shards / "00001.tar").write_bytes(full[:cut])
    write_tar(shards / "00002.tar", [])  # an empty shard
    (shards / "00003.tar").write_bytes(b"")  # a zero-byte file
    cfg = load_config(extract_config(root / "c.toml", root / "art", tiny_models, ["shards/bad"]))
    run(cfg)
    return cfg.root / "embeddings" / "bad" / "t"


def test_each_bad_sample_is_skipped_and_counted_by_reason(bad_run):
    manifest = json.loads((bad_run / "manifest.json").read_text())
    assert manifest["skipped"] == {
        "corrupt_image": 1, "not_an_image": 1, "no_caption": 1, "empty_caption": 1,
        "zero_byte_image": 1, "no_image": 2,  # a6, and b1 whose image the cut destroyed
        "truncated_tar": 1, "empty_shard": 1, "zero_byte_file": 1, "duplicate_key": 1}
    assert manifest["n_images"] == 3
    assert manifest["shards"]["00001"]["skipped"] == {"no_image": 1, "truncated_tar": 1}
    keys = pq.read_table(bad_run / "meta" / "00000.parquet").column("key").to_pylist()
    assert keys == ["a0", "sub/a7"]
    meta = pq.read_table(bad_run / "meta" / "00001.parquet").to_pylist()
    assert [(m["key"], m["captions"], m["url"]) for m in meta] == [
        ("b0", ["kept before the cut"], "http://x/b0")]
    for empty in ("00002", "00003"):  # empty shards still commit, with zero rows
        assert manifest["shards"][empty]["n_images"] == 0
        assert pq.read_table(bad_run / "meta" / f"{empty}.parquet").num_rows == 0


def cli(*args):
    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize("case, message", [
    ("missing_dir", "input directory not found"),
    ("no_match", "no shards matching"),
    ("bad_dino", "cannot load DINO model"),
    ("not_dino", "not DINOv2"),
    ("bad_clip", "unknown open_clip model 'ViT-Nope-99'"),
    ("bad_tag", "cannot load open_clip"),
])
def test_bad_options_exit_2_with_one_line(tmp_path, tiny_models, bad_run, case, message):
    art = bad_run.parents[2]  # the artifacts dir holding shards/bad
    models, datasets, extra = dict(tiny_models), ["shards/bad"], {}
    if case == "missing_dir":
        datasets = ["shards/nowhere"]
    elif case == "no_match":
        extra = {"shard_pattern": "*.tgz"}
    elif case == "bad_dino":
        models["dino"] = str(tmp_path / "no-such-dinov2")
    elif case == "not_dino":
        models["dino"] = str(tmp_path / "bert")
        from transformers import BertConfig, BertModel

        BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=32)).save_pretrained(tmp_path / "bert")
    elif case == "bad_clip":
        models["clip"] = "ViT-Nope-99"
    elif case == "bad_tag":
        models["clip"], models["clip_pretrained"] = "ViT-B-32", "no-such-tag"
    config = extract_config(tmp_path / "c.toml", art, models, datasets, tag=case, **extra)
    result = cli("extract", "-c", str(config))
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.output


def test_config_error_is_raised_before_any_model_loads(tmp_path, tiny_models):
    config = extract_config(tmp_path / "c.toml", tmp_path / "art",
                            {**tiny_models, "dino": "/does/not/matter"}, ["shards/none"])
    with pytest.raises(ConfigError, match="input directory not found"):
        run(load_config(config))
