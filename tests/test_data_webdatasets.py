"""Any image-caption webdataset, img2dataset's or not, linked as shards/<name> and extracted."""

import io
import json
import logging
import random
import tarfile

import pytest
import webdataset as wds

from dinov2clip import data, extract
from dinov2clip.config import ConfigError, load_config
from dinov2clip.data.synthetic import draw, random_scene
from tests.helpers import demo_config


def own_webdataset(directory, shards=2, per_shard=5):
    """Not img2dataset's layout: PNG images, other shard names, no parquet or _stats.json."""
    directory.mkdir(parents=True)
    rng, captions = random.Random(0), {}
    for s in range(shards):
        with wds.TarWriter(str(directory / f"part-{s}.tar")) as sink:
            for i in range(per_shard):
                scene, buf = random_scene(rng), io.BytesIO()
                draw(scene, 64, rng).save(buf, format="PNG")
                key = f"sample{s}_{i}"
                captions[key] = scene.caption(1)
                sink.write({"__key__": key, "png": buf.getvalue(), "txt": captions[key]})
    return captions


def config(tmp_path, webdatasets: dict, settings: dict | None = None, tiny_models: bool = False):
    """The tiny demo over the webdatasets {name: folder} only, extracted as shards/mine."""
    return load_config(demo_config(tmp_path / "c.toml", tmp_path / "artifacts", {
        "data.synthetic.tiny_models": tiny_models, "data.webdatasets": webdatasets,
        "data.synthetic.num_train": 0, "data.synthetic.num_eval": 0,
        "extract.datasets": ["shards/mine"], **(settings or {})}))


def test_own_webdataset_is_linked_and_extracted(tmp_path, caplog):
    captions = own_webdataset(tmp_path / "elsewhere" / "wds")
    cfg = config(tmp_path, {"mine": str(tmp_path / "elsewhere" / "wds")}, tiny_models=True)
    with caplog.at_level(logging.INFO, logger="dinov2clip"):
        data.run(cfg)
    link = cfg.root / "shards" / "mine"
    assert link.is_symlink() and link.resolve() == (tmp_path / "elsewhere" / "wds").resolve()
    assert f"webdataset mine: linked shards/mine -> {tmp_path}/elsewhere/wds (2 shards)" \
        in caplog.text

    extract.run(cfg)
    emb = cfg.root / "embeddings" / "mine" / "tiny"
    manifest = json.loads((emb / "manifest.json").read_text())
    assert manifest["n_images"] == len(captions) and manifest["skipped"] == {}
    assert sorted(manifest["shards"]) == ["part-0", "part-1"]


def test_what_is_not_an_image_caption_webdataset_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"data.webdatasets.mine: no .tar shards directly in "):
        data.run(config(tmp_path, {"mine": str(tmp_path / "empty")}))
    with pytest.raises(ConfigError, match=r"data.webdatasets.mine: .*/absent is not a directory"):
        data.run(config(tmp_path, {"mine": str(tmp_path / "absent")}))

    (tmp_path / "jsononly").mkdir()
    with tarfile.open(tmp_path / "jsononly" / "0.tar", "w") as tar:
        for name in ("k0.jpg", "k0.json"):  # the caption is inside the JSON: not readable
            (tmp_path / name).write_bytes(b"{}")
            tar.add(tmp_path / name, arcname=name)
    with pytest.raises(ConfigError, match=r"need an image \(jpg/jpeg/png/webp/gif/bmp\) and a "
                                          r".txt caption; found extensions: jpg, json"):
        data.run(config(tmp_path, {"mine": str(tmp_path / "jsononly")}))


def test_a_name_already_in_use_is_refused(tmp_path, caplog):
    own_webdataset(tmp_path / "a")
    own_webdataset(tmp_path / "b")
    with caplog.at_level(logging.INFO, logger="dinov2clip"):
        data.run(config(tmp_path, {"mine": str(tmp_path / "a")}))
        data.run(config(tmp_path, {"mine": str(tmp_path / "a")}))  # a re-run keeps the link
    assert "webdataset mine: already linked shards/mine" in caplog.text
    with pytest.raises(ConfigError, match=r"shards/mine already links to .*/a; remove that link "
                                          r"to point it at .*/b"):
        data.run(config(tmp_path, {"mine": str(tmp_path / "b")}))
    with pytest.raises(ConfigError, match=r"data.webdatasets.shapes: shards/shapes is also "
                                          r"written by the download or synthetic set"):
        data.run(config(tmp_path, {"shapes": str(tmp_path / "b")},
                        {"data.url_list": "somewhere.tsv"}))


def test_members_named_dot_slash_or_in_dotted_folders_are_accepted(tmp_path):
    from dinov2clip.data.webdatasets import link_webdataset

    (tmp_path / "wds").mkdir()
    with tarfile.open(tmp_path / "wds" / "0.tar", "w") as tar:  # as `tar -C dir .` makes them
        for name, payload in [("./v1.0/s0.png", b"png bytes"), ("./v1.0/s0.txt", b"a cap")]:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    line = link_webdataset("mine", str(tmp_path / "wds"), tmp_path / "shards")
    assert line.endswith("(1 shards)")
