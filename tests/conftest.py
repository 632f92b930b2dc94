"""Shared fixtures: a tiny demo config in a temp dir, and one full pipeline run over it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def tiny_config_text(artifacts: Path, **sections: str) -> str:
    """The demo config shrunk for tests, with artifacts under a temp dir."""
    text = (REPO / "configs" / "demo.toml").read_text()
    text = text.replace('artifacts = "artifacts/demo"', f'artifacts = "{artifacts}"')
    text = text.replace('"artifacts/demo/', f'"{artifacts}/')  # models, zero-shot set
    text = text.replace("zeroshot_per_class = 16", "zeroshot_per_class = 3")
    text = text.replace("num_train = 1536", "num_train = 384")
    text = text.replace("num_eval = 250", "num_eval = 60")
    text = text.replace("shard_size = 256", "shard_size = 128")
    text = text.replace("epochs = 8", "epochs = 4")
    text = text.replace("num_workers = 2", "num_workers = 0")
    return text


def run_cli(*args: str, cwd: Path = REPO, check: bool = True,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """The real entry point in a subprocess, as a user runs it."""
    proc = subprocess.run([sys.executable, "-m", "dinov2clip.pipeline", *args], cwd=cwd,
                          capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"pipeline {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> tuple[Path, Path]:
    """(config path, artifacts dir) after one `pipeline run --stage all` on the tiny config."""
    root = tmp_path_factory.mktemp("demo")
    artifacts = root / "artifacts"
    config = root / "demo.toml"
    config.write_text(tiny_config_text(artifacts))
    proc = run_cli("run", "--stage", "all", "--config", str(config))
    (root / "demo.log").write_text(proc.stdout + proc.stderr)  # what a user sees
    return config, artifacts


# --- Use (DinoV2Clip, zero-shot, index/search) ---------------------------------------------------


def write_shape_classes(root: Path, classes=("circle", "square", "triangle"), per_class: int = 4,
                        seed: int = 0, size: int = 96) -> Path:
    """An ImageNet-style folder dataset: root/<shape>/<i>.png, one class per synthetic shape."""
    from dinov2clip.data.synthetic import write_class_folders

    write_class_folders(root, per_class, size, seed, tuple(classes))
    return root


@pytest.fixture(scope="session")
def demo_model(demo_run):
    """The demo run as a DinoV2Clip on CPU, with CLIP's image tower kept for comparisons."""
    from dinov2clip.model import DinoV2Clip

    _, art = demo_run
    return DinoV2Clip.from_pretrained(art / "runs" / "demo", device="cpu", clip_image=True)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """Tiny random DINOv2 (plain and with 4 registers) and CLIP, saved like real checkpoints."""
    from dinov2clip.data.tiny_models import build_tiny_clip, build_tiny_dinov2

    root = tmp_path_factory.mktemp("tiny-models")
    clip_json, clip_ckpt = build_tiny_clip(root / "tiny-clip")
    return {"dino": str(build_tiny_dinov2(root / "tiny-dinov2")),
            "dino_reg": str(build_tiny_dinov2(root / "tiny-dinov2-reg", registers=4)),
            "clip": str(clip_json), "clip_pretrained": str(clip_ckpt)}


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread: fast on a shared 2-core machine, and the same as in subprocesses."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
