"""DINOv3 ViT as the backbone: its own preprocessing, its register tokens, and the refusals
(ConvNeXt, a gated repo without access), on a tiny random model loaded from disk."""

import http.server
import threading

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dinov2clip.config import ConfigError
from dinov2clip.extract.mapper import Mapper
from dinov2clip.models.loaders import load_clip, load_dino
from dinov2clip.models.preprocess import normalise, resize_and_crop
from dinov2clip.pipeline import app
from tests.helpers import hub_here
from tests.test_extract_preprocess import SIZES, photo

CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dinov3(tmp_path_factory) -> str:
    from dinov2clip.data.tiny_models import build_tiny_dinov3

    return str(build_tiny_dinov3(tmp_path_factory.mktemp("dinov3") / "tiny-dinov3"))


def test_preprocessing_equals_auto_image_processor(dinov3):
    from transformers import AutoImageProcessor

    proc = AutoImageProcessor.from_pretrained(dinov3)
    _, spec = load_dino(dinov3, CPU)
    assert (spec.resize_mode, spec.crop, spec.interpolation) == ("squash", 224, "bilinear")
    images = [photo(w, h, 300 + i) for i, (w, h) in enumerate(SIZES)]
    ref = proc(images=images, return_tensors="pt")["pixel_values"]  # (N, 3, 224, 224)
    for img, r in zip(images, ref, strict=True):
        x = normalise(torch.from_numpy(resize_and_crop(img, spec))[None], spec)[0]
        mad = (x - r).abs().mean().item()
        assert mad < 1e-5, (img.size, mad)
    # Rounding the resize to uint8, as the DINOv2 path does, would miss the tolerance: the
    # float path is what makes the match.
    from dataclasses import replace

    u8 = replace(spec, resize_dtype="uint8")
    img = images[3]
    x = normalise(torch.from_numpy(resize_and_crop(img, u8))[None], u8)[0]
    assert (x - ref[3]).abs().mean().item() > 1e-4


def test_patch_mean_excludes_cls_and_the_four_registers(dinov3, tiny_models):
    dino, spec = load_dino(dinov3, CPU)
    clip, tokenizer, clip_spec = load_clip(tiny_models["clip"], tiny_models["clip_pretrained"],
                                           CPU)
    mapper = Mapper(dino, spec, clip, clip_spec, CPU, torch.float32)
    assert (mapper.n_registers, mapper.n_patch_tokens) == (4, 196)
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (3, 224, 224, 3), generator=g).float()
    emb = mapper(images, torch.randint(0, 256, (3, 224, 224, 3), dtype=torch.uint8, generator=g),
                 tokenizer(["a", "b", "c"]))
    # By hand: DINOv3's own forward on the same pixels; tokens are [CLS, 4 registers, 14 x 14].
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    x = (images.permute(0, 3, 1, 2) / 255 - mean) / std
    with torch.inference_mode():
        hidden = dino(pixel_values=x).last_hidden_state
    assert hidden.shape[1] == 1 + 4 + 196
    patches = hidden[:, 5:]
    np.testing.assert_allclose(emb.dino_mean, patches.mean(1).half().numpy(), atol=1e-3)
    np.testing.assert_allclose(emb.dino_cls, hidden[:, 0].half().numpy(), atol=1e-3)
    with_registers = hidden[:, 1:].mean(1).numpy()
    assert np.abs(emb.dino_mean.astype(np.float32) - with_registers).max() > 1e-2


def test_convnext_is_refused_in_one_line(tmp_path):
    from transformers import DINOv3ConvNextConfig, DINOv3ConvNextModel

    DINOv3ConvNextModel(DINOv3ConvNextConfig(hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1])
                        ).save_pretrained(tmp_path / "convnext")
    with pytest.raises(ConfigError, match="DINOv3 ConvNeXt: it has no CLS or patch tokens"):
        load_dino(str(tmp_path / "convnext"), CPU)


class GatedHub:
    """127.0.0.1 answering every request as the hub does for a gated repo without access."""

    def __init__(self):
        self.asked = []  # the paths requested
        asked = self.asked

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.refuse()

            def do_HEAD(self):
                self.refuse()

            def refuse(self):
                asked.append(self.path)
                body = b'{"error": "Access to model is restricted."}'
                self.send_response(403)
                self.send_header("X-Error-Code", "GatedRepo")
                self.send_header("X-Error-Message", "Access to model is restricted.")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_gated_weights_say_what_to_do(tmp_path, tiny_models, monkeypatch):
    (tmp_path / "shards" / "s").mkdir(parents=True)
    (tmp_path / "shards" / "s" / "0.tar").write_bytes(b"")
    config = tmp_path / "c.toml"
    config.write_text(f'artifacts = "{tmp_path}"\n[extract]\ndatasets = ["shards/s"]\n'
                      'dino_model = "facebook/dinov3-vitb16-pretrain-lvd1689m"\n'
                      f'clip_model = "{tiny_models["clip"]}"\n'
                      f'clip_pretrained = "{tiny_models["clip_pretrained"]}"\ndevice = "cpu"\n')
    hub = GatedHub()
    try:
        hub_here(monkeypatch, tmp_path / "hf" / "hub", hub.url)
        result = CliRunner().invoke(app, ["extract", "--config", str(config)])
    finally:
        hub.close()
    assert hub.asked, "the fake hub was asked"
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: 'facebook/dinov3-vitb16-pretrain-lvd1689m' is gated")
    assert "accept its licence" in lines[-1] and "HF_TOKEN" in lines[-1]
    assert "Traceback" not in result.output
