"""Zero-shot classification: templates, classifier, top-k, folder datasets, the whole command."""

import json

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from dinov2clip.config import ConfigError, UseOptions
from dinov2clip.evaluate.report import markdown, per_class_view
from dinov2clip.evaluate.templates import IMAGENET_80, SHORT, get_templates
from dinov2clip.evaluate.zeroshot import (
    build_classifier,
    class_scores,
    load_folder_dataset,
    print_zeroshot,
    run_zeroshot,
    topk_accuracy,
    trivial_note,
)
from dinov2clip.pipeline import app
from dinov2clip.store import RunDir
from tests.helpers import write_shape_classes


def test_template_sets():
    assert len(IMAGENET_80) == 80 and len(set(IMAGENET_80)) == 80
    assert all(t.count("{}") == 1 for t in IMAGENET_80)
    assert len(SHORT) == 7 and set(SHORT) <= set(IMAGENET_80)
    assert get_templates("imagenet80") == IMAGENET_80
    with pytest.raises(ConfigError, match="unknown template set"):
        get_templates("imagenet81")


def test_classifier_is_the_normalised_mean_of_normalised_prompts():
    gen = torch.Generator().manual_seed(0)
    table = {}

    def encode_text(texts):  # a stand-in text tower: a fixed random unit vector per prompt
        for t in texts:
            table.setdefault(t, F.normalize(torch.randn(8, generator=gen), dim=0))
        return torch.stack([table[t] for t in texts])

    w = build_classifier(encode_text, ["cat", "dog"], ("a {}.", "the {}!"))
    assert w.shape == (2, 8)
    expected = F.normalize(table["a dog."] + table["the dog!"], dim=0)
    torch.testing.assert_close(w[1], expected)
    torch.testing.assert_close(w.norm(dim=1), torch.ones(2))


def test_topk_accuracy_against_a_loop():
    gen = torch.Generator().manual_seed(1)
    images, classifier = torch.randn(50, 4, generator=gen), torch.randn(7, 4, generator=gen)
    logits = F.normalize(images, dim=-1) @ F.normalize(classifier, dim=-1).T
    labels = torch.randint(0, 7, (50,), generator=gen)
    acc = topk_accuracy(images, classifier, labels, ks=(1, 5, 10))
    for k in (1, 5):
        hits = sum(int(labels[i]) in logits[i].argsort(descending=True)[:k].tolist()
                   for i in range(50))
        assert acc[f"top{k}"] == pytest.approx(100 * hits / 50)
    assert acc["top10"] == 100.0  # k beyond the number of classes: every label is in
    assert acc["top1"] <= acc["top5"]
    # Ties go to the lower class index: the same answer whatever order topk would give them.
    # Logits [[a, a, 0], [a, a, 0], [0, a, a]]: each image ties two classes.
    tied = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 2.0, 2.0]])
    got = topk_accuracy(tied, torch.eye(3), torch.tensor([0, 1, 2]), ks=(1, 2))
    assert got == {"top1": pytest.approx(100 / 3), "top2": 100.0}


def test_per_class_top1_and_mean_per_class_recall_by_hand():
    # 3 classes, 7 images; the classifier is the identity, so each image's row is its logits.
    # Class 0: 4 images, 3 right. Class 1: 2 images, none right. Class 2: 1 image, right.
    images = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0.9, 0.1, 0], [0, 1.0, 0],  # 0 0 0 1
                           [1.0, 0, 0], [0, 0, 1.0],  # class 1's: guessed 0 and 2
                           [0, 0, 1.0]])
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    scores, per_class = class_scores(images, torch.eye(3), labels)
    assert per_class == [75.0, 0.0, 100.0]
    assert scores["mean_per_class_recall"] == pytest.approx((75 + 0 + 100) / 3)
    assert scores["top1"] == pytest.approx(100 * 4 / 7)  # the big class weighs more here
    # A tie ([1, 1, 0] for a class-1 image) goes to the lower class, as top-k's ties do.
    tied, _ = class_scores(torch.tensor([[1.0, 1.0, 0]]), torch.eye(3), torch.tensor([1]))
    assert tied["top1"] == 0.0 and tied["mean_per_class_recall"] == 0.0


def test_mean_per_class_recall_is_the_brute_force_mean_on_an_imbalanced_set():
    gen = torch.Generator().manual_seed(3)
    sizes = [40, 12, 5, 2, 1]  # imbalanced: top-1 is dominated by class 0
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    classifier = F.normalize(torch.randn(5, 16, generator=gen), dim=-1)
    images = classifier[labels] + 0.9 * torch.randn(len(labels), 16, generator=gen)
    scores, per_class = class_scores(images, classifier, labels)
    pred = (F.normalize(images, dim=-1) @ classifier.T).argmax(dim=1)
    recalls = [100 * float((pred[labels == c] == c).float().mean()) for c in range(5)]
    assert per_class == pytest.approx(recalls)
    assert scores["mean_per_class_recall"] == pytest.approx(sum(recalls) / 5)
    assert scores["top1"] == pytest.approx(100 * float((pred == labels).float().mean()))
    assert abs(scores["top1"] - scores["mean_per_class_recall"]) > 1  # they differ here


def test_a_class_without_readable_images_has_no_recall_and_is_left_out_of_the_mean():
    scores, per_class = class_scores(torch.eye(3)[[0, 0]], torch.eye(3), torch.tensor([0, 1]))
    assert per_class == [100.0, 0.0, None]
    assert scores["mean_per_class_recall"] == 50.0


def test_default_results_path_keeps_same_named_folders_apart_and_is_stable(tmp_path,
                                                                            monkeypatch):
    (tmp_path / "a" / "val").mkdir(parents=True)
    (tmp_path / "b" / "val").mkdir(parents=True)
    run = RunDir(tmp_path / "run")
    a, b = (run.zeroshot_results(tmp_path / where / "val") for where in ("a", "b"))
    assert a != b and a.parent == b.parent == run.path / "zeroshot"
    assert a.name.startswith("val-") and a.suffix == ".json"
    monkeypatch.chdir(tmp_path / "a")  # the same folder named another way: the same file
    assert run.zeroshot_results("val") == run.zeroshot_results("./val/") == a


def results_with_classes(n_classes: int) -> dict:
    per_class = [{"folder": f"f{i}", "class": f"class {i}", "n_images": 3,
                  "clip": 90.0, "projected": 90.0 - i, "ensemble": 91.0} for i in range(n_classes)]
    row = {"top1": 60.0, "top5": 90.0, "mean_per_class_recall": 55.0}
    return {"data_dir": "/d/val", "n_images": 3 * n_classes, "n_classes": n_classes,
            "n_templates": 7, "templates": "short", "skipped": {}, "note": "",
            "clip": row, "projected": {**row, "mean_per_class_recall": 44.0}, "ensemble": row,
            "projected_pct": {"top1": 100.0, "top5": 100.0, "mean_per_class_recall": 80.0},
            "ensemble_pct": {"top1": 100.0, "top5": 100.0, "mean_per_class_recall": 100.0},
            "per_class": per_class}


def test_reports_show_mean_per_class_recall_and_the_per_class_table(capsys):
    z = results_with_classes(3)
    md = markdown({"run": "r", "ks": [1], "note": "", "sets": {}, "zeroshot": z,
                   "run_info": {"checkpoint": "c", "best_epoch": 1, "tag": "t",
                                "git_sha": None, "device": "cpu"}})
    assert "| image embedding | top1 | top5 | mean per-class recall | top1 % of CLIP |" in md
    assert "| projected | 60.00 | 90.00 | 44.00 | 100.0 | 100.0 | 80.0 |" in md
    assert "| class 2 | 3 | 90.0 | 88.0 | 91.0 |" in md and "<details>" not in md
    print_zeroshot({**z, "n_templates": 7})
    out = capsys.readouterr().out
    assert "mean per-class recall" in out and "class 2" in out and "88.0" in out


def test_many_classes_show_the_largest_gaps_and_fold_the_rest_away():
    z = results_with_classes(30)  # projected falls 1 point further behind per class
    shown, caption = per_class_view(z)
    assert [c["class"] for c in shown] == [f"class {i}" for i in range(29, 19, -1)]
    assert "10 of 30 classes" in caption
    md = markdown({"run": "r", "ks": [1], "note": "", "sets": {}, "zeroshot": z,
                   "run_info": {"checkpoint": "c", "best_epoch": 1, "tag": "t",
                                "git_sha": None, "device": "cpu"}})
    assert "<details><summary>All 30 classes</summary>" in md
    assert md.count("| class 25 |") == 2 and md.count("| class 3 |") == 1  # shown + folded


def test_folder_dataset_and_class_names(tmp_path):
    root = tmp_path / "ds"
    for folder in ("n02_golden_retriever", "n01_tabby_cat"):
        (root / folder / "sub").mkdir(parents=True)
        (root / folder / "sub" / "x.png").write_bytes(b"")
    (root / ".hidden").mkdir()
    data = load_folder_dataset(root)
    assert data.folders == ["n01_tabby_cat", "n02_golden_retriever"]
    assert data.classnames == ["n01 tabby cat", "n02 golden retriever"]
    assert data.labels == [0, 1] and all(p.name == "x.png" for p in data.files)
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"n01_tabby_cat": "tabby cat", "n02_golden_retriever": "dog"}))
    assert load_folder_dataset(root, names).classnames == ["tabby cat", "dog"]
    txt = tmp_path / "names.txt"
    txt.write_text("cat\n\ndog\n")
    assert load_folder_dataset(root, txt).classnames == ["cat", "dog"]
    txt.write_text("cat\n")
    with pytest.raises(ConfigError, match="1 class names for 2 class folders"):
        load_folder_dataset(root, txt)
    with pytest.raises(ConfigError, match="no class sub-folders"):
        load_folder_dataset(tmp_path / "ds" / "n01_tabby_cat" / "sub")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no images"):
        load_folder_dataset(tmp_path / "empty")


def test_an_empty_class_folder_is_an_error_naming_it(tmp_path):
    # Not a silent extra class that no image can be (it would still draw top-k guesses).
    root = tmp_path / "ds"
    for folder in ("cat", "dog"):
        (root / folder).mkdir(parents=True)
        (root / folder / "x.png").write_bytes(b"")
    (root / "zebra").mkdir()
    with pytest.raises(ConfigError, match=r"ds/zebra: class folder has no images"):
        load_folder_dataset(root)


def test_top_k_over_k_or_fewer_classes_is_called_trivial():
    assert trivial_note(3) == "top5 is trivially 100 % with 3 classes"
    assert trivial_note(5) == "top5 is trivially 100 % with 5 classes"
    assert trivial_note(1) == "top1 and top5 are trivially 100 % with 1 class"
    assert trivial_note(6) == ""


def test_zeroshot_end_to_end_agrees_with_the_api(demo_run, demo_model, tmp_path):
    _, art = demo_run
    root = write_shape_classes(tmp_path / "shapes", per_class=4)
    (root / "square" / "2b_broken.jpg").write_bytes(b"not a jpeg")  # sorts mid-class
    out = tmp_path / "zs.json"
    res = run_zeroshot(run=art / "runs" / "demo", data_dir=root, templates="short", out=out,
                       options=UseOptions(device="cpu", batch_size=5, num_workers=0))
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert res["n_images"] == 12 and res["n_classes"] == 3 and res["n_templates"] == 7
    assert res["skipped"] == {"not_an_image": 1}
    assert res["note"] == "top5 is trivially 100 % with 3 classes"
    assert res["compute_dtype"] == "float32" and res["device"] == "cpu"  # what ran, not bf16
    for row in ("clip", "projected", "ensemble"):
        assert 0 <= res[row]["top1"] <= res[row]["top5"] == 100.0  # 3 classes: top-5 is all
    assert res["projected_pct"]["top5"] == 100.0
    if res["clip"]["top1"] > 0:
        assert res["projected_pct"]["top1"] == pytest.approx(
            100 * res["projected"]["top1"] / res["clip"]["top1"])
    # The same numbers from the API by hand: labels stayed aligned past the skipped file.
    data = load_folder_dataset(root)
    good = [(p, y) for p, y in zip(data.files, data.labels, strict=True) if "broken" not in p.name]
    w = build_classifier(demo_model.encode_text, data.classnames, SHORT)
    labels = torch.tensor([y for _, y in good])
    proj = demo_model.encode_image([p for p, _ in good])
    clip = demo_model.encode_clip_image([p for p, _ in good])
    assert res["projected"]["top1"] == pytest.approx(topk_accuracy(proj, w, labels)["top1"])
    assert res["clip"]["top1"] == pytest.approx(topk_accuracy(clip, w, labels)["top1"])
    # Per class, in folder order, counting only the readable images.
    assert [c["folder"] for c in res["per_class"]] == data.folders
    assert [c["n_images"] for c in res["per_class"]] == [4, 4, 4]
    for row in ("clip", "projected", "ensemble"):
        recalls = [c[row] for c in res["per_class"]]
        assert res[row]["mean_per_class_recall"] == pytest.approx(sum(recalls) / 3)
        # Balanced classes: mean per-class recall is top-1.
        assert res[row]["mean_per_class_recall"] == pytest.approx(res[row]["top1"])


def test_cli_unreadable_dataset_exits_2(demo_run, tmp_path):
    _, art = demo_run
    (tmp_path / "ds" / "cat").mkdir(parents=True)
    (tmp_path / "ds" / "cat" / "a.jpg").write_bytes(b"\xff\xd8 truncated")
    result = CliRunner().invoke(app, ["zeroshot", "--run", str(art / "runs" / "demo"),
                                      "--data", str(tmp_path / "ds"), "--templates", "plain",
                                      "--device", "cpu", "--num-workers", "0"])
    assert result.exit_code == 2
    assert "error: " in result.output and "no readable images" in result.output
    assert "Traceback" not in result.output


def test_two_folders_of_the_same_name_keep_their_own_results(demo_run, tmp_path):
    _, art = demo_run
    run = art / "runs" / "demo"
    runner = CliRunner()
    for where, per_class in (("a", 2), ("b", 3)):
        root = write_shape_classes(tmp_path / where / "val", per_class=per_class)
        result = runner.invoke(app, ["zeroshot", "--run", str(run), "--data", str(root),
                                     "--templates", "plain", "--device", "cpu",
                                     "--num-workers", "0"])
        assert result.exit_code == 0, result.output
        assert "mean per-class recall" in result.output
    written = {json.loads(p.read_text())["data_dir"]: json.loads(p.read_text())["n_images"]
               for p in (run / "zeroshot").glob("val-*.json")}
    assert written == {str(tmp_path / "a" / "val"): 6, str(tmp_path / "b" / "val"): 9}
