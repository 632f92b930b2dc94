"""Index a collection with projected DINOv2, search it with CLIP text; resume; IVF; bad input."""

import json
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds
from typer.testing import CliRunner

from dinov2clip.config import ConfigError, UseOptions
from dinov2clip.data.synthetic import jpeg_bytes
from dinov2clip.index import build_index, faiss_index, search
from dinov2clip.io_utils import HOST
from dinov2clip.pipeline import app
from tests.helpers import write_shape_classes

CPU = UseOptions(device="cpu", num_workers=0)
CPU3 = UseOptions(device="cpu", batch_size=3, num_workers=0)


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """10 images in nested folders, one corrupt file, one caption in a sidecar .txt."""
    root = write_shape_classes(tmp_path_factory.mktemp("coll") / "imgs", per_class=3,
                               classes=("circle", "square", "star"))
    (root / "circle" / "0.txt").write_text("a  big\ncircle")
    (root / "square" / "bad.png").write_bytes(b"\x89PNG broken")
    (root / "star" / "notes.md").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def flat_index(demo_run, collection, tmp_path_factory):
    _, art = demo_run
    out = tmp_path_factory.mktemp("idx") / "flat"
    summary = build_index(run=art / "runs" / "demo", images=collection, out_dir=out,
                          chunk_size=4, options=CPU3)
    return out, summary


def test_index_rows_are_the_api_embeddings_of_their_files(flat_index, demo_model):
    out, summary = flat_index
    assert summary["kind"] == "flat" and summary["n_images"] == 9 and summary["dim"] == 32
    assert summary["skipped"] == {"not_an_image": 1} and summary["n_chunks"] == 3
    meta = pq.read_table(out / "meta.parquet").to_pydict()
    assert len(meta["path"]) == 9 and set(meta["kind"]) == {"file"}
    assert meta["caption"][meta["key"].index("circle/0.png")] == "a big circle"
    emb = np.concatenate([np.load(out / "chunks" / "emb" / f"{c:05d}.npy") for c in range(3)])
    assert emb.dtype == np.float16 and emb.shape == (9, 32)
    api = demo_model.encode_image(meta["path"])
    cos = (torch.from_numpy(emb).float() * api).sum(1)
    assert float(cos.min()) > 0.999


def test_search_ranks_by_cosine_and_writes_html(flat_index, demo_model, tmp_path):
    out, _ = flat_index
    page = tmp_path / "hits.html"
    hits = search(index_dir=out, query="a red circle", k=4, html_out=page, options=CPU)
    assert [h["rank"] for h in hits] == [1, 2, 3, 4]
    meta = pq.read_table(out / "meta.parquet").to_pydict()
    brute = (demo_model.encode_image(meta["path"]) @ demo_model.encode_text("a red circle").T)[:, 0]
    order = brute.argsort(descending=True)[:4].tolist()
    assert [h["id"] for h in hits] == order
    np.testing.assert_allclose([h["score"] for h in hits], brute[order].numpy(), atol=1e-3)
    assert all(h["path"] == meta["path"][h["id"]] for h in hits)
    text = page.read_text()
    assert text.count("<figure>") == 4 and text.count('src="data:image/jpeg;base64,') == 4


def test_resume_redoes_only_the_missing_chunk(demo_run, collection, flat_index, tmp_path):
    _, art = demo_run
    src, _ = flat_index
    import shutil

    out = tmp_path / "resume"
    shutil.copytree(src, out)
    kept = (out / "chunks" / "emb" / "00000.npy").stat().st_mtime_ns
    (out / "chunks" / "done" / "00002.json").unlink()  # as if killed while writing chunk 2
    (out / "chunks" / "emb" / ".00002.npy.x81kq_3a.tmp").write_bytes(b"half")
    (out / "index.json").unlink()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (out / f".index.faiss.{HOST}.{gone.pid}.0badcafe.tmp").write_bytes(b"half")
    with pytest.raises(ConfigError, match="no finished index"):
        search(index_dir=out, query="a dog", options=CPU)
    summary = build_index(run=art / "runs" / "demo", images=collection, out_dir=out,
                          chunk_size=4, options=CPU)
    assert summary["n_images"] == 9
    assert (out / "chunks" / "emb" / "00000.npy").stat().st_mtime_ns == kept
    assert (out / "chunks" / "done" / "00002.json").exists()
    assert not list(out.rglob("*.tmp"))  # what the killed run left is gone
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("years of work")
    with pytest.raises(ConfigError, match="not an index directory"):
        build_index(run=art / "runs" / "demo", images=collection,
                    out_dir=tmp_path / "precious", force=True, options=CPU)
    assert (tmp_path / "precious" / "thesis.tex").exists()


@pytest.mark.parametrize("damage", ["truncate_emb", "truncate_dino", "bad_meta"])
def test_a_damaged_chunk_is_embedded_again_to_the_same_rows(demo_run, collection, flat_index,
                                                             tmp_path, damage, caplog):
    _, art = demo_run
    src, _ = flat_index
    import shutil

    out = tmp_path / "damaged"
    shutil.copytree(src, out)
    chunks = out / "chunks"
    target = {"truncate_emb": chunks / "emb" / "00001.npy",
              "truncate_dino": chunks / "dino" / "00001.npy",
              "bad_meta": chunks / "meta" / "00001.parquet"}[damage]
    original = target.read_bytes()
    target.write_bytes(original[: len(original) // 2])
    kept = (chunks / "emb" / "00000.npy").stat().st_mtime_ns
    with caplog.at_level("WARNING"):
        summary = build_index(run=art / "runs" / "demo", images=collection, out_dir=out,
                              chunk_size=4, options=CPU3)
    assert "chunk 00001" in caplog.text and str(target) in caplog.text
    assert summary["n_images"] == 9
    assert (chunks / "emb" / "00000.npy").stat().st_mtime_ns == kept  # the sound ones stay
    assert (pq.read_table(out / "meta.parquet").to_pydict()
            == pq.read_table(src / "meta.parquet").to_pydict())
    np.testing.assert_array_equal(np.load(chunks / "emb" / "00001.npy"),
                                  np.load(src / "chunks" / "emb" / "00001.npy"))


def test_a_chunk_damaged_after_its_rank_finished_stops_the_build_in_one_line(
        demo_run, collection, flat_index, tmp_path):
    """Rank 0 does not re-embed another rank's chunk: it names the file instead of FAISS or
    numpy failing on it."""
    from dinov2clip.index.build import models_hash
    from dinov2clip.index.chunks import ChunkStore
    from dinov2clip.store import IndexDir, RunDir

    _, art = demo_run
    src, _ = flat_index
    import shutil

    out = tmp_path / "other-rank"
    shutil.copytree(src, out)
    bad = out / "chunks" / "dino" / "00002.npy"
    bad.write_bytes(bad.read_bytes()[:100])
    store = ChunkStore(IndexDir(out), models_hash(RunDir(art / "runs" / "demo")))
    with pytest.raises(ConfigError, match=f"{bad}.*re-run `pipeline index`"):
        store.check_files(["00000", "00001", "00002"])


def test_ranks_split_the_chunks_and_rank_0_builds_the_same_index(demo_run, collection,
                                                                  flat_index, tmp_path,
                                                                  monkeypatch):
    _, art = demo_run
    src, _ = flat_index
    out = tmp_path / "ranks"
    kwargs = dict(run=art / "runs" / "demo", images=collection, out_dir=out, chunk_size=4,
                  options=CPU3)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert build_index(**kwargs)["rank"] == 1  # chunks[1::2]: chunk 1 only, and no index
    assert sorted(p.stem for p in (out / "chunks" / "done").glob("*.json")) == ["00001"]
    assert not (out / "index.json").exists()
    with pytest.raises(ConfigError, match="several ranks"):
        build_index(**kwargs, force=True)
    monkeypatch.setenv("RANK", "0")  # chunks 0 and 2, then the whole index
    assert build_index(**kwargs)["n_images"] == 9
    assert pq.read_table(out / "meta.parquet").equals(pq.read_table(src / "meta.parquet"))
    for chunk in ("00000", "00001", "00002"):
        assert ((out / "chunks" / "emb" / f"{chunk}.npy").read_bytes()
                == (src / "chunks" / "emb" / f"{chunk}.npy").read_bytes())


def test_rank_0_waits_for_the_other_ranks_chunks(demo_run, collection, flat_index, tmp_path,
                                                 monkeypatch):
    import shutil
    from types import SimpleNamespace

    from dinov2clip.index import build
    from dinov2clip.index.build import models_hash, wait_for_chunks
    from dinov2clip.index.chunks import ChunkStore
    from dinov2clip.index.sources import plan_chunks
    from dinov2clip.store import IndexDir, RunDir

    _, art = demo_run
    src, _ = flat_index
    out = tmp_path / "waiting"
    shutil.copytree(src, out)
    marker = out / "chunks" / "done" / "00001.json"
    kept = marker.read_bytes()
    marker.unlink()  # as if another rank were still embedding chunk 1
    polls = []

    def sleep(seconds):  # the other rank finishes during rank 0's third wait, however slow
        polls.append(seconds)
        assert len(polls) <= 3, "still waiting after the marker landed"
        if len(polls) == 3:
            marker.write_bytes(kept)

    monkeypatch.setattr(build, "time", SimpleNamespace(monotonic=time.monotonic, sleep=sleep))
    store = ChunkStore(IndexDir(out), models_hash(RunDir(art / "runs" / "demo")))
    wait_for_chunks(store, plan_chunks(collection, 4), poll_s=0.02)
    assert polls == [0.02] * 3 and marker.exists()


def test_ivf_above_the_threshold_and_webdataset_shards(demo_run, tmp_path):
    _, art = demo_run
    from PIL import Image

    shards = tmp_path / "shards"
    shards.mkdir()
    colours = [(200, 20, 20), (20, 200, 20), (20, 20, 200), (200, 200, 20), (90, 90, 90)]
    with wds.TarWriter(str(shards / "00000.tar")) as sink:
        for i, c in enumerate(colours):
            sample = {"__key__": f"k{i}", "jpg": jpeg_bytes(Image.new("RGB", (60, 40), c)),
                      "json": json.dumps({"url": f"https://example.org/{i}.jpg"}).encode()}
            if i != 3:
                sample["txt"] = f"colour {i}"  # captions are optional in an index
            sink.write(sample)
        sink.write({"__key__": "bad", "jpg": b"garbage"})
    out = tmp_path / "ivf"
    summary = build_index(run=art / "runs" / "demo", images=shards, out_dir=out,
                          exact_max=2, options=CPU)
    assert summary["kind"] == "ivf" and summary["nlist"] >= 1
    assert summary["n_images"] == 5 and summary["skipped"] == {"not_an_image": 1}
    import faiss

    assert isinstance(faiss.read_index(str(out / "index.faiss")), faiss.IndexIVFFlat)
    page = tmp_path / "p.html"
    hits = search(index_dir=out, query="a green photo", k=5, html_out=page, options=CPU)
    assert len(hits) == 5 and {h["url"] for h in hits} == {
        f"https://example.org/{i}.jpg" for i in range(5)}
    assert {h["caption"] for h in hits} == {"colour 0", "colour 1", "colour 2", "", "colour 4"}
    assert page.read_text().count("data:image/jpeg;base64,") == 5  # read back from the tar
    meta = pq.read_table(out / "meta.parquet").to_pydict()
    st = (shards / "00000.tar").stat()
    assert set(zip(meta["size"], meta["mtime_ns"], strict=True)) == {(st.st_size, st.st_mtime_ns)}
    # The tar rewritten with other pictures under the same keys: none of them is shown as a hit.
    with wds.TarWriter(str(shards / "00000.tar")) as sink:
        for i in range(5):
            sink.write({"__key__": f"k{i}", "jpg": jpeg_bytes(Image.new("RGB", (60, 40)))})
    search(index_dir=out, query="a green photo", k=5, html_out=page, options=CPU)
    assert "data:image" not in page.read_text()


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, dim))
    x = centres[rng.integers(0, 40, n)] + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_find_what_exact_search_finds(kind):
    x = _clustered(3000, 32, 0)
    chunks = lambda: (x[i:i + 700] for i in range(0, len(x), 700))  # noqa: E731
    exact, _ = faiss_index.build("flat", 32, len(x), chunks)
    approx, info = faiss_index.build(kind, 32, len(x), chunks)
    if kind == "ivf":
        assert info["nlist"] == faiss_index.ivf_lists(3000) == 76  # min(4 sqrt(n), n / 39)
    q = _clustered(100, 32, 1)
    _, truth = exact.search(q, 10)
    _, found = approx.search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, found, strict=True)])
    assert recall > 0.9
    assert faiss_index.choose_kind("auto", 100_001, 100_000) == "ivf"
    assert faiss_index.choose_kind("auto", 100_000, 100_000) == "flat"


def test_cli_bad_input_exits_2(demo_run, tmp_path, flat_index):
    _, art = demo_run
    out, _ = flat_index
    runner = CliRunner()
    empty = runner.invoke(app, ["search", "--index", str(out), "  "])
    assert empty.exit_code == 2 and empty.output.strip() == (
        "error: empty query: give the text to search for")
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "readme.txt").write_text("no images here")
    # --run-dir is --run's spelling for torchrun, whose parser takes "--run" for its own.
    no_images = runner.invoke(app, ["index", "--run-dir", str(art / "runs" / "demo"),
                                    "--images", str(tmp_path / "none")])
    assert no_images.exit_code == 2 and "no images" in no_images.output
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.jpg").write_bytes(b"nope")
    unreadable = runner.invoke(app, ["index", "--run", str(art / "runs" / "demo"), "--images",
                                     str(tmp_path / "broken"), "--out", str(tmp_path / "o"),
                                     "--device", "cpu", "--num-workers", "0"])
    assert unreadable.exit_code == 2
    assert "no readable images (skipped: {'not_an_image': 1})" in unreadable.output
    bad_kind = runner.invoke(app, ["index", "--run", str(art / "runs" / "demo"), "--images",
                                   str(tmp_path / "broken"), "--kind", "lsh"])
    assert bad_kind.exit_code == 2 and "unknown index kind 'lsh'" in bad_kind.output


def test_cli_search_json_prints_one_document_and_nothing_else(flat_index):
    out, _ = flat_index
    runner = CliRunner()
    result = runner.invoke(app, ["search", "--index", str(out), "a red circle", "-k", "3",
                                 "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)  # the whole of stdout: no table, no log line
    table = search(index_dir=out, query="a red circle", k=3, options=CPU, table=False)
    assert body == {"query": "a red circle", "results": table}
    assert [h["rank"] for h in body["results"]] == [1, 2, 3]
    assert set(body["results"][0]) >= {"score", "id", "key", "path", "caption", "size"}
    empty = runner.invoke(app, ["search", "--index", str(out), " ", "--json"])
    assert empty.exit_code == 2 and empty.stdout == ""
    assert empty.stderr == "error: empty query: give the text to search for\n"


def _centroids(index_file) -> np.ndarray:
    import faiss

    ivf = faiss.read_index(str(index_file))
    return ivf.quantizer.reconstruct_n(0, ivf.nlist)


def _indexed_copy(demo_run, collection, tmp_path, kind: str):
    """(photos, index dir, build_index keywords, chunk mtimes) after indexing a copy of the
    collection that a test may then change."""
    import shutil

    root, out = tmp_path / "photos", tmp_path / "index"
    shutil.copytree(collection, root)
    kwargs = dict(run=demo_run[1] / "runs" / "demo", images=root, out_dir=out, chunk_size=4,
                  kind=kind, options=CPU)
    first = build_index(**kwargs)
    assert first["n_images"] == 9 and first["chunks"] == ["00000", "00001", "00002"]
    assert first["skipped_files"] == {"square/bad.png": "not_an_image"}
    return root, out, kwargs, _chunk_mtimes(out)


def _chunk_mtimes(out, leave_out: str = "") -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (out / "chunks" / "emb").iterdir()
            if p.name != leave_out}


def test_a_grown_folder_embeds_only_its_new_files(demo_run, collection, tmp_path):
    import faiss

    root, out, kwargs, stamps = _indexed_copy(demo_run, collection, tmp_path, "ivf")
    centroids = _centroids(out / "index.faiss")

    write_shape_classes(root / "new", classes=("x",), per_class=2, seed=5)
    (root / "circle" / "1.png").unlink()
    grown = build_index(**kwargs)
    assert grown["n_images"] == 9 + 2 - 1 and grown["n_removed"] == 1
    assert grown["chunks"] == ["00000", "00001", "00002", "00003"]
    assert _chunk_mtimes(out, "00003.npy") == stamps  # the old chunks were not embedded again
    assert json.loads((out / "chunks" / "done" / "00003.json").read_text())["keys"] == [
        "new/x/0.png", "new/x/1.png"]
    meta = pq.read_table(out / "meta.parquet").to_pydict()
    assert "circle/1.png" not in meta["key"] and "new/x/1.png" in meta["key"]
    for name in ("index.faiss", "dino.faiss"):
        assert faiss.read_index(str(out / name)).ntotal == 10
    hits = search(index_dir=out, query="a red circle", k=10, options=CPU)
    assert len(hits) == 10 and all(h["key"] != "circle/1.png" for h in hits)
    assert grown["trained_n"] == 9  # IVF centroids kept: 10 images have not outgrown them
    np.testing.assert_array_equal(_centroids(out / "index.faiss"), centroids)

    write_shape_classes(root / "more", classes=("y",), per_class=9, seed=6)
    retrained = build_index(**kwargs)  # 19 > 2 x 9: trained again
    assert retrained["n_images"] == 19 and retrained["trained_n"] == 19
    assert not np.array_equal(_centroids(out / "index.faiss"), centroids)


def test_a_file_changed_in_place_is_embedded_again_and_never_served_stale(
        demo_run, collection, demo_model, tmp_path):
    import os

    import faiss

    root, out, kwargs, stamps = _indexed_copy(demo_run, collection, tmp_path, "flat")

    changed = root / "circle" / "0.png"  # another picture under the same name
    changed.write_bytes((root / "star" / "2.png").read_bytes())
    later = changed.stat().st_mtime_ns + 10**9  # an editor's save, a second later
    os.utime(changed, ns=(later, later))
    (root / "square" / "bad.png").write_bytes((root / "square" / "0.png").read_bytes())  # fixed
    again = build_index(**kwargs)
    assert again["n_images"] == 10 and again["n_removed"] == 1  # the stale row is left out
    assert again["skipped"] == {} and again["skipped_files"] == {}  # nothing is unreadable now
    assert again["chunks"] == ["00000", "00001", "00002", "00003"]
    assert json.loads((out / "chunks" / "done" / "00003.json").read_text())["keys"] == [
        "circle/0.png", "square/bad.png"]  # only the changed files are embedded again
    assert _chunk_mtimes(out, "00003.npy") == stamps
    meta = pq.read_table(out / "meta.parquet").to_pydict()
    assert meta["key"].count("circle/0.png") == 1
    row = meta["key"].index("circle/0.png")
    # What the server checks before showing the file: the new file's size and mtime.
    assert [meta["size"][row], meta["mtime_ns"][row]] == [changed.stat().st_size, later]
    stored = faiss.read_index(str(out / "index.faiss")).reconstruct(row)
    want = demo_model.encode_image([changed])[0]
    assert float(torch.from_numpy(stored) @ want) > 0.999  # the new picture's embedding
    assert float(torch.from_numpy(stored) @ demo_model.encode_image(
        [collection / "circle" / "0.png"])[0]) < 0.99  # not the old one's

    assert build_index(**kwargs)["chunks"] == again["chunks"]  # nothing changed: nothing new


def test_dino_index_holds_the_pooled_dino_features(flat_index, demo_model):
    import faiss

    out, _ = flat_index
    meta = pq.read_table(out / "meta.parquet").to_pydict()
    dino = faiss.read_index(str(out / "dino.faiss"))
    stored = dino.reconstruct_n(0, dino.ntotal)
    _, api = demo_model.encode_image_and_dino(meta["path"])
    assert stored.shape == (9, demo_model.dino_dim) == api.shape
    assert float((torch.from_numpy(stored) * api).sum(1).min()) > 0.999
