"""`pipeline segment` on the demo run: label maps at each image's size, overlays, the skipped
file counted, and every bad argument one `error:` line with exit 2."""

import json
import random

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dinov2clip.data.synthetic import draw, random_scene
from dinov2clip.pipeline import app
from tests.helpers import ONE_THREAD, run_cli


@pytest.fixture
def folder(tmp_path):
    rng = random.Random(5)
    images = tmp_path / "pics"
    (images / "sub").mkdir(parents=True)
    draw(random_scene(rng), 120, rng).save(images / "a.png")
    draw(random_scene(rng), 90, rng).save(images / "sub" / "b.jpg")
    (images / "broken.png").write_bytes(b"not an image")
    return images


def test_segment_writes_label_maps_and_overlays(demo_run, folder, tmp_path):
    _, art = demo_run
    out = tmp_path / "out"
    run_cli("segment", "--run", str(art / "runs" / "demo"), "--images", str(folder),
            "--classes", "circle, square", "--background", "0.3", "--out", str(out),
            "--device", "cpu", env=ONE_THREAD)
    summary = json.loads((out / "segment.json").read_text())
    assert summary["classes"] == ["background", "circle", "square"]
    assert summary["n_images"] == 2 and list(summary["skipped"]) == [str(folder / "broken.png")]
    for stem, source in [("a", folder / "a.png"), ("sub__b", folder / "sub" / "b.jpg")]:
        with Image.open(out / f"{stem}.png") as mask, Image.open(source) as im:
            assert mask.size == im.size and mask.mode == "L"
            assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 1, 2}
        assert (out / f"{stem}_overlay.png").stat().st_size > 1000


@pytest.mark.parametrize("args, words", [
    (["--classes", "cat,,dog"], "--classes 'cat,,dog': give comma-separated names"),
    (["--classes", "cat,cat"], "--classes 'cat,cat': a class is named twice"),
    (["--classes", "cat", "--background", "3"], "--background is a cosine threshold"),
    (["--classes", "cat", "--images", "/nonexistent/x"], "--images: not a folder"),
])
def test_bad_arguments_are_one_line(tmp_path, args, words):
    base = ["segment", "--run", str(tmp_path), "--images", str(tmp_path)]
    result = CliRunner().invoke(app, base + args)
    assert result.exit_code == 2, result.output
    assert f"error: {words}" in result.output and "Traceback" not in result.output


def test_pamr_refines_what_segment_writes(demo_run, demo_model, folder, tmp_path,
                                         monkeypatch):
    from dinov2clip.dense import pamr as pamr_module
    from dinov2clip.dense.protocol import Protocol

    refined = []  # the random demo model labels every pixel alike: count the refinements
    real = pamr_module.pamr
    monkeypatch.setattr(pamr_module, "pamr", lambda *a, **k: refined.append(1) or real(*a, **k))
    _, art = demo_run
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "segment", "--run", str(art / "runs" / "demo"), "--images", str(folder), "--classes",
        "circle, square", "--background", "0.3", "--pamr", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert len(refined) == windows(folder / "a.png") + windows(folder / "sub" / "b.jpg")
    summary = json.loads((out / "segment.json").read_text())
    assert summary["protocol"]["pamr"]["iterations"] == 10
    assert summary["protocol"]["bg_threshold"] == 0.3
    with Image.open(out / "a.png") as mask:
        written = np.asarray(mask)
    labels = demo_model.segment(folder / "a.png", ["circle", "square"], background=0.3,
                                pamr=True)
    assert (written == labels.numpy()).all()
    seen = len(refined)
    demo_model.segment(folder / "a.png", ["circle"], protocol=Protocol(pamr=True))
    assert len(refined) == seen  # the argument decides, as it does for background


def windows(path) -> int:
    """How many 448 windows the protocol cuts the image into."""
    from dinov2clip.dense.protocol import window_boxes

    with Image.open(path) as im:
        w, h = im.size
    scale = 448 / min(w, h)
    return len(window_boxes(round(h * scale), round(w * scale), 448, 224))
