"""configs/demo-text-encoder.toml through the real entry point: a two-tower run with a tiny
sentence-transformers text encoder evaluates, compares with a single-projector run on the same
embeddings, loads as a DinoV2Clip whose text goes through the text encoder and its projector,
indexes and searches, and round-trips through the fake hub."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from dinov2clip.pipeline import app
from tests.helpers import REPO, run_cli, write_config, write_shape_classes
from tests.test_hub import FakeModelHub, hub_here

pytestmark = pytest.mark.slow  # the whole pipeline, then a second run
TEXTS = ["a red circle", "a small blue square"]


@pytest.fixture(scope="module")
def demo_text(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-text")
    art = root / "artifacts"
    models = art / "models"
    config = write_config(root / "demo-text.toml", {
        "artifacts": str(art), "data.synthetic.num_train": 384, "data.synthetic.num_eval": 60,
        "data.synthetic.shard_size": 128, "data.synthetic.zeroshot_per_class": 3,
        "extract.dino_model": str(models / "tiny-dinov2"),
        "extract.clip_model": str(models / "tiny-clip" / "tiny-clip.json"),
        "extract.clip_pretrained": str(models / "tiny-clip" / "open_clip_model.safetensors"),
        "extract.text_encoder": str(models / "tiny-text"), "extract.num_workers": 0,
        "train.epochs": 3, "eval.zeroshot": str(art / "zeroshot" / "shapes")},
        base=REPO / "configs" / "demo-text-encoder.toml")
    run_cli("run", "--stage", "all", "--config", str(config))
    single = ["--set", "train.kind=into_teacher", "--set", "train.loss={unit_mse=1.0}",
              "--set", "train.run=single", "--set", "eval.run=single",
              "--set", "train.select_metric=val_cosine", "--set", "eval.zeroshot=''"]
    run_cli("train", "--config", str(config), *single)
    run_cli("eval", "--config", str(config), *single)
    return config, art


def test_eval_reports_absolute_recalls_and_pct_of_clip(demo_text):
    _, art = demo_text
    results = json.loads((art / "runs" / "demo-two-tower" / "eval" / "results.json").read_text())
    assert results["kind"] == "two_tower"
    res = results["sets"]["shapes-test"]
    for row in ("clip", "projected", "ensemble"):
        assert 0 <= res[row]["t2i_R@1"] <= 100
    clip, ours = res["clip"]["t2i_R@5"], res["projected"]["t2i_R@5"]
    assert res["projected_pct"]["t2i_R@5"] == pytest.approx(100 * ours / clip)
    zs = json.loads((art / "runs" / "demo-two-tower" / "eval" / "zeroshot.json").read_text())
    assert zs["n_images"] == 12 and "projected_pct" in zs


def test_compare_puts_both_kinds_of_run_side_by_side(demo_text):
    _, art = demo_text
    proc = run_cli("compare", str(art / "runs" / "demo-two-tower"), str(art / "runs" / "single"),
                   "--out", str(art / "cmp"))
    assert "demo-two-tower" in proc.stdout and "single" in proc.stdout


def test_encode_text_goes_through_the_text_encoder_and_its_projector(demo_text):
    from dinov2clip import DinoV2Clip
    from dinov2clip.models.projector import TwoTower
    from dinov2clip.models.text_encoders import TextEncoder

    _, art = demo_text
    model = DinoV2Clip.from_pretrained(art / "runs" / "demo-two-tower", device="cpu")
    assert model.two_tower and isinstance(model.projector, TwoTower)
    feats = TextEncoder(str(art / "models" / "tiny-text"), "auto", torch.device("cpu")
                        ).encode(TEXTS)
    want = F.normalize(model.projector.text(feats), dim=-1)
    torch.testing.assert_close(model.encode_text(TEXTS), want)
    assert not torch.allclose(model.encode_text(TEXTS), model.encode_clip_text(TEXTS), atol=0.1)


def test_push_index_and_search_a_two_tower_run(demo_text, tmp_path, monkeypatch):
    from dinov2clip import DinoV2Clip
    from dinov2clip.config import UseOptions
    from dinov2clip.index import build_index
    from dinov2clip.serve import SearchEngine

    _, art = demo_text
    fake = FakeModelHub()
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    hub_here(monkeypatch, tmp_path / "hf-home" / "hub", fake.url)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_tests")
    try:
        result = CliRunner().invoke(app, ["push", "--run", str(art / "runs" / "demo-two-tower"),
                                          "--repo", "me/two-tower"])
        assert result.exit_code == 0, result.output
        local = DinoV2Clip.from_pretrained(art / "runs" / "demo-two-tower", device="cpu")
        pulled = DinoV2Clip.from_pretrained("hf-hub:me/two-tower", device="cpu")
        torch.testing.assert_close(pulled.encode_text(TEXTS), local.encode_text(TEXTS))
        images = write_shape_classes(tmp_path / "imgs", per_class=2)
        build_index(run="hf-hub:me/two-tower", images=images, out_dir=tmp_path / "idx",
                    options=UseOptions(device="cpu", num_workers=0))
        engine = SearchEngine(tmp_path / "idx", device="cpu")
        try:
            scores, ids = engine.search_text("a circle", 3).result(timeout=60)
            assert len(ids) == 3 and np.all(np.diff(scores) <= 0)
            query = local.encode_text(["a circle"])[0]
            shown = engine.describe(int(ids[0]))
            assert shown  # the best hit is a real, described image
            best = torch.from_numpy(np.asarray(scores))[0]
            assert float(best) <= 1.0 + 1e-5 and query.shape[0] == local.dim
            from starlette.testclient import TestClient

            from dinov2clip.serve import create_app

            with TestClient(create_app(engine)) as client:  # the HTTP API over the same engine
                served = client.get("/api/search", params={"q": "a circle", "k": 3}).json()
            assert [hit["id"] for hit in served["results"]] == [int(i) for i in ids]
        finally:
            engine.close()
    finally:
        fake.close()
