"""The real entry point, end to end, on the tiny demo config: every artifact DESIGN.md names."""

import json
import os
import re

import numpy as np
import pyarrow.parquet as pq

from dinov2clip.compare import compare
from dinov2clip.config import UseOptions
from dinov2clip.index import build_index, search
from tests.conftest import DEMO_UMASK
from tests.helpers import write_shape_classes


def test_the_log_has_no_library_noise_users_cannot_act_on(demo_run):
    log = (demo_run[0].parent / "demo.log").read_text()
    assert "=== stage eval ===" in log  # the log is there
    for noise in ("Loading weights", "initialized randomly", "albumentations"):
        assert noise not in log, noise
    # Not a terminal: progress is plain log lines, never bars redrawn with \r (read_text would
    # have turned each \r into a newline).
    assert b"\r" not in (demo_run[0].parent / "demo.log").read_bytes()
    assert re.search(r"INFO extract: [\d,]+ img, [\d.,]+ img/s, done in \d\d:\d\d\n", log)
    assert re.search(r"INFO epoch 4/4: \d+/\d+ step \(100%\), .* \[loss=", log)


def test_data_stage_writes_shards_eval_set_and_models(demo_run):
    _, art = demo_run
    assert sorted(p.name for p in (art / "shards" / "shapes").glob("*.tar")) == [
        "00000.tar", "00001.tar", "00002.tar"]
    assert (art / "shards" / "shapes" / "00000_stats.json").exists()
    assert (art / "shards" / "shapes" / "00000.parquet").exists()
    assert list((art / "evalsets" / "shapes-test" / "test").glob("*.tar"))
    assert (art / "models" / "tiny-dinov2" / "config.json").exists()
    assert (art / "models" / "tiny-dinov2" / "preprocessor_config.json").exists()
    assert (art / "models" / "tiny-clip" / "open_clip_model.safetensors").exists()
    classes = art / "zeroshot" / "shapes"  # the folder-per-class set for zero-shot
    assert sorted(p.name for p in classes.iterdir()) == ["circle", "square", "star", "triangle"]
    assert all(len(list(p.glob("*.png"))) == 3 for p in classes.iterdir())


def test_embeddings_are_aligned_typed_and_normalised(demo_run):
    _, art = demo_run
    emb = art / "embeddings" / "shapes" / "tiny"
    manifest = json.loads((emb / "manifest.json").read_text())
    assert manifest["n_images"] == 384
    # heads: the demo caches dino_heads (extract.dino_heads), one per attention head
    assert manifest["dims"] == {"dino": 48, "clip": 32, "heads": 4}
    for shard in ("00000", "00001", "00002"):
        meta = pq.read_table(emb / "meta" / f"{shard}.parquet").to_pydict()
        n = len(meta["key"])
        assert n == 128 and meta["row"] == list(range(n))
        arrays = {a: np.load(emb / a / f"{shard}.npy") for a in
                  ("dino_cls", "dino_mean", "clip_image", "clip_text")}
        assert arrays["dino_cls"].shape == arrays["dino_mean"].shape == (n, 48)
        assert arrays["clip_image"].shape == arrays["clip_text"].shape == (n, 32)
        assert all(a.dtype == np.float16 for a in arrays.values())
        for a in ("clip_image", "clip_text"):
            norms = np.linalg.norm(arrays[a].astype(np.float32), axis=1)
            np.testing.assert_allclose(norms, 1.0, atol=2e-3)
        assert not np.allclose(arrays["dino_cls"], arrays["dino_mean"])
        assert (emb / "done" / f"{shard}.json").exists()
    # The training captions are the shards' own .txt, in order.
    src = pq.read_table(art / "shards" / "shapes" / "00001.parquet").to_pydict()
    meta = pq.read_table(emb / "meta" / "00001.parquet").to_pydict()
    assert [c[0] for c in meta["captions"]] == src["caption"]
    assert meta["key"] == src["key"]


def test_eval_set_embeddings_map_captions_to_images(demo_run):
    _, art = demo_run
    emb = art / "embeddings" / "shapes-test" / "tiny"
    meta = pq.read_table(emb / "meta" / "0.parquet").to_pydict()
    text = np.load(emb / "clip_text" / "0.npy")
    assert len(meta["key"]) == 60
    assert text.shape[0] == sum(meta["n_captions"]) == sum(len(c) for c in meta["captions"])
    assert set(meta["n_captions"]) == {4, 5}  # uneven caption counts survive
    starts = np.cumsum([0] + meta["n_captions"][:-1]).tolist()
    assert meta["caption_start"] == starts


def test_training_run_learns_and_keeps_its_artifacts(demo_run):
    _, art = demo_run
    run = art / "runs" / "demo"
    cfg = json.loads((run / "config.json").read_text())
    assert "git_sha" in cfg and cfg["config"]["train"]["run"] == "demo"
    assert json.loads((run / "projector.json").read_text())["width"] == 128
    assert sorted(p.name for p in (run / "checkpoints").glob("*.safetensors")) == [
        f"epoch_{e:03d}.safetensors" for e in range(1, 5)]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["loss"] for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert len(epochs) == 4
    assert steps[-1] < 0.5 * steps[0], "training loss must fall"
    assert epochs[-1]["val_loss"] < epochs[0]["val_loss"]
    assert epochs[-1]["val_cosine"] > 0.5
    assert (run / "loss.png").stat().st_size > 1000 and (run / "val.png").exists()


def test_eval_writes_results_report_and_chart(demo_run):
    _, art = demo_run
    out = art / "runs" / "demo" / "eval"
    results = json.loads((out / "results.json").read_text())
    res = results["sets"]["shapes-test"]
    assert res["n_images"] == 60 and res["n_captions"] == 270
    for row in ("clip", "projected", "ensemble"):
        assert set(res[row]) == {f"{d}_R@{k}" for d in ("t2i", "i2t") for k in (1, 5, 10)}
        assert all(0.0 <= v <= 100.0 for v in res[row].values())
        assert res[row]["t2i_R@1"] <= res[row]["t2i_R@5"] <= res[row]["t2i_R@10"]
    assert "randomly initialised" in results["note"]
    report = (out / "report.md").read_text()
    assert "## shapes-test" in report and "% of CLIP" in report
    assert (out / "recall.png").stat().st_size > 1000
    assert (out / "config.json").exists()
    # Zero-shot on the shapes folders, after retrieval: in results.json, report.md and its file.
    zs = results["zeroshot"]
    assert zs == json.loads((out / "zeroshot.json").read_text())
    assert zs["n_images"] == 12 and zs["n_classes"] == 4 and zs["templates"] == "short"
    assert all(0 <= zs[row]["top1"] <= zs[row]["top5"] <= 100 for row in ("clip", "projected"))
    assert "## Zero-shot classification" in report and "| projected |" in report
    assert "mean per-class recall" in report and "### Per class: top-1 (%)" in report
    assert [c["n_images"] for c in zs["per_class"]] == [3, 3, 3, 3]


def modes_under(root) -> dict:
    return {str(p.relative_to(root)): p.lstat().st_mode & 0o777 for p in root.rglob("*")}


def wrong_modes(modes: dict, umask: int, root) -> dict:
    """The paths whose mode is not what open() and mkdir() give under umask."""
    want = {True: 0o777 & ~umask, False: 0o666 & ~umask}
    return {path: oct(mode) for path, mode in modes.items()
            if mode != want[(root / path).is_dir()]}


def test_every_file_the_demo_writes_follows_the_umask(demo_run):
    """Whichever library wrote it (safetensors and transformers' save_pretrained, pyarrow,
    numpy, matplotlib, PIL, tarfile): 0664 files and 0775 folders under umask 002."""
    config, art = demo_run
    modes = json.loads((config.parent / "modes.json").read_text())
    assert "models/tiny-dinov2/model.safetensors" in modes  # the two safetensors 0.8 left 0600
    assert "models/tiny-clip/open_clip_model.safetensors" in modes
    assert len(modes) > 100 and wrong_modes(modes, DEMO_UMASK, art) == {}


def test_an_index_compare_and_a_search_page_follow_the_umask(demo_run, tmp_path):
    """faiss.write_index, pyarrow, matplotlib's savefig and the search page, under umask 027."""
    _, art = demo_run
    photos = write_shape_classes(tmp_path / "photos", per_class=2, classes=("circle", "star"))
    out = tmp_path / "out"
    old = os.umask(0o027)
    try:
        build_index(run=art / "runs" / "demo", images=photos, out_dir=out / "index",
                    options=UseOptions(device="cpu", num_workers=0))
        search(index_dir=out / "index", query="a circle", k=2, html_out=out / "hits.html")
        compare([str(art / "runs" / "demo")], out_dir=out)
    finally:
        os.umask(old)
    modes = modes_under(out)
    assert {"index/index.faiss", "index/dino.faiss", "index/meta.parquet", "hits.html",
            "compare.png", "compare.md", "compare.csv"} <= set(modes), sorted(modes)
    assert wrong_modes(modes, 0o027, out) == {}
