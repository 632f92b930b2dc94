"""The search server's JSON API, in process over HTTP: rankings against brute force, 4xx errors,
hostile input (huge images, long queries)."""

import contextlib
import http.client
import io
import os
import shutil
import signal
import socket
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from starlette.testclient import TestClient

from dinov2clip.config import UseOptions
from dinov2clip.index import build_index, search
from dinov2clip.serve import SearchEngine, create_app
from dinov2clip.serve.engine import Batcher
from tests.conftest import write_shape_classes
from tests.helpers import ONE_THREAD, TIMEOUT, start_cli


@pytest.fixture(scope="module")
def served(demo_run, tmp_path_factory):
    """(client, engine, index dir): 12 shape images indexed, served with a 40 kB upload cap."""
    _, art = demo_run
    root = write_shape_classes(tmp_path_factory.mktemp("serve") / "photos", per_class=4)
    (root / "circle" / "0.txt").write_text("a red circle")
    out = root.parent / "index"
    build_index(run=art / "runs" / "demo", images=root, out_dir=out,
                options=UseOptions(device="cpu", num_workers=0))
    engine = SearchEngine(out, device="cpu")
    with TestClient(create_app(engine, max_k=50, max_upload=40_000),
                    raise_server_exceptions=False) as client:
        yield client, engine, out


def test_health_and_info_name_the_run_and_index(served, demo_run):
    client, _, out = served
    assert client.get("/healthz").json() == {"status": "ok", "n_images": 12}
    info = client.get("/api/info").json()
    assert info["run"].endswith("runs/demo") and info["index"] == str(out.resolve())
    assert info["n_images"] == 12 and info["similar"] is True and info["max_k"] == 50


def test_text_search_ranks_by_projected_cosine(served, demo_model):
    client, _, out = served
    body = client.get("/api/search", params={"q": "a red circle", "k": 5}).json()
    meta = pq.read_table(out / "meta.parquet").to_pydict()
    brute = (demo_model.encode_image(meta["path"]) @ demo_model.encode_text("a red circle").T)[:, 0]
    order = brute.argsort(descending=True)[:5].tolist()
    assert [r["id"] for r in body["results"]] == order
    assert [r["rank"] for r in body["results"]] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([r["score"] for r in body["results"]], brute[order], atol=1e-3)
    first = body["results"][0]
    assert first["path"] == meta["path"][first["id"]] and first["image"] == f"/api/image/{order[0]}"
    assert body["took_ms"] > 0
    captioned = client.get("/api/search", params={"q": "anything", "k": 12}).json()["results"]
    assert {r["key"]: r["caption"] for r in captioned}["circle/0.png"] == "a red circle"


def test_similar_ranks_by_dino_features_and_leaves_the_image_out(served, demo_model):
    client, _, out = served
    meta = pq.read_table(out / "meta.parquet").to_pydict()
    projected, dino = demo_model.encode_image_and_dino(meta["path"])
    body = client.get("/api/similar", params={"id": 3, "k": 4}).json()
    sims = dino @ dino[3]
    sims[3] = -2  # the query image itself is not a result
    order = sims.argsort(descending=True)[:4].tolist()
    assert [r["id"] for r in body["results"]] == order
    np.testing.assert_allclose([r["score"] for r in body["results"]], sims[order], atol=2e-3)
    assert body["query_image"]["key"] == meta["key"][3]
    # DINOv2's space is not the projected one: the two orders differ on this collection.
    by_projection = (projected @ projected[3]).argsort(descending=True)[1:5].tolist()
    assert by_projection != order


def test_search_by_uploaded_image_finds_that_image(served):
    client, _, out = served
    meta = pq.read_table(out / "meta.parquet").to_pydict()
    data = open(meta["path"][7], "rb").read()
    multipart = client.post("/api/search_image?k=3", files={"image": ("x.png", data)}).json()
    raw = client.post("/api/search_image?k=3", content=data,
                      headers={"content-type": "image/png"}).json()
    assert multipart["results"][0]["id"] == raw["results"][0]["id"] == 7
    assert multipart["results"][0]["score"] > 0.999


def test_images_and_thumbnails(served):
    client, _, out = served
    meta = pq.read_table(out / "meta.parquet").to_pydict()
    thumb = client.get("/api/image/2", params={"size": 40})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) == 40
    original = client.get("/api/image/2?size=0")
    assert original.content == open(meta["path"][2], "rb").read()
    assert original.headers["content-type"] == "image/png"


def heatmap_of(client, **params):
    r = client.get("/api/heatmap", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png" and r.content[:4] == b"\x89PNG"
    return r, Image.open(io.BytesIO(r.content)).convert("RGB")


def test_a_heatmap_is_the_image_with_the_query_s_cosines_over_it(served, demo_model):
    client, engine, out = served
    meta = pq.read_table(out / "meta.parquet").to_pydict()
    image = Image.open(meta["path"][4]).convert("RGB")
    r, overlay = heatmap_of(client, id=4, q="a red circle")
    assert overlay.size == image.size and max(image.size) < 512  # the image's own size
    # what the colours stretch over is the model's own heatmap of that image and text
    heat = demo_model.heatmap(image, "a red circle")
    assert float(r.headers["x-heatmap-min"]) == pytest.approx(float(heat.min()), abs=1e-3)
    assert float(r.headers["x-heatmap-max"]) == pytest.approx(float(heat.max()), abs=1e-3)
    assert float(r.headers["x-heatmap-min"]) < float(r.headers["x-heatmap-max"])
    pixels = np.asarray(overlay, dtype=float)
    assert np.abs(pixels - np.asarray(image, dtype=float)).mean() > 20  # drawn over, not copied
    _, other = heatmap_of(client, id=4, q="a blue triangle")
    assert np.abs(pixels - np.asarray(other, dtype=float)).mean() > 1  # the query matters
    _, learned = heatmap_of(client, id=4, q="a red circle", head="talk2dino")
    assert np.abs(pixels - np.asarray(learned, dtype=float)).mean() > 1  # and the head
    assert client.get("/api/info").json()["heads"] == ["projector", "talk2dino"]


def test_a_large_image_s_heatmap_is_at_most_512_px(served, demo_run, tmp_path):
    _, art = demo_run
    photos = tmp_path / "wide"
    photos.mkdir()
    Image.new("RGB", (1500, 600), (200, 40, 40)).save(photos / "wide.jpg", quality=90)
    out = tmp_path / "index"
    build_index(run=art / "runs" / "demo", images=photos, out_dir=out,
                options=UseOptions(device="cpu", num_workers=0))
    with TestClient(create_app(SearchEngine(out, device="cpu")),
                    raise_server_exceptions=False) as client:
        _, overlay = heatmap_of(client, id=0, q="a red wall")
    assert overlay.size == (512, 205)


def test_a_panorama_s_heatmap_keeps_its_windows_few():
    from dinov2clip.dense.protocol import resize_short_side, window_boxes
    from dinov2clip.serve.engine import heatmap_protocol

    assert heatmap_protocol(512, 384).short_side == 448  # an ordinary photo: the protocol's
    for w, h in ((512, 128), (512, 20), (8, 512)):
        proto = heatmap_protocol(w, h)
        x = resize_short_side(torch.zeros(1, 3, h, w), proto.short_side)
        assert max(x.shape[-2:]) <= 1792 + 1
        assert len(window_boxes(*x.shape[-2:], proto.window, proto.stride)) <= 7


def test_the_talk2dino_head_of_a_run_without_one_is_a_409(demo_run, served, tmp_path):
    _, art = demo_run
    _, _, out = served
    run = tmp_path / "runs" / "no-head"
    shutil.copytree(art / "runs" / "demo", run)
    for f in run.glob("talk2dino.*"):
        f.unlink()
    engine = SearchEngine(out, run=run, device="cpu")
    with TestClient(create_app(engine), raise_server_exceptions=False) as client:
        r = client.get("/api/heatmap", params={"id": 1, "q": "a dog", "head": "talk2dino"})
        assert r.status_code == 409 and r.headers["content-type"] == "application/json"
        assert r.json()["error"] == (f"the run {run} has no talk2dino head (it has: projector); "
                                     "train one with train.dense.head")
        assert client.get("/api/info").json()["heads"] == ["projector"]
        heatmap_of(client, id=1, q="a dog")  # the projector head is always there


def test_at_most_two_heatmaps_are_drawn_at_once(served, monkeypatch):
    client, engine, _ = served
    most = slowed(monkeypatch, engine, "heatmap")
    codes = all_at_once(6, lambda i: client.get("/api/heatmap", params={"id": i, "q": "a shape"}))
    assert codes == [200] * 6 and most[0] == 2


def slowed(monkeypatch, engine, method: str) -> list[int]:
    """Make engine.<method> take 0.2 s; [the most calls seen running at once], kept up to date."""
    running, most, lock = [0], [0], threading.Lock()
    real = getattr(engine, method)

    def slow(*args):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        return real(*args)

    monkeypatch.setattr(engine, method, slow)
    return most


def all_at_once(n: int, request) -> list[int]:
    """The status codes of request(i) for i < n, sent from n threads at once."""
    codes = []
    threads = [threading.Thread(target=lambda i=i: codes.append(request(i).status_code))
               for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return codes


@pytest.fixture(scope="module")
def huge_png() -> bytes:
    """A 12,500 x 12,500 one-colour PNG: 19 KB on the wire, 156 M pixels (under PIL's own
    179 M limit), 469 MB once decoded and made RGB."""
    buf = io.BytesIO()
    Image.new("1", (12_500, 12_500)).save(buf, format="PNG")
    return buf.getvalue()


@contextlib.contextmanager
def rss_growth():
    """Samples this process's resident memory every 2 ms while the block runs; the yielded list
    holds, once it ends, the peak growth over the start in bytes."""
    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    start, peak, done = rss(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out: list[int] = []
    try:
        yield out
    finally:
        done.set()
        thread.join()
        out.append(max(peak[0], rss()) - start)


def test_a_48_megapixel_phone_jpeg_is_searched_at_the_size_it_decodes_to(served, demo_model):
    """The pixel cap guards what is decoded: a JPEG decodes at 1/8 of 8,000 x 6,000 for a
    224 crop, so a phone's 48 M pixel photo is searched, while a PNG that size is refused."""
    _, engine, _ = served
    client = TestClient(create_app(engine), raise_server_exceptions=False)  # the 20 MB cap
    photo = Image.new("RGB", (8000, 6000), (200, 40, 40))
    buf = io.BytesIO()
    photo.save(buf, format="JPEG", quality=80)
    with rss_growth() as growth:
        r = client.post("/api/search_image", content=buf.getvalue(),
                        headers={"content-type": "image/jpeg"})
    assert r.status_code == 200 and len(r.json()["results"]) > 0
    assert growth[0] < 100 << 20, f"memory grew {growth[0] >> 20} MB"  # 144 MB decoded in full
    buf = io.BytesIO()
    Image.new("1", (8000, 6000)).save(buf, format="PNG")
    r = client.post("/api/search_image", content=buf.getvalue(),
                    headers={"content-type": "image/png"})
    assert r.status_code == 413 and "48.0 M pixels, more than the 40 M allowed" in r.json()["error"]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL's, at 89 M
@pytest.mark.parametrize("as_form", [False, True])
def test_an_upload_of_too_many_pixels_is_refused_before_it_is_decoded(served, huge_png, as_form):
    client, _, _ = served
    assert len(huge_png) < 40_000  # under the upload cap: only its pixel count gives it away
    post = ({"files": {"image": ("huge.png", huge_png)}} if as_form else
            {"content": huge_png, "headers": {"content-type": "image/png"}})
    with rss_growth() as growth:
        r = client.post("/api/search_image", **post)
    assert r.status_code == 413 and r.headers["content-type"] == "application/json"
    assert r.json()["error"] == ("image too large: 12500 x 12500 is 156.2 M pixels, more than "
                                 "the 40 M allowed")
    # Decoding it would take 156 MB (mode 1), then 469 MB as RGB; reading the header, nothing.
    assert growth[0] < 40 << 20, f"memory grew {growth[0] >> 20} MB"


def test_at_most_two_uploads_are_decoded_at_once(served, monkeypatch):
    client, engine, out = served
    most = slowed(monkeypatch, engine, "search_image")
    data = open(pq.read_table(out / "meta.parquet").column("path")[0].as_py(), "rb").read()
    codes = all_at_once(6, lambda _: client.post("/api/search_image?k=1", content=data))
    assert codes == [200] * 6 and most[0] == 2


def test_a_large_jpeg_upload_is_decoded_at_reduced_scale_and_still_found(served):
    from dinov2clip.models.preprocess import decode

    client, engine, out = served
    meta = pq.read_table(out / "meta.parquet").to_pydict()
    photo = Image.open(meta["path"][5]).convert("RGB").resize((1200, 1200), Image.BICUBIC)
    buf = io.BytesIO()
    photo.save(buf, format="JPEG", quality=90)
    assert len(buf.getvalue()) < 40_000  # the fixture's upload cap
    # The DINOv2 crop needs 256 px (shortest edge): 1200 px decodes at 1/4 scale, 300 px.
    spec = engine.model.dino_spec
    assert decode(buf.getvalue(), min_side=max(spec.resize, spec.crop)).size == (300, 300)
    assert decode(buf.getvalue()).size == (1200, 1200)
    body = client.post("/api/search_image?k=3", files={"image": ("p.jpg", buf.getvalue())}).json()
    assert body["results"][0]["id"] == 5 and body["results"][0]["score"] > 0.98


def test_a_query_is_capped_at_1000_characters(served):
    client, _, _ = served
    longest = "a red circle " * 76 + "a" * 12  # 1,000 characters
    r = client.get("/api/search", params={"q": longest, "k": 2})
    assert r.status_code == 200 and r.json()["query"] == longest
    for n in (1001, 60_000):  # 60,000: near the most httpx puts in a URL (64 KiB)
        r = client.get("/api/search", params={"q": "x" * n, "k": 2})
        assert r.status_code == 400 and r.headers["content-type"] == "application/json"
        assert r.json() == {"error": f"query too long: at most 1000 characters, got {n}"}
    assert client.get("/api/info").json()["max_query_chars"] == 1000


@pytest.fixture
def changing(demo_run, tmp_path):
    """(client, photos, index, meta): three images indexed and served, for a test to change on
    disk."""
    _, art = demo_run
    root = write_shape_classes(tmp_path / "photos", classes=("circle",), per_class=3)
    out = tmp_path / "index"
    build_index(run=art / "runs" / "demo", images=root, out_dir=out,
                options=UseOptions(device="cpu", num_workers=0))
    meta = pq.read_table(out / "meta.parquet").to_pydict()
    assert meta["key"] == ["circle/0.png", "circle/1.png", "circle/2.png"]
    with TestClient(create_app(SearchEngine(out, device="cpu")),
                    raise_server_exceptions=False) as client:
        yield client, root, out, meta


def test_a_file_changed_since_it_was_indexed_is_not_served(changing, tmp_path):
    client, root, out, meta = changing
    assert meta["size"][0] == (root / "circle" / "0.png").stat().st_size
    # 0: a link to a copy outside the folder, with the same size and mtime (copy2): only the
    # link gives it away. 1: a link to a text file. 2: rewritten, 10 bytes longer.
    shutil.copy2(root / "circle" / "0.png", tmp_path / "outside.png")
    (tmp_path / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    for i, target in ((0, tmp_path / "outside.png"), (1, tmp_path / "passwd")):
        (root / "circle" / f"{i}.png").unlink()
        (root / "circle" / f"{i}.png").symlink_to(target)
    with open(root / "circle" / "2.png", "ab") as f:
        f.write(b"\0" * 10)
    for i in range(3):
        for size in (0, 64):
            r = client.get(f"/api/image/{i}?size={size}")
            assert r.status_code == 404 and r.headers["content-type"] == "application/json"
            assert r.json()["error"] == (f"image {i} (circle/{i}.png) has changed since it was "
                                         f"indexed ({meta['path'][i]})")
        r = client.get("/api/heatmap", params={"id": i, "q": "a circle"})
        assert r.status_code == 404 and "has changed since it was indexed" in r.json()["error"]
    # `pipeline search --html` reads them through the same check: links, no inlined images.
    page = search(index_dir=out, query="a circle", k=3, html_out=tmp_path / "hits.html",
                  options=UseOptions(device="cpu"))
    html = (tmp_path / "hits.html").read_text()
    assert len(page) == 3 and "data:image" not in html and html.count('src="file://') == 3


def test_an_unchanged_file_is_served_and_a_restored_one_again(changing):
    client, root, _, _ = changing
    path = root / "circle" / "1.png"
    data, st = path.read_bytes(), path.stat()
    path.write_bytes(data[:-1] + b"\1")  # same size, new mtime
    assert client.get("/api/image/1?size=0").status_code == 404
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: as indexed
    assert client.get("/api/image/1?size=0").status_code == 200
    assert client.get("/api/image/0?size=0").content == (root / "circle" / "0.png").read_bytes()


def test_a_thumbnail_cached_before_its_file_changed_is_not_served(changing):
    client, root, _, _ = changing
    assert client.get("/api/image/2?size=64").status_code == 200  # rendered and cached
    path = root / "circle" / "2.png"
    data, st = path.read_bytes(), path.stat()
    path.write_bytes(data[:-1] + b"\1")
    r = client.get("/api/image/2?size=64")
    assert r.status_code == 404 and "has changed since it was indexed" in r.json()["error"]
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # as indexed again: served again
    assert client.get("/api/image/2?size=64").status_code == 200


def test_an_index_without_file_stamps_still_refuses_links(demo_run, tmp_path, caplog):
    _, art = demo_run
    root = write_shape_classes(tmp_path / "photos", classes=("circle",), per_class=2)
    out = tmp_path / "index"
    build_index(run=art / "runs" / "demo", images=root, out_dir=out,
                options=UseOptions(device="cpu", num_workers=0))
    table = pq.read_table(out / "meta.parquet")  # as written before it kept size and mtime_ns
    pq.write_table(table.drop_columns(["size", "mtime_ns"]), out / "meta.parquet")
    with caplog.at_level("WARNING"):
        engine = SearchEngine(out, device="cpu")
    assert "records no file sizes or mtimes" in caplog.text
    (root / "circle" / "1.png").unlink()
    (root / "circle" / "1.png").symlink_to(root / "circle" / "0.png")
    client = TestClient(create_app(engine), raise_server_exceptions=False)
    assert client.get("/api/image/0?size=0").status_code == 200
    assert "has changed since" in client.get("/api/image/1?size=0").json()["error"]
    engine.close()


@pytest.mark.parametrize("method, url, kwargs, status, message", [
    ("get", "/api/search?q=%20%20", {}, 400, "empty query"),
    ("get", "/api/search", {}, 400, "empty query"),
    ("get", "/api/search?q=dog&k=0", {}, 400, "k must be between 1 and 50, got 0"),
    ("get", "/api/search?q=dog&k=51", {}, 400, "k must be between 1 and 50, got 51"),
    ("get", "/api/search?q=dog&k=ten", {}, 400, "k must be an integer, got 'ten'"),
    ("get", "/api/similar?id=12", {}, 404, "unknown image id 12 (the index holds ids 0 to 11)"),
    ("get", "/api/similar?id=-1", {}, 400, "id must be between 0"),
    ("get", "/api/similar", {}, 400, "missing parameter 'id'"),
    ("get", "/api/image/99", {}, 404, "unknown image id 99"),
    ("get", "/api/image/x", {}, 404, "image ids are integers"),
    ("get", "/api/image/1?size=5000", {}, 400, "size must be between 0 and 1024"),
    ("post", "/api/search_image", {"content": b"not an image at all"}, 400,
     "not an image the server can read"),
    ("post", "/api/search_image", {"content": b""}, 400, "empty upload"),
    ("post", "/api/search_image", {"files": {"other": ("a.png", b"x")}}, 400,
     "no file in the form field 'image'"),
    ("post", "/api/search_image", {"content": b"\xff" * 50_000}, 413, "upload too large"),
    ("get", "/api/search_image", {}, 405, "Method Not Allowed"),
    ("get", "/api/heatmap?q=dog", {}, 400, "missing parameter 'id'"),
    ("get", "/api/heatmap?id=12&q=dog", {}, 404, "unknown image id 12"),
    ("get", "/api/heatmap?id=1", {}, 400, "empty query"),
    ("get", "/api/heatmap?id=1&q=" + "x" * 1001, {}, 400,
     "query too long: at most 1000 characters, got 1001"),
    ("get", "/api/heatmap?id=1&q=dog&head=clip", {}, 400,
     "head must be one of projector, talk2dino, got 'clip'"),
    ("get", "/nowhere", {}, 404, "Not Found"),
])
def test_bad_input_is_a_4xx_with_a_json_error(served, method, url, kwargs, status, message):
    client, _, _ = served
    r = getattr(client, method)(url, **kwargs)
    assert r.status_code == status
    assert r.headers["content-type"] == "application/json"
    assert message in r.json()["error"] and "Traceback" not in r.text


def test_concurrent_text_queries_are_batched_and_answered_alike(served):
    _, engine, _ = served
    queries = [f"photo number {i}" for i in range(24)]
    alone = [engine.search_text(q, 5).result() for q in queries]
    calls = []
    inner = engine.text_batcher.fn
    engine.text_batcher.fn = lambda reqs: (calls.append(len(reqs)), time.sleep(0.05),
                                           inner(reqs))[2]
    try:
        results = [None] * len(queries)

        def ask(i):
            results[i] = engine.search_text(queries[i], 5).result()

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(queries))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        engine.text_batcher.fn = inner
    assert sum(calls) == 24 and len(calls) < 24 and max(calls) > 1
    for (s1, i1), (s2, i2) in zip(alone, results, strict=True):
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_allclose(s1, s2, atol=1e-5)


def test_a_failing_batch_fails_each_of_its_requests():
    def boom(items):
        raise RuntimeError("tower on fire")

    batcher = Batcher(boom)
    futures = [batcher.submit(i) for i in range(3)]
    for f in futures:
        with pytest.raises(RuntimeError, match="tower on fire"):
            f.result(timeout=5)
    batcher.close()
    assert not batcher.thread.is_alive()


def test_cli_serve_bad_index_exits_2(tmp_path):
    from typer.testing import CliRunner

    from dinov2clip.pipeline import app

    result = CliRunner().invoke(app, ["serve", "--index", str(tmp_path)])
    assert result.exit_code == 2 and "error: no finished index" in result.output


def _healthz(port: int) -> int:
    """The status /healthz answers on 127.0.0.1:port, 0 while nothing listens yet."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status
    except OSError:
        return 0
    finally:
        conn.close()


@pytest.mark.slow  # a second process importing torch, stopped by a signal
def test_ctrl_c_stops_pipeline_serve_with_exit_code_130(served, tmp_path):
    _, _, out = served
    with socket.socket() as sock:  # a free port, released for the server to take
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path / "serve.log"
    proc = start_cli(log, "serve", "--index", str(out), "--port", str(port), "--device", "cpu",
                     env=ONE_THREAD)
    try:
        deadline = time.monotonic() + TIMEOUT
        while _healthz(port) != 200:
            assert proc.poll() is None, f"serve exited {proc.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, "serve did not answer /healthz"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "Traceback" not in text and "server stopped (interrupted)" in text
