"""Fixtures shared by the tests; the helpers they use are in tests/helpers.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# Imported from here by tests written before tests/helpers.py; new tests import tests.helpers.
from tests.helpers import (  # noqa: F401
    ONE_THREAD,
    REPO,
    demo_config,
    finish_cli,
    one_thread,
    run_cli,
    start_cli,
    write_shape_classes,
)

# The demo run's umask: not the usual 022, so a file that ignores it (0600, or a fixed 0644)
# shows in tests/test_demo_pipeline.py.
DEMO_UMASK = 0o002

# Every test runs torch on one thread: tiny CPU ops on a shared 2-core machine run several times
# faster so, and match the subprocesses run with ONE_THREAD. (Modules still name it, from when
# it was theirs alone.)
one_torch_thread = pytest.fixture(scope="session", autouse=True)(one_thread)


def pytest_collection_modifyitems(items):
    """The modules with a test that needs the demo run go last, each in its order: the run,
    started before the first test (demo_started), overlaps all the others."""
    late = {item.path for item in items if "demo_run" in item.fixturenames}
    items.sort(key=lambda item: item.path in late)


@pytest.fixture(scope="session", autouse=True)
def demo_started(request, tmp_path_factory):
    """(config, artifacts, process, log): `pipeline run --stage all` on the tiny config, started
    in a subprocess before the first test when a selected test needs it; else None. Its ~20 s,
    half of them a fresh process importing torch, go on beside the tests that do not need it."""
    if not any("demo_run" in item.fixturenames for item in request.session.items):
        yield None
        return
    root = tmp_path_factory.mktemp("demo")
    artifacts = root / "artifacts"
    config = demo_config(root / "demo.toml", artifacts)
    log = root / "demo.log"  # what a user sees
    proc = start_cli(log, "run", "--stage", "all", "--config", str(config), env=ONE_THREAD,
                     umask=DEMO_UMASK)
    yield config, artifacts, proc, log
    if proc.poll() is None:  # the session ended before a test waited for it
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def demo_run(demo_started) -> tuple[Path, Path]:
    """(config path, artifacts dir) after one `pipeline run --stage all` on the tiny config.
    Beside the config, modes.json: the mode of every path under artifacts as the run left it,
    before any test writes there with pytest's umask."""
    config, artifacts, proc, log = demo_started
    finish_cli(proc, log)
    modes = {str(p.relative_to(artifacts)): p.lstat().st_mode & 0o777
             for p in artifacts.rglob("*")}
    (config.parent / "modes.json").write_text(json.dumps(modes))
    return config, artifacts


@pytest.fixture(scope="session")
def demo_model(demo_run):
    """The demo run as a DinoV2Clip on CPU, with CLIP's image tower kept for comparisons."""
    from dinov2clip.models.inference import DinoV2Clip

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


@pytest.fixture
def train_setup(tmp_path) -> tuple[Path, str]:
    """(artifacts dir, train config path) over 300 synthetic embedding pairs in 3 shards."""
    from tests.helpers import make_embeddings, train_config

    art = tmp_path / "artifacts"
    make_embeddings(art, n=300, shard_size=100)
    return art, str(train_config(art))
