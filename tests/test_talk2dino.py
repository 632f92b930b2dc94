"""The talk2dino head: its loss learns the max-over-heads task, it saves and loads strictly, the
store keeps and checks dino_heads, and the demo trains it, evaluates it, and uses it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from dinov2clip.config import ConfigError, load_config
from dinov2clip.dense.talk2dino import (
    Talk2DinoConfig,
    Talk2DinoMap,
    best_head_similarity,
    cleaned,
    infonce,
)
from dinov2clip.store import EmbeddingSet, RunDir, load_head_pairs
from tests.helpers import run_cli, write_config


def _task(n: int, seed: int):
    """Texts (n, 8); per image 4 heads (n, 4, 16) of which one (a different one per image) is a
    fixed linear map of its text, the others noise: only max over heads can find the pair."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(8, 16, generator=torch.Generator().manual_seed(99))
    text = torch.nn.functional.normalize(torch.randn(n, 8, generator=g), dim=-1)
    heads = torch.randn(n, 4, 16, generator=g)
    which = torch.randint(0, 4, (n,), generator=g)
    heads[torch.arange(n), which] = text @ mix
    return text, heads


def test_the_loss_learns_the_best_head_task():
    torch.manual_seed(0)
    model = Talk2DinoMap(Talk2DinoConfig(text_dim=8, dino_dim=16, hidden=32))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    text, heads = _task(512, seed=0)
    for _ in range(300):
        idx = torch.randperm(512)[:128]
        loss = infonce(model, text[idx], heads[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    vt, vh = _task(200, seed=1)
    with torch.no_grad():
        scores = best_head_similarity(model(vt), vh)
    r1 = (scores.argmax(1) == torch.arange(200)).float().mean().item()
    assert r1 > 0.9, r1  # chance is 0.005
    # the mean over heads would not do: the right head is one of four, the rest noise
    assert best_head_similarity(model(vt), vh).diagonal().mean() > 0.8


def test_the_head_loads_strictly(tmp_path):
    model = Talk2DinoMap(Talk2DinoConfig(8, 16, 32))
    cfg, weights = tmp_path / "h.json", tmp_path / "h.safetensors"
    model.save(cfg, weights)
    back = Talk2DinoMap.load(cfg, weights)
    x = torch.randn(3, 8)
    torch.testing.assert_close(back(x), model(x))
    raw = json.loads(cfg.read_text())
    cfg.write_text(json.dumps({**raw, "hidden": 33}))
    with pytest.raises(RuntimeError):  # strict: the weights are 32 wide
        Talk2DinoMap.load(cfg, weights)
    cfg.write_text(json.dumps({**raw, "extra": 1}))
    with pytest.raises(ConfigError, match="unknown keys extra"):
        Talk2DinoMap.load(cfg, weights)
    with pytest.raises(ConfigError, match="missing"):
        Talk2DinoMap.load(tmp_path / "none.json", weights)


def test_background_cleaning_lowers_what_the_heads_ignore():
    logits = torch.full((1, 2, 2), 0.5)  # flat: every patch the same
    attention = torch.zeros(2, 2, 2)
    attention[:, 0, 0] = 1.0  # both heads look at the top-left patch alone
    out = cleaned(logits, torch.randn(1, 4), torch.randn(2, 4), attention)
    assert out.shape == (1, 2, 2)
    assert out[0, 0, 0] >= out[0, 1, 1]


@pytest.mark.parametrize("setting, message", [
    ("train.dense.head='talk3dino'", "'train.dense.head' must be one of talk2dino"),
    ("train.dense.epochs=0", "'train.dense.epochs' must be at least 1"),
    ("eval.dense.head='talk3dino'", "must be one of projector, talk2dino"),
])
def test_bad_dense_training_values_fail_when_read(tmp_path, setting, message):
    path = write_config(tmp_path / "c.toml", {"artifacts": str(tmp_path)})
    with pytest.raises(ConfigError, match=message):
        load_config(path, [setting])


def test_the_demo_trains_the_head_into_the_run(demo_run):
    _, art = demo_run
    run = RunDir(art / "runs" / "demo")
    model = Talk2DinoMap.load(run.dense_head_config("talk2dino"),
                              run.dense_head_weights("talk2dino"))
    assert (model.cfg.text_dim, model.cfg.dino_dim) == (32, 48)
    epochs = [r for r in run.read_metrics() if r.get("kind") == "dense_epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4]
    assert all(np.isfinite(r["val_loss"]) and 0 <= r["val_t2i_R@1"] <= 100 for r in epochs)
    assert run.best_epoch() is not None  # the projector's record is untouched


def test_the_store_checks_dino_heads(demo_run, tmp_path):
    _, art = demo_run
    copy = tmp_path / "set"
    shutil.copytree(art / "embeddings" / "shapes" / "tiny", copy)
    store = EmbeddingSet(copy)
    assert store.has_dino_heads() and "dino_heads" in store.arrays()
    train, val = load_head_pairs(copy, 0.1)
    assert train.heads.shape[1:] == (4, 48) and train.heads.dtype == torch.float16
    assert len(train) + len(val) == 384 and len(train) == len(train.text)
    shard = store.complete_shards()[0]
    path = store.array_path("dino_heads", shard)
    path.write_bytes(path.read_bytes()[:-10])
    assert "dino_heads" in store.damage(shard)
    with pytest.raises(ConfigError, match="dino_heads"):
        load_head_pairs(copy, 0.1)


def test_a_set_without_heads_is_refused_in_one_line(train_setup):
    art, _ = train_setup
    with pytest.raises(ConfigError, match="extract.dino_heads = true"):
        load_head_pairs(art / "embeddings" / "syn" / "t", 0.15)


def test_eval_and_the_api_use_the_learned_head(demo_run, tmp_path):
    from dinov2clip.models.inference import DinoV2Clip

    config, art = demo_run
    copy = tmp_path / "demo-copy"
    shutil.copytree(art / "runs" / "demo", copy)
    run_cli("eval", "--config", str(config), "--run", str(copy), "--set", "eval.zeroshot=''",
            "--set", "eval.dense.head='talk2dino'",
            "--set", "eval.dense.bg_clean=true", env={"OMP_NUM_THREADS": "1"})
    res = json.loads(RunDir(copy).segmentation_results("shapes-seg").read_text())
    assert res["head"] == "talk2dino" and res["bg_clean"] is True
    assert 0.0 <= res["mIoU"] <= 100.0 and res["n_images"] == 8
    model = DinoV2Clip.from_pretrained(copy, device="cpu")
    image = next((art / "segsets" / "shapes-seg" / "images").iterdir())
    learned = model.heatmap(image, "a circle", head="talk2dino")
    baseline = model.heatmap(image, "a circle")
    assert learned.shape == baseline.shape and learned.shape[0] > 100
    assert not torch.allclose(learned, baseline)  # another head, another map
    labels = model.segment(image, ["circle", "square"], head="talk2dino", bg_clean=True)
    assert set(labels.unique().tolist()) <= {0, 1}


@pytest.mark.parametrize("name, backbone", [
    ("dense-talk2dino-coco", "facebook/dinov2-with-registers-base"),
    ("dense-talk2dino-dinov3-coco", "facebook/dinov3-vitb16-pretrain-lvd1689m")])
def test_the_shipped_talk2dino_configs_read(name, backbone):
    from dinov2clip.store import embeddings_tag
    from tests.helpers import REPO

    cfg = load_config(REPO / "configs" / f"{name}.toml")
    assert cfg.extract.dino_model == backbone and cfg.extract.dino_heads
    assert cfg.train.dense.head == "talk2dino" == cfg.eval.dense.head
    assert embeddings_tag(cfg.extract).endswith("-heads")  # apart from a set without them
