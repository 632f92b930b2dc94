"""A Karpathy split JSON plus images becomes CLIP_benchmark shards the extract reader accepts."""

import io
import json
import logging
import random
import tarfile

import pytest
from PIL import Image

from dinov2clip import data
from dinov2clip.config import ConfigError, load_config
from dinov2clip.data.synthetic import draw, random_scene
from dinov2clip.formats.webdataset import read_shard


def entry(i, split, filepath="val2014", ext="jpg", n_captions=2):
    e = {"filename": f"COCO_{split}_{i:012d}.{ext}", "split": split, "imgid": i,
         "sentences": [{"raw": f" image {i}\n caption  {c} ", "tokens": []}
                       for c in range(n_captions)]}
    return {**e, "filepath": filepath} if filepath else e  # Flickr's JSON has no filepath


@pytest.fixture
def karpathy(tmp_path):
    """dataset_coco.json-style file: 9 val entries (4 of them unusable), 2 test, 1 train."""
    root, rng = tmp_path / "images", random.Random(0)
    images = [entry(i, "val") for i in range(8)]
    images[4] = entry(4, "val", ext="tif")  # a type the extract stage can't read: re-encoded
    images[6] = entry(6, "val", n_captions=0)
    images[7]["sentences"].append({"raw": " \n ", "tokens": []})  # an empty caption, dropped
    images.append({"split": "val", "sentences": [{"raw": "an entry with no file name"}]})
    images += [entry(i, "test", filepath=None) for i in (8, 9)] + [entry(10, "train")]
    for i, e in enumerate(images):
        if "filename" not in e:
            continue
        path = root / e.get("filepath", "") / e["filename"]
        path.parent.mkdir(parents=True, exist_ok=True)
        if i == 2:
            continue  # missing on disk
        if i == 5:
            path.write_bytes(b"not an image")
            continue
        img = draw(random_scene(rng), 48, rng)
        img.save(path, format="TIFF" if e["filename"].endswith("tif") else "JPEG")
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
    return tmp_path / "dataset_coco.json", root


def config(tmp_path, sets: str):
    path = tmp_path / "c.toml"
    path.write_text(f'artifacts = "{tmp_path / "artifacts"}"\n[data.synthetic]\n'
                    f"tiny_models = false\n[data.eval_sets]\n{sets}\n")
    return load_config(path)


def spec(json_path, root, split, shard_size=3):
    return (f'{{ source = "karpathy", path = "{json_path}", image_root = "{root}", '
            f'split = "{split}", shard_size = {shard_size} }}')


def test_split_is_written_as_clip_benchmark_shards(tmp_path, karpathy, caplog):
    json_path, root = karpathy
    cfg = config(tmp_path, f"coco-val = {spec(json_path, root, 'val')}\n"
                           f"coco-test = {spec(json_path, root, 'test')}")
    with caplog.at_level(logging.INFO, logger="dinov2clip"):
        data.run(cfg)
    val = cfg.root / "evalsets" / "coco-val"
    shards = sorted((val / "test").glob("*.tar"))
    assert [p.name for p in shards] == ["0.tar", "1.tar", "2.tar"]  # slices 0-2, 3-5, 6-7
    samples = [s for p in shards for s in read_shard(p, multi_caption=True).samples]
    assert [s.key for s in samples] == [f"{i:06d}_COCO_val_{i:012d}" for i in (0, 1, 3, 4, 7)]
    assert all(s.captions == [f"image {i} caption {c}" for c in range(2)]
               for s, i in zip(samples, (0, 1, 3, 4, 7), strict=True))
    with tarfile.open(shards[1]) as tar:
        names = tar.getnames()
        png = tar.extractfile("000004_COCO_val_000000000004.png").read()
    assert names[-2:] == ["000004_COCO_val_000000000004.png", "000004_COCO_val_000000000004.txt"]
    assert Image.open(io.BytesIO(png)).size[0] > 0
    record = json.loads((val / "source.json").read_text())
    assert record["skipped"] == {"missing_image": 1, "unreadable_image": 1, "no_caption": 1,
                                 "no_filename": 1}
    assert (record["n_images"], record["n_captions"], record["n_shards"]) == (5, 10, 3)
    assert "eval set coco-val: installed, 5 images, 10 captions in 3 shards from " \
           f"{json_path} split val; skipped: 1 missing_image, 1 unreadable_image, 1 no_caption, " \
           "1 no_filename; 1 empty caption lines dropped" in caplog.text
    assert record["empty_caption_lines"] == 1
    test_samples = read_shard(cfg.root / "evalsets" / "coco-test" / "test" / "0.tar", True)
    assert [s.key for s in test_samples.samples] == ["000000_COCO_test_000000000008",
                                                     "000001_COCO_test_000000000009"]


def test_a_killed_build_resumes_after_its_last_finished_shard(tmp_path, karpathy):
    json_path, root = karpathy
    cfg = config(tmp_path, f"v = {spec(json_path, root, 'val')}")
    data.run(cfg)
    dest = cfg.root / "evalsets" / "v"
    full = json.loads((dest / "source.json").read_text())
    first_shard = (dest / "test" / "0.tar").stat().st_mtime_ns
    # The state a kill after shard 0 leaves: its tar and progress marker, the pending record.
    (dest / "pending.json").write_text(json.dumps(full["source"]))
    for p in [dest / "source.json", *(dest / "progress").glob("[12].json"),
              *(dest / "test").glob("[12].tar")]:
        p.unlink()
    data.run(cfg)
    assert (dest / "test" / "0.tar").stat().st_mtime_ns == first_shard
    assert json.loads((dest / "source.json").read_text()) == full  # counts include shard 0's
    assert not (dest / "pending.json").exists()


def test_bad_karpathy_inputs_are_one_line_errors(tmp_path, karpathy):
    json_path, root = karpathy
    with pytest.raises(ConfigError, match=r"split: no images in split 'restval' of .* \(splits "
                                          r"there: test, train, val\)"):
        data.run(config(tmp_path, f"v = {spec(json_path, root, 'restval')}"))
    with pytest.raises(ConfigError, match=r"'data.eval_sets.v.split' must be one of train, "
                                          r"restval, val, test, got 'dev'"):
        config(tmp_path, f"v = {spec(json_path, root, 'dev')}")
    with pytest.raises(ConfigError, match=r"image_root: .*/elsewhere is not a directory"):
        data.run(config(tmp_path, f"v = {spec(json_path, tmp_path / 'elsewhere', 'val')}"))
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(ConfigError, match=r"image_root: none of the first 8 images of split 'val' "
                                          r"exist \(looked for .*/elsewhere/val2014/COCO_val_0"):
        data.run(config(tmp_path, f"v = {spec(json_path, tmp_path / 'elsewhere', 'val')}"))
    (tmp_path / "bad.json").write_text('{"annotations": []}')
    with pytest.raises(ConfigError, match="bad.json is not a Karpathy split JSON"):
        data.run(config(tmp_path, f"v = {spec(tmp_path / 'bad.json', root, 'val')}"))
