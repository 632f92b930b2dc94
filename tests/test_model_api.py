"""DinoV2Clip gives the embeddings the pipeline gives: extract + projector, within fp16 rounding."""

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from dinov2clip.config import ConfigError
from dinov2clip.formats.webdataset import read_shard
from dinov2clip.models.preprocess import decode, normalise, resize_and_crop
from dinov2clip.pipeline import app
from dinov2clip.store import pool

N = 12  # eval images compared


@pytest.fixture(scope="module")
def eval_samples(demo_run):
    _, art = demo_run
    samples = read_shard(art / "evalsets" / "shapes-test" / "test" / "0.tar", True).samples[:N]
    emb = art / "embeddings" / "shapes-test" / "tiny"
    arrays = {a: torch.from_numpy(np.load(emb / a / "0.npy")).float()
              for a in ("dino_cls", "dino_mean", "clip_image", "clip_text")}
    return samples, arrays


def _min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1).min())


def test_from_package_root():
    import dinov2clip
    from dinov2clip import DinoV2Clip
    from dinov2clip.models.inference import DinoV2Clip as Direct

    assert DinoV2Clip is Direct and "DinoV2Clip" in dinov2clip.__all__


def test_image_embeddings_match_extract_then_projector(demo_model, eval_samples):
    samples, arrays = eval_samples
    images = [decode(s.image) for s in samples]
    api = demo_model.encode_image(images)
    with torch.no_grad():  # the pipeline path: cached fp16 features -> pool -> projector
        x = pool(arrays["dino_cls"][:N], arrays["dino_mean"][:N], "token_mean", 256)
        pipeline = F.normalize(demo_model.projector(x), dim=-1)
    assert api.shape == (N, 32) and api.dtype == torch.float32
    np.testing.assert_allclose(api.norm(dim=1), 1.0, atol=1e-5)
    assert _min_cosine(api, pipeline) > 0.999
    # Different images give different embeddings: the match above is not a constant vector.
    assert _min_cosine(api, pipeline.roll(1, dims=0)) < 0.999
    clip = demo_model.encode_clip_image(images)
    assert _min_cosine(clip, arrays["clip_image"][:N]) > 0.999


def test_text_embeddings_match_extract(demo_model, eval_samples):
    samples, arrays = eval_samples
    captions = samples[0].captions + samples[1].captions  # clip_text rows in caption order
    api = demo_model.encode_text(captions)
    assert api.shape == (len(captions), 32)
    assert _min_cosine(api, arrays["clip_text"][:len(captions)]) > 0.999


def test_tensor_inputs_equal_the_pil_path(demo_model, eval_samples):
    samples, _ = eval_samples
    images = [decode(s.image) for s in samples[:3]]
    from_pil = demo_model.encode_image(images)
    spec = demo_model.dino_spec
    u8 = torch.from_numpy(np.stack([resize_and_crop(im, spec) for im in images]))
    torch.testing.assert_close(demo_model.encode_image(u8), from_pil)
    torch.testing.assert_close(demo_model.encode_image(normalise(u8, spec)), from_pil)
    demo_model.batch_size = 2  # batches of 2 + 1: the same rows, in order
    try:
        torch.testing.assert_close(demo_model.encode_image(images), from_pil)
        torch.testing.assert_close(demo_model.encode_image(u8), from_pil)
    finally:
        demo_model.batch_size = 64
    with pytest.raises(ValueError, match="uint8"):
        demo_model.encode_image(u8.permute(0, 3, 1, 2))  # channels-first uint8 is ambiguous


def test_similarity_is_cosine_and_accepts_raw_inputs(demo_model, eval_samples):
    samples, _ = eval_samples
    images = [decode(s.image) for s in samples[:2]]
    texts = ["a red circle", "a blue square", "a star"]
    img, txt = demo_model.encode_image(images), demo_model.encode_text(texts)
    sim = demo_model.similarity(img, txt)
    assert sim.shape == (2, 3)
    torch.testing.assert_close(sim, img @ txt.T)
    torch.testing.assert_close(demo_model.similarity(images, texts), sim)
    assert float(sim.abs().max()) <= 1.0 + 1e-5


def test_empty_text_is_a_config_error(demo_model):
    for bad in ([], [""], ["a dog", "   "]):
        with pytest.raises(ConfigError, match="empty"):
            demo_model.encode_text(bad)


def test_run_without_weights_or_with_mismatched_dims(demo_run, tmp_path):
    from dinov2clip import DinoV2Clip

    _, art = demo_run
    run = art / "runs" / "demo"
    with pytest.raises(ConfigError, match="run not found"):
        DinoV2Clip.from_pretrained(tmp_path / "nope", device="cpu")
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(run / "config.json", bare)
    shutil.copy(run / "projector.json", bare)
    with pytest.raises(ConfigError, match="model.safetensors missing"):
        DinoV2Clip.from_pretrained(bare, device="cpu")
    # A run whose config pools differently from what its projector was trained on.
    odd = tmp_path / "odd"
    shutil.copytree(run, odd, ignore=shutil.ignore_patterns("checkpoints", "eval", "*.pt"))
    cfg = json.loads((odd / "config.json").read_text())
    cfg["config"]["train"]["pooling"] = "concat"
    (odd / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="96-d concat features but the projector expects 48"):
        DinoV2Clip.from_pretrained(odd, device="cpu")


def test_towers_left_out_say_so(demo_run):
    from dinov2clip import DinoV2Clip

    _, art = demo_run
    text_only = DinoV2Clip.from_pretrained(art / "runs" / "demo", device="cpu",
                                           dtype=torch.bfloat16, image_tower=False)
    assert text_only.dtype == torch.float32  # CPU computes in fp32 whatever the GPU dtype
    assert text_only.clip.visual is None and text_only.dino is None
    assert text_only.encode_text("a dog").shape == (1, 32)
    with pytest.raises(ConfigError, match="image_tower=False"):
        text_only.encode_image(torch.zeros(1, 224, 224, 3, dtype=torch.uint8))
    with pytest.raises(ConfigError, match="clip_image=True"):
        text_only.encode_clip_image(torch.zeros(1, 224, 224, 3, dtype=torch.uint8))


def test_cli_bad_run_exits_2_with_one_line(tmp_path):
    (tmp_path / "imgs").mkdir()
    write_png(tmp_path / "imgs" / "a.png")
    result = CliRunner().invoke(app, ["index", "--run", str(tmp_path / "missing"),
                                      "--images", str(tmp_path / "imgs")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: run not found")


def write_png(path):
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 10, 10)).save(path)
