"""The projectors: the seed architecture exactly, the variants, and strict save/load."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from dinov2clip.config import ConfigError, ProjectorConfig
from dinov2clip.models.projector import (
    PreNormBlock,
    Projector,
    ResidualBlock,
    count_parameters,
)


def test_default_is_the_seed_projector_with_54_6m_parameters():
    with torch.device("meta"):
        model = Projector(ProjectorConfig())
    # 768->2048, 6 blocks of 2 x (2048x2048 + LN), LN, 2048->1024, 1024->512, LN(512)
    blocks = 6 * (2 * (2048 * 2048 + 2048) + 2 * 2 * 2048)
    expected = (768 * 2048 + 2048) + blocks + 2 * 2048 + (2048 * 1024 + 1024) + (
        1024 * 512 + 512) + 2 * 512
    assert count_parameters(model) == expected == 54_608_384
    names = [type(m).__name__ for m in model.net]
    assert names == ["Linear"] + ["ResidualBlock"] * 6 + ["LayerNorm", "Linear", "GELU",
                                                          "Linear", "LayerNorm"]


def test_blocks_compute_the_documented_formulas():
    torch.manual_seed(0)
    x = torch.randn(5, 12)
    b = ResidualBlock(12)
    manual = x + b.ln2(b.fc2(F.gelu(b.ln1(b.fc1(x)))))
    torch.testing.assert_close(b(x), manual)
    p = PreNormBlock(12)
    torch.testing.assert_close(p(x), x + p.fc2(F.gelu(p.fc1(p.ln(x)))))


def test_linear_baseline_and_widths_follow_the_config():
    lin = Projector(ProjectorConfig(kind="linear", in_dim=10, out_dim=4))
    assert count_parameters(lin) == 10 * 4 + 4
    small = Projector(ProjectorConfig(kind="prenorm", in_dim=10, out_dim=4, width=8, depth=3))
    assert sum(isinstance(m, PreNormBlock) for m in small.net) == 3
    assert small(torch.randn(2, 10)).shape == (2, 4)
    with pytest.raises(ConfigError, match="'kind' must be one of residual, linear, prenorm"):
        Projector(ProjectorConfig(kind="mlp"))


@pytest.mark.parametrize("kind", ["residual", "prenorm", "linear"])
def test_save_and_from_pretrained_round_trip_with_input_statistics(tmp_path, kind):
    cfg = ProjectorConfig(kind=kind, in_dim=10, out_dim=4, width=8, depth=2, head_width=6,
                          standardize=True)
    torch.manual_seed(1)
    model = Projector(cfg)
    model.input_norm.mean.copy_(torch.randn(10))
    model.input_norm.std.copy_(torch.rand(10) + 0.5)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "projector.json").read_text())["kind"] == kind
    loaded = Projector.from_pretrained(tmp_path)
    x = torch.randn(3, 10)
    torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)
    torch.testing.assert_close(loaded.input_norm.std, model.input_norm.std, rtol=0, atol=0)


def test_from_pretrained_is_strict(tmp_path):
    cfg = ProjectorConfig(kind="linear", in_dim=6, out_dim=3)
    Projector(cfg).save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    save_file({**state, "stray": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(RuntimeError, match="stray"):
        Projector.from_pretrained(tmp_path)
    (tmp_path / "projector.json").unlink()
    with pytest.raises(ConfigError, match="projector.json missing"):
        Projector.from_pretrained(tmp_path)
