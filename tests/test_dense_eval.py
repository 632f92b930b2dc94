"""Segmentation in the eval stage: the demo's shapes set scored end to end through
`pipeline run --stage all`, --save-masks, the reports, and every bad eval.dense value."""

import json
import re
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


def test_saved_masks_and_pamr_rows_score_what_their_json_says(demo_run, tmp_path):
    # a threshold per head, and PAMR: each head's plain and refined results from one pass (on
    # 4 images, in smaller windows: PAMR is most of the time on a CPU)
    config, art = demo_run
    copy = tmp_path / "demo-copy"
    shutil.copytree(art / "runs" / "demo", copy)
    proc = run_cli("eval", "--config", str(config), "--run", str(copy), "--save-masks",
            "--set", "eval.zeroshot=''", "--set", "eval.dense.pamr=true",
            "--set", "eval.dense.bg_threshold={ projector = 0.25, talk2dino = 0.35 }",
            "--set", "eval.dense.short_side=224", "--set", "eval.dense.window=224",
            "--set", "eval.dense.stride=112", "--set", "eval.dense.max_images=4",
            env={"OMP_NUM_THREADS": "1"})
    # off a terminal, each (set, head) pass logs its progress: here the closing line
    assert re.search(r"segment shapes-seg \(talk2dino\): 4/4 img", proc.stderr), proc.stderr
    run = RunDir(copy)
    report, results = run.report.read_text(), json.loads(run.results.read_text())
    assert list(results["segmentation"]["shapes-seg"]) == [
        "projector", "projector+pamr", "talk2dino", "talk2dino+pamr"]
    samples = list(SegSet(segset_dir(art, "shapes-seg")).samples(4))
    for head, threshold in [("projector", 0.25), ("talk2dino", 0.35)]:
        for pamr in (False, True):
            res = json.loads(run.segmentation_results("shapes-seg", head, pamr).read_text())
            assert res["head"] == head and res["pamr"] is pamr
            assert res["protocol"]["bg_threshold"] == threshold
            assert (res["protocol"]["pamr"] or {}).get("dilations") == (
                [1, 2, 4, 8, 12, 24] if pamr else None)
            pairs = []
            for sample in samples:
                with Image.open(run.segmentation_mask("shapes-seg", head, sample.key,
                                                      pamr)) as im:
                    mask = np.asarray(im)
                label = sample.read_label()
                assert mask.shape == label.shape and ((mask == 255) == (label == 255)).all()
                assert mask[label != 255].max() < 5
                pairs.append((mask, label))
            assert res["mIoU"] == pytest.approx(brute_miou(pairs, 5), abs=1e-9)
            shown = head + (" + PAMR" if pamr else "")
            row = next(x for x in report.splitlines() if x.startswith(f"| shapes-seg | {shown} |"))
            assert f"| 4 | {res['mIoU']:.2f} |" in row and f"| {threshold:.2f} |" in row
            assert run.segmentation_plot("shapes-seg", head, pamr).is_file()
            assert run.segmentation_overlay("shapes-seg", head, "00001", pamr).is_file()


def test_a_threshold_per_head_is_read_as_a_table(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[eval.dense]\nhead = 'talk2dino'\n"
                    "bg_threshold = { projector = 0.2, talk2dino = -0.1 }\n")
    dense = load_config(path).eval.dense
    assert dense.threshold("talk2dino") == -0.1 and dense.threshold("projector") == 0.2
    assert load_config(path, ["eval.dense.bg_threshold=0.4"]).eval.dense.threshold(
        "talk2dino") == 0.4


def test_a_bad_threshold_table_is_one_line_from_the_cli(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[eval.dense]\nhead = ['projector', 'talk2dino']\n")
    proc = run_cli("eval", "--config", str(path), "--set",
                   "eval.dense.bg_threshold={ projector = 0.2, talk3dino = 0.5 }", check=False)
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: --set eval.dense.bg_threshold=") and \
        "'eval.dense.bg_threshold.talk3dino' is not a dense head" in lines[0]


@pytest.mark.parametrize("setting, words", [
    ("head = 'talk3dino'", "'eval.dense.head' must be one of projector"),
    ("head = ['projector', 'talk3dino']", "'eval.dense.head' must be one of projector"),
    ("head = []", "'eval.dense.head' names no head"),
    ("head = ['projector', 'projector']", "'eval.dense.head' names a head twice"),
    ("stride = 500", "'eval.dense.stride' must not exceed window"),
    ("window = 0", "'eval.dense.window' must be at least 1"),
    ("bg_threshold = 1.5", "'eval.dense.bg_threshold' is a cosine"),
    ("bg_threshold = { projector = 0.2 }\nhead = ['projector', 'talk2dino']",
     "'eval.dense.bg_threshold' names no threshold for head 'talk2dino'"),
    ("bg_threshold = { projector = 0.2, talk3dino = 0.5 }",
     "'eval.dense.bg_threshold.talk3dino' is not a dense head"),
    ("bg_threshold = { projector = -1.5 }", "'eval.dense.bg_threshold.projector' is a cosine"),
    ("bg_threshold = 'high'", "'eval.dense.bg_threshold' must be float | dict"),
    ("pamr = 'yes'", "'eval.dense.pamr' must be bool"),
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


def _result(name: str, head: str, miou: float, published: float | None, n: int = 10,
            pamr: bool = False) -> dict:
    return {"set": name, "head": head, "pamr": pamr, "n_images": n, "mIoU": miou,
            "pixel_accuracy": 50.0, "mAcc": 40.0, "seconds": 1.0,
            "protocol": {"window": 448, "stride": 224, "short_side": 448, "bg_threshold": None},
            "published": {"talk2dino_vitb": published, "images": n}}


def test_the_report_averages_each_head_over_the_sets_as_papers_do():
    from dinov2clip.evaluate.seg_report import markdown_lines

    seg = {"voc20": {"projector": _result("voc20", "projector", 40.0, 87.1),
                     "talk2dino": _result("voc20", "talk2dino", 80.0, 87.1),
                     "talk2dino+pamr": _result("voc20", "talk2dino", 82.0, 87.1, pamr=True)},
           "ade20k": {"projector": _result("ade20k", "projector", 10.0, 21.1),
                      "talk2dino": _result("ade20k", "talk2dino", 20.0, 21.1)}}
    md = "\n".join(markdown_lines(seg))
    # mean of the sets each head was scored on; Talk2DINO's mean over the same sets
    assert "| mean of 2 sets | projector | 20 | 25.00 |  |  | 54.1 |" in md
    assert "| mean of 2 sets | talk2dino | 20 | 50.00 |  |  | 54.1 |" in md
    assert "| mean of 1 set" not in md  # talk2dino + PAMR ran on one set only: no mean row
    one = "\n".join(markdown_lines({"voc20": seg["voc20"]}))
    assert "| mean of" not in one  # one set: nothing to average
    seg["ade20k"]["projector"]["published"]["talk2dino_vitb"] = None  # a set with no number
    assert "| mean of 2 sets | projector | 20 | 25.00 |  |  |  |" in "\n".join(
        markdown_lines(seg))
