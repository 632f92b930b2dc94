"""A DINOv3 backbone and a SigLIP-style teacher through the real entry point, end to end:
data -> extract -> train -> eval (with zero-shot) -> a second loss -> compare.

The teacher is an open_clip "local-dir:" folder (open_clip_config.json with the model config and
SigLIP's preprocessing, weights, a word-level HF tokenizer built with `tokenizers`), loaded as
an hf-hub open_clip repo is; no hub access.
"""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import demo_config, run_cli

pytestmark = pytest.mark.slow  # the whole pipeline twice through the CLI
TAG = "tiny-dinov3__tiny-siglip-heads"  # derived: both models named (the demo caches dino_heads)


@pytest.fixture(scope="module")
def pair_run(tmp_path_factory):
    """(config, artifacts, siglip id) after `run --stage all` and a second run with another
    loss, both evaluated."""
    from dinov2clip.data.tiny_models import build_tiny_dinov3, build_tiny_siglip

    root = tmp_path_factory.mktemp("pair")
    artifacts = root / "artifacts"
    dino = build_tiny_dinov3(root / "models" / "tiny-dinov3")
    siglip = build_tiny_siglip(root / "models" / "tiny-siglip")
    config = demo_config(root / "pair.toml", artifacts, {
        "data.synthetic.tiny_models": False,
        "data.synthetic.num_train": 128,  # one shard: this is about wiring
        "train.epochs": 2,
        "extract.dino_model": str(dino), "extract.clip_model": siglip,
        "extract.clip_pretrained": "",
        "extract.tag": "",  # derived from the two model names
        "train.run": "dinov3-siglip", "eval.run": "dinov3-siglip"})
    run_cli("run", "--stage", "all", "--config", str(config))
    other = ["--set", "train.run=dinov3-siglip-cosine", "--set", "train.loss={cosine = 1.0}",
             "--set", "eval.run=dinov3-siglip-cosine", "--set", "eval.zeroshot=''"]
    run_cli("train", "--config", str(config), *other)
    run_cli("eval", "--config", str(config), *other)
    return config, artifacts, siglip


def test_manifest_records_backbone_tokens_and_teacher(pair_run):
    _, art, siglip = pair_run
    manifest = json.loads((art / "embeddings" / "shapes" / TAG / "manifest.json").read_text())
    assert manifest["dino_type"] == "dinov3_vit"
    assert (manifest["dino_registers"], manifest["dino_patch_tokens"]) == (4, 196)
    assert manifest["dino_preprocess"]["resize_mode"] == "squash"
    assert manifest["clip_model"] == siglip
    pre = manifest["clip_preprocess"]
    assert (pre["resize_mode"], pre["crop"], pre["mean"], pre["std"]) == (
        "squash", 160, [0.5] * 3, [0.5] * 3)
    tok = manifest["clip_tokenizer"]
    assert tok["class"] == "HFTokenizer" and tok["context_length"] == 16
    assert "canonicalize" in tok["clean"]
    # token_mean pooling used the manifest's count, and the run says so.
    run_cfg = json.loads((art / "runs" / "dinov3-siglip" / "config.json").read_text())["config"]
    assert run_cfg["train"]["num_patch_tokens"] == 196


def test_text_embeddings_are_open_clips_own(pair_run):
    """The cached caption embeddings equal open_clip's encode_text on the same captions, through
    open_clip's own tokenizer (canonicalised: lower case, no punctuation)."""
    import open_clip

    _, art, siglip = pair_run
    emb = art / "embeddings" / "shapes-test" / TAG
    captions = [c for cs in pq.read_table(emb / "meta" / "0.parquet").column("captions")
                .to_pylist() for c in cs]
    assert any("," in c for c in captions)  # punctuation that canonicalising removes
    model = open_clip.create_model(siglip).eval()
    tokenizer = open_clip.get_tokenizer(siglip)
    with torch.inference_mode():
        ref = torch.nn.functional.normalize(model.encode_text(tokenizer(captions)), dim=-1)
    np.testing.assert_allclose(np.load(emb / "clip_text" / "0.npy"), ref.numpy(), atol=2e-3)


def test_the_run_model_canonicalises_text_like_open_clip(pair_run):
    from dinov2clip.models.inference import DinoV2Clip

    _, art, _ = pair_run
    m = DinoV2Clip.from_pretrained(art / "runs" / "dinov3-siglip", device="cpu")
    assert m.num_patch_tokens == 196 and m.n_registers == 4
    raw = m.tokenizer.tokenizer("A Red Circle, on a BLUE background!")["input_ids"]
    assert 2 in raw  # the bare HF tokenizer sees unknown words: cleaning matters
    a, b = m.encode_text(["A Red Circle, on a BLUE background!", "a red circle on a blue "
                                                                 "background"])
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_eval_and_zero_shot_ran_against_the_teacher(pair_run):
    _, art, _ = pair_run
    results = json.loads((art / "runs" / "dinov3-siglip" / "eval" / "results.json").read_text())
    assert results["run_info"]["tag"] == TAG
    res = results["sets"]["shapes-test"]
    assert res["n_images"] == 60 and set(res["clip"]) == {
        f"{d}_R@{k}" for d in ("t2i", "i2t") for k in (1, 5, 10)}
    zs = results["zeroshot"]
    assert zs["n_images"] == 12 and zs["n_classes"] == 4
    assert all(0 <= zs[row]["top1"] <= zs[row]["top5"] <= 100 for row in ("clip", "projected"))


def test_compare_prints_and_writes_one_table(pair_run):
    _, art, _ = pair_run
    runs = art / "runs"
    proc = run_cli("compare", "--runs", str(runs / "*"))
    lines = proc.stdout.strip().splitlines()
    header = lines[0].split()
    assert header[:8] == ["run", "backbone", "teacher", "pooling", "loss", "epochs", "set",
                          "direction"]
    body = lines[1:]
    assert len(body) == 4  # 2 runs x 1 set x 2 directions
    for run, loss in (("dinov3-siglip", "unit_mse"), ("dinov3-siglip-cosine", "cosine")):
        mine = [line.split() for line in body if line.split()[0] == run]
        assert len(mine) == 2
        for cells in mine:
            assert cells[1:6] == ["tiny-dinov3", "tiny-siglip", "token_mean", loss,
                                  cells[5]] and cells[5].endswith("/2")
            assert cells[6] == "shapes-test"
    md = (runs / "compare.md").read_text()
    assert md.count("| dinov3-siglip") == 4 and "% of teacher R@1" in md
    assert (runs / "compare.png").stat().st_size > 1000
    results = json.loads((runs / "dinov3-siglip" / "eval" / "results.json").read_text())
    r1 = results["sets"]["shapes-test"]["projected"]["t2i_R@1"]
    assert f"| {r1:.2f} |" in md

    # Named runs work too; a run never evaluated is one line, exit 2.
    named = run_cli("compare", str(runs / "dinov3-siglip"), "--out", str(art / "cmp"))
    assert len(named.stdout.strip().splitlines()) == 3 and (art / "cmp" / "compare.md").exists()
    (runs / "empty").mkdir()
    bad = run_cli("compare", str(runs / "empty"), check=False)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith(
        "error: ") and "eval/results.json" in bad.stderr
