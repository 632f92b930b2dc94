"""img2dataset against a local http.server serving generated JPEGs, then extract on its shards."""

import json
import random
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pyarrow.parquet as pq
import pytest

from dinov2clip.data.synthetic import draw, jpeg_bytes, random_scene
from tests.helpers import TIMEOUT, demo_config, run_cli


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def image_server(tmp_path):
    """A `python -m http.server` on 127.0.0.1 serving 12 generated JPEGs."""
    www = tmp_path / "www"
    www.mkdir()
    rng = random.Random(0)
    captions = {}
    for i in range(12):
        scene = random_scene(rng)
        (www / f"img{i}.jpg").write_bytes(jpeg_bytes(draw(scene, 320, rng)))
        captions[f"img{i}.jpg"] = scene.caption(0)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                               "127.0.0.1", "--directory", str(www)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + TIMEOUT  # a loaded machine is slow to start Python
    while True:
        try:
            urllib.request.urlopen(f"{url}/img0.jpg", timeout=1)
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "no image server"
            time.sleep(0.1)
    yield url, captions
    server.terminate()
    server.wait(timeout=10)


def write_pairs_tsv(path, url: str, captions: dict):
    """img2dataset's url list: every image the server has, and one it does not (a 404)."""
    rows = [f"{url}/{name}\t{cap}" for name, cap in captions.items()]
    rows.append(f"{url}/missing.jpg\ta picture that is not there")  # a 404 to count
    path.write_text("url\tcaption\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.slow
def test_img2dataset_shards_feed_extract(tmp_path, image_server):
    url, captions = image_server
    tsv = write_pairs_tsv(tmp_path / "pairs.tsv", url, captions)
    artifacts = tmp_path / "artifacts"
    config = demo_config(tmp_path / "c.toml", artifacts, {
        "data.dataset": "web", "data.url_list": str(tsv), "data.processes_count": 1,
        "data.thread_count": 4, "data.number_sample_per_shard": 8, "data.image_size": 256,
        "data.synthetic.num_train": 0, "data.synthetic.num_eval": 0,
        "extract.datasets": ["shards/web"]})
    proc = run_cli("data", "--config", str(config))
    assert "12/13 downloaded" in proc.stderr  # the one-line summary of _stats.json
    shards = sorted((artifacts / "shards" / "web").glob("*.tar"))
    assert len(shards) == 2
    stats = [json.loads(p.read_text()) for p in
             sorted((artifacts / "shards" / "web").glob("*_stats.json"))]
    assert sum(s["successes"] for s in stats) == 12

    run_cli("extract", "--config", str(config))
    emb = artifacts / "embeddings" / "web" / "tiny"
    manifest = json.loads((emb / "manifest.json").read_text())
    assert manifest["n_images"] == 12 and manifest["skipped"] == {}
    got = {}
    for shard in sorted((emb / "meta").glob("*.parquet")):
        meta = pq.read_table(shard).to_pydict()
        n = len(meta["key"])
        assert np.load(emb / "dino_cls" / f"{shard.stem}.npy").shape == (n, 48)
        assert np.load(emb / "clip_text" / f"{shard.stem}.npy").shape == (n, 32)
        got.update({u.rsplit("/", 1)[1]: c[0] for u, c in zip(meta["url"], meta["captions"],
                                                               strict=True)})
    assert got == captions
