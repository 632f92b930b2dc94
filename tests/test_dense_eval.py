"""Segmentation in the eval stage: the demo's shapes set scored end to end through
`pipeline run --stage all`, --save-masks, the reports, and every bad eval.dense value."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from dinov2clip.config import ConfigError, load_config
from dinov2clip.formats.segsets import SegSet, segset_dir
from dinov2clip.store import RunDir
from tests.helpers import run_cli


def brute_miou(pairs: list[tuple[np.ndarray, np.ndarray]], n: int) -> float:
    """Per class, pixels counted with boolean masks over the whole set; 255 left out."""
    ious = []
    for c in range(n):
        inter = sum(int(((p == c) & (t == c)).sum()) for p, t in pairs)
        union = sum(int((((p == c) | (t == c)) & (t != 255)).sum()) for p, t in pairs)
        if union:
            ious.append(inter / union)
    return 100 * sum(ious) / len(ious)


def test_the_demo_scores_its_shapes_set_with_both_heads(demo_run):
    _, art = demo_run
    run = RunDir(art / "runs" / "demo")
    classes, background = SegSet(segset_dir(art, "shapes-seg")).read_classes()
    results = json.loads(run.results.read_text())
    report = run.report.read_text()
    assert "## Open-vocabulary segmentation" in report
    by_head = {}
    for head in ("projector", "talk2dino"):
        res = by_head[head] = json.loads(run.segmentation_results("shapes-seg", head).read_text())
        assert background and res["classes"] == classes == ["background", "circle", "square",
                                                             "triangle", "star"]
        assert res["n_images"] == 8 and 0.0 <= res["mIoU"] <= 100.0 and res["head"] == head
        assert res["protocol"]["window"] == 448 and res["protocol"]["stride"] == 224
        assert res["protocol"]["short_side"] == 448 and res["protocol"]["bg_threshold"] == 0.3
        assert len(res["protocol"]["prompts"]) == 7 and res["seconds"] > 0
        assert res["backbone"].endswith("tiny-dinov2") and res["bg_clean"] is False
        assert results["segmentation"]["shapes-seg"][head] == res
        row = f"| shapes-seg | {head} | 8 | {res['mIoU']:.2f} | {res['pixel_accuracy']:.2f} |"
        assert row in report
        for png in [run.segmentation_plot("shapes-seg", head),
                    run.segmentation_overlay("shapes-seg", head, "00000")]:
            with Image.open(png) as im:
                assert im.format == "PNG" and im.width > 300
        assert not run.segmentation_overlay("shapes-seg", head, "00002").exists()  # overlays=2
    # two heads, two answers over the same images: the per-class IoU is the learned head's own
    assert by_head["projector"]["per_class_iou"] != by_head["talk2dino"]["per_class_iou"]


def test_saved_masks_score_what_the_json_says(demo_run, tmp_path):
    config, art = demo_run
    copy = tmp_path / "demo-copy"
    shutil.copytree(art / "runs" / "demo", copy)
    run_cli("eval", "--config", str(config), "--run", str(copy), "--save-masks",
            "--set", "eval.zeroshot=''", env={"OMP_NUM_THREADS": "1"})
    run = RunDir(copy)
    res = json.loads(run.segmentation_results("shapes-seg", "projector").read_text())
    pairs = []
    for sample in SegSet(segset_dir(art, "shapes-seg")).samples():
        with Image.open(run.segmentation_mask("shapes-seg", "projector", sample.key)) as im:
            mask = np.asarray(im)
        label = sample.read_label()
        assert mask.shape == label.shape and ((mask == 255) == (label == 255)).all()
        assert mask[label != 255].max() < 5
        pairs.append((mask, label))
    assert res["mIoU"] == pytest.approx(brute_miou(pairs, 5), abs=1e-9)


@pytest.mark.parametrize("setting, words", [
    ("head = 'talk3dino'", "'eval.dense.head' must be one of projector"),
    ("head = ['projector', 'talk3dino']", "'eval.dense.head' must be one of projector"),
    ("head = []", "'eval.dense.head' names no head"),
    ("head = ['projector', 'projector']", "'eval.dense.head' names a head twice"),
    ("stride = 500", "'eval.dense.stride' must not exceed window"),
    ("window = 0", "'eval.dense.window' must be at least 1"),
    ("bg_threshold = 1.5", "'eval.dense.bg_threshold' is a cosine"),
    ("overlays = -1", "'eval.dense.overlays' must be at least 0"),
    ("sets = ['../x']", "'eval.dense.sets' holds '../x'"),
    ("threshold = 0.3", "unknown key 'eval.dense.threshold'"),
])
def test_every_bad_dense_value_fails_when_read(tmp_path, setting, words):
    path = tmp_path / "c.toml"
    path.write_text(f"[eval.dense]\n{setting}\n")
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(".", r"\.")):
        load_config(path)


def test_a_missing_segmentation_set_is_one_line(demo_run):
    config, _ = demo_run
    proc = run_cli("eval", "--config", str(config), "--set", "eval.dense.sets=['nope']",
                   check=False)
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert lines[-1].startswith("error: eval.dense.sets: no segmentation set 'nope'")
    assert "Traceback" not in proc.stderr
