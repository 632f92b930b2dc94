"""Zero-shot classification: templates, classifier, top-k, folder datasets, the whole command."""

import json

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from dinov2clip.config import ConfigError, UseOptions
from dinov2clip.evaluate.templates import IMAGENET_80, SHORT, get_templates
from dinov2clip.evaluate.zeroshot import (
    build_classifier,
    load_folder_dataset,
    run_zeroshot,
    topk_accuracy,
    trivial_note,
)
from dinov2clip.pipeline import app
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
