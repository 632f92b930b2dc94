"""Device choice: "auto" ending on the CPU says why; "cuda" without CUDA is one line, exit 2."""

import logging
import warnings

import pytest
import torch
from typer.testing import CliRunner

from dinov2clip import device
from dinov2clip.config import ConfigError
from dinov2clip.pipeline import app
from tests.helpers import extract_config, make_embeddings, train_config

OLD_DRIVER = ("CUDA initialization: The NVIDIA driver on your system is too old (found version "
              "11040). Please update your GPU driver by downloading and installing a new version")


@pytest.fixture
def no_gpu(monkeypatch):
    """A CUDA build of torch on a box whose driver is too old for it."""
    def device_count():
        warnings.warn(OLD_DRIVER, UserWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch._C, "_cuda_getDeviceCount", device_count, raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(device, "_warned_cpu", False)


def test_auto_on_the_cpu_warns_once_and_says_why(no_gpu, caplog):
    with caplog.at_level(logging.WARNING, logger="dinov2clip"):
        assert device.resolve_device("auto") == torch.device("cpu")
        assert device.resolve_device("auto") == torch.device("cpu")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1
    assert warned[0].startswith('device "auto" runs on the CPU: CUDA initialization: The NVIDIA '
                                "driver on your system is too old (found version 11040)")
    assert "built for CUDA 12.4" in warned[0]
    assert device.resolve_device("cpu") == torch.device("cpu")


def test_reasons_for_no_cuda(no_gpu, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert device.why_no_cuda() == "CUDA_VISIBLE_DEVICES hides every GPU"
    monkeypatch.setattr(torch.version, "cuda", None)
    assert device.why_no_cuda().endswith("is a CPU-only build")


def test_cuda_without_cuda_is_a_config_error(no_gpu):
    with pytest.raises(ConfigError, match=r"^train.device = 'cuda:1' asked for, but CUDA is not "
                                          "available: CUDA initialization: The NVIDIA driver"):
        device.resolve_device("cuda:1", "train.device")


def test_extract_and_train_refuse_cuda_in_one_line(tmp_path, no_gpu):
    art = tmp_path / "artifacts"
    make_embeddings(art, n=100, shard_size=100)
    train = CliRunner().invoke(app, ["train", "-c", str(train_config(art)), "--set",
                                     'train.device="cuda"'])
    assert train.exit_code == 2 and len(train.stderr.strip().splitlines()) == 1, train.output
    assert train.stderr.startswith("error: train.device = 'cuda' asked for, but CUDA is not "
                                   "available: CUDA initialization: The NVIDIA driver")
    assert not (art / "runs").exists()
    (art / "shards" / "toy").mkdir(parents=True)
    (art / "shards" / "toy" / "00000.tar").write_bytes(b"")
    models = {"dino": "never-loaded", "clip": "never-loaded", "clip_pretrained": ""}
    config = extract_config(tmp_path / "x.toml", art, models, ["shards/toy"], device="cuda")
    extract = CliRunner().invoke(app, ["extract", "-c", str(config)])
    assert extract.exit_code == 2 and len(extract.stderr.strip().splitlines()) == 1
    assert extract.stderr.startswith("error: extract.device = 'cuda' asked for, but CUDA is not")
