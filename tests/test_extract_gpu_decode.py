"""extract.decode=gpu, run on a CPU device: the same code the GPU runs, against the CPU path.

Crops cut on the device equal resize_and_crop's pixel for pixel where the reference resizes with
torchvision, and nearly so where it resizes with PIL; the embeddings of every image agree with the
CPU path's to cosine >= 0.999 for every array; bad samples are skipped and counted alike.
"""

import io
import json
import tarfile
from collections import Counter
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from dinov2clip.config import ConfigError, ExtractConfig, load_config
from dinov2clip.extract import run
from dinov2clip.extract.gpu_decode import crop_on_device, is_whole_jpeg, resolve_decode
from dinov2clip.models.preprocess import PreprocessSpec, decode, resize_and_crop
from tests.extract_utils import extract_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CPU = torch.device("cpu")
ARRAYS = ("dino_cls", "dino_mean", "clip_image", "clip_text")
SIZES = [(256, 341), (341, 256), (256, 256), (400, 256), (256, 257), (300, 255), (200, 150),
         (227, 256), (383, 256), (640, 480)]


def photo(w: int, h: int, seed: int, fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    """Smooth colour fields, a sharp-edged block and noise, like a photo; encoded as fmt."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray((rng.random((h // 16 + 2, w // 16 + 2, 3)) * 255).astype(np.uint8))
    arr = np.asarray(coarse.resize((w, h), Image.BICUBIC)).astype(np.int16)
    arr[h // 3: h // 2, w // 4: w // 2] = (250, 20, 30)
    arr += rng.integers(-12, 13, arr.shape, dtype=np.int16)
    buf = io.BytesIO()
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).convert(mode).save(buf, fmt)
    return buf.getvalue()


def write_shard(path, samples: list[tuple[str, bytes, str]], ext: str = "jpg") -> None:
    with tarfile.open(path, "w") as tar:
        for key, image, caption in samples:
            for name, data in ((f"{key}.{ext}", image), (f"{key}.txt", caption.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


SPECS = {
    "dino (torchvision)": PreprocessSpec(256, 224, "bicubic", (0.5,) * 3, (0.5,) * 3,
                                         backend="torch", crop_rounding="floor"),
    "squash": PreprocessSpec(224, 224, "bicubic", (0.5,) * 3, (0.5,) * 3, resize_mode="squash",
                             backend="torch"),
    "longest": PreprocessSpec(224, 224, "bilinear", (0.5,) * 3, (0.5,) * 3,
                              resize_mode="longest", backend="torch", fill=7),
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_device_crops_equal_the_reference_geometry(name):
    spec = SPECS[name]
    imgs = [decode(photo(w, h, i)) for i, (w, h) in enumerate(SIZES + SIZES[:3])]  # repeats
    tensors = [torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in imgs]
    got = crop_on_device(tensors, spec).numpy()
    want = np.stack([resize_and_crop(im, spec) for im in imgs])
    assert got.shape == want.shape
    assert np.array_equal(got, want)


def test_pil_resized_crops_differ_by_rounding_only():
    """open_clip resizes with PIL; on the device it is torchvision's antialiased bicubic."""
    spec = PreprocessSpec(224, 224, "bicubic", (0.5,) * 3, (0.5,) * 3)
    imgs = [decode(photo(w, h, i)) for i, (w, h) in enumerate(SIZES)]
    tensors = [torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in imgs]
    got = crop_on_device(tensors, spec).numpy().astype(int)
    want = np.stack([resize_and_crop(im, spec) for im in imgs]).astype(int)
    diff = np.abs(got - want)
    assert diff.mean() < 0.1 and (diff > 2).mean() < 1e-3


def test_whole_jpeg_check_and_decode_modes():
    jpeg = photo(64, 48, 0)
    assert is_whole_jpeg(jpeg)
    assert not is_whole_jpeg(jpeg[: len(jpeg) // 2])
    assert not is_whole_jpeg(photo(64, 48, 0, "PNG"))
    specs = list(SPECS.values())
    assert resolve_decode("auto", CPU, specs) is False  # auto: the device path on CUDA only
    assert resolve_decode("gpu", CPU, specs) is True
    assert resolve_decode("cpu", CPU, specs) is False
    with pytest.raises(ConfigError, match="'decode' must be one of cpu, gpu, auto"):
        ExtractConfig(decode="nvjpeg")  # refused when the config is read
    lanczos = replace(specs[0], interpolation="lanczos")
    with pytest.raises(ConfigError, match="lanczos"):
        resolve_decode("gpu", CPU, [lanczos])
    float_resize = replace(specs[0], resize_dtype="float32")  # DINOv3's processor
    with pytest.raises(ConfigError, match="resizes in float"):
        resolve_decode("gpu", CPU, [float_resize])


@pytest.fixture(scope="module")
def both_paths(tmp_path_factory, tiny_models):
    """The same shards extracted with decode=cpu and decode=gpu (on the CPU): their outputs."""
    root = tmp_path_factory.mktemp("gpu-decode")
    art = root / "art"
    train = art / "shards" / "photos"
    train.mkdir(parents=True)
    samples = [(f"p{i:03d}", photo(w, h, i), f"photo {i}") for i, (w, h) in enumerate(SIZES)]
    write_shard(train / "00000.tar", samples[:6])
    write_shard(train / "00001.tar", samples[6:] + [
        ("grey", photo(256, 320, 50, mode="L"), "a grey JPEG"),
        ("cmyk", photo(320, 256, 53, mode="CMYK"), "a CMYK JPEG (print workflows save them)"),
        ("png", photo(300, 256, 51, "PNG"), "a PNG saved as .jpg"),
        ("cut", samples[0][1][:3000], "a cut JPEG"),
        ("fake", b"\xff\xd8\xff" + bytes(200) + b"\xff\xd9", "JPEG markers around nothing"),
        ("html", b"<html>not found</html>", "not an image"),
        ("last", photo(256, 300, 52), "the last one"),
    ])
    evalset = art / "evalsets" / "multi" / "test"
    evalset.mkdir(parents=True)
    write_shard(evalset / "0.tar", [
        ("e0", photo(256, 256, 60), "one\ntwo\nthree"),
        ("e1", b"\xff\xd8\xff" + bytes(100) + b"\xff\xd9", "lost\nwith\nits captions"),
        ("e2", photo(341, 256, 61), "four\nfive"),
    ])
    out = {}
    for mode in ("cpu", "gpu"):
        cfg = load_config(extract_config(root / f"{mode}.toml", art, tiny_models,
                                         ["shards/photos", "evalsets/multi"], tag=mode,
                                         decode=mode, batch_size=5))
        run(cfg)
        out[mode] = art / "embeddings"
    return out


def load(emb_dir, shard: str) -> dict:
    meta = pq.read_table(emb_dir / "meta" / f"{shard}.parquet").to_pydict()
    return {"meta": meta, **{a: np.load(emb_dir / a / f"{shard}.npy").astype(np.float32)
                             for a in ARRAYS}}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("dataset, shards", [("photos", ["00000", "00001"]), ("multi", ["0"])])
def test_embeddings_match_the_cpu_path_per_image(both_paths, dataset, shards):
    for shard in shards:
        cpu = load(both_paths["cpu"] / dataset / "cpu", shard)
        gpu = load(both_paths["gpu"] / dataset / "gpu", shard)
        assert gpu["meta"] == cpu["meta"]  # same rows, same order, same caption offsets
        for name in ARRAYS:
            assert gpu[name].shape == cpu[name].shape
            assert cosines(gpu[name], cpu[name]).min() >= 0.999, (shard, name)
        # DINOv2's reference resize is torchvision's: its inputs are the same pixels.
        np.testing.assert_allclose(gpu["dino_cls"], cpu["dino_cls"], atol=2e-3)
        np.testing.assert_array_equal(gpu["clip_text"], cpu["clip_text"])


def test_bad_samples_are_skipped_and_counted_alike(both_paths):
    for dataset in ("photos", "multi"):
        cpu = json.loads((both_paths["cpu"] / dataset / "cpu" / "manifest.json").read_text())
        gpu = json.loads((both_paths["gpu"] / dataset / "gpu" / "manifest.json").read_text())
        assert gpu["skipped"] == cpu["skipped"]
        assert (gpu["n_images"], gpu["n_captions"]) == (cpu["n_images"], cpu["n_captions"])
    photos = json.loads((both_paths["gpu"] / "photos" / "gpu" / "manifest.json").read_text())
    assert photos["skipped"] == {"corrupt_image": 1, "not_an_image": 2}  # cut; fake, html
    assert photos["n_images"] == 14  # 10 photos, the grey and CMYK JPEGs, the PNG, the last one


def test_fallbacks_are_counted(tiny_models, tmp_path):
    from dinov2clip.extract.dataset import ShardBatches, ShardJob, collate
    from dinov2clip.extract.gpu_decode import DeviceDecoder, ReadJpegBytes
    from dinov2clip.models.loaders import load_clip, load_dino

    _, dino_spec = load_dino(tiny_models["dino"], CPU)
    _, tokenizer, clip_spec = load_clip(tiny_models["clip"], tiny_models["clip_pretrained"], CPU)
    write_shard(tmp_path / "0.tar", [("a", photo(256, 300, 1), "x"),
                                     ("b", photo(300, 256, 2, "PNG"), "y"),
                                     ("c", b"\xff\xd8\xff" + bytes(50) + b"\xff\xd9", "z"),
                                     ("d", photo(256, 256, 3), "w")])
    samples = ReadJpegBytes(dino_spec, clip_spec, tokenizer)
    decoder = DeviceDecoder(dino_spec, clip_spec, CPU)
    batches = [decoder(collate([samples[it] for it in items]))
               for items in ShardBatches([ShardJob(tmp_path / "0.tar", False)], 8)]
    assert decoder.decoded == Counter({"device": 2, "not_a_whole_jpeg": 1})
    assert [r["key"] for r in batches[0].rows] == ["a", "b", "d"]
    assert batches[0].dino_u8.shape == (3, 224, 224, 3) and batches[0].tokens.shape[0] == 3
    assert batches[0].failures == Counter({"not_an_image": 1})
