"""URL lists (remote, header-less, subsets) and img2dataset's resume, against a local web server."""

import dataclasses
import functools
import gzip
import http.server
import os
import random
import signal
import sys
import threading
import time
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from dinov2clip.config import ConfigError, DataConfig
from dinov2clip.data.download import download_pairs, format_summary
from dinov2clip.data.synthetic import draw, jpeg_bytes, random_scene
from dinov2clip.data.urllists import prepare_url_list
from dinov2clip.pipeline import app


@pytest.fixture
def web(tmp_path):
    """(base url, www dir, hits per path) of a threaded http.server on 127.0.0.1."""
    www = tmp_path / "www"
    www.mkdir()
    hits: Counter = Counter()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            hits[self.path] += 1
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", www, hits
    server.shutdown()
    server.server_close()


def rows_of(path) -> list[str]:
    return open(path).read().splitlines()


def test_remote_headerless_tsv_subset_streams_only_its_rows(tmp_path, web):
    url, www, hits = web
    lines = [f"http://x/{i}.jpg\tcaption {i}" for i in range(50)]
    (www / "cc12m.tsv").write_text("\n".join(lines) + "\n")
    cfg = DataConfig(url_list=f"{url}/cc12m.tsv", header=False, max_samples=3)
    path, fmt = prepare_url_list(cfg, tmp_path / "work")
    assert fmt == "tsv"
    assert rows_of(path) == ["url\tcaption", *lines[:3]]
    again, _ = prepare_url_list(cfg, tmp_path / "work")
    assert again == path and hits["/cc12m.tsv"] == 1  # a re-run reuses the made list

    full, _ = prepare_url_list(dataclasses.replace(cfg, max_samples=0), tmp_path / "work")
    assert rows_of(full) == ["url\tcaption", *lines]
    # Another setting makes another file: here the first line is taken as the header.
    headed, _ = prepare_url_list(dataclasses.replace(cfg, header=True), tmp_path / "work")
    assert headed != path and rows_of(headed) == lines[:4]


def test_gzipped_and_parquet_lists(tmp_path, web):
    url, www, _ = web
    (www / "l.csv.gz").write_bytes(gzip.compress(b"url,caption\na,1\nb,2\nc,3\n"))
    path, fmt = prepare_url_list(DataConfig(url_list=f"{url}/l.csv.gz", input_format="csv.gz",
                                            max_samples=2), tmp_path / "w")
    assert fmt == "csv" and rows_of(path) == ["url,caption", "a,1", "b,2"]

    table = pa.table({"url": [f"u{i}" for i in range(100)], "caption": ["c"] * 100})
    pq.write_table(table, www / "l.parquet", row_group_size=30)
    for src in (f"{url}/l.parquet", str(www / "l.parquet")):
        path, fmt = prepare_url_list(DataConfig(url_list=src, input_format="parquet",
                                                max_samples=45), tmp_path / src[:4])
        assert fmt == "parquet"
        assert pq.read_table(path).column("url").to_pylist() == [f"u{i}" for i in range(45)]
    local = DataConfig(url_list=str(www / "l.parquet"), input_format="parquet")
    assert prepare_url_list(local, tmp_path / "w") == (str(www / "l.parquet"), "parquet")


@pytest.mark.parametrize("change, message", [
    ({"url_list": "/nowhere/cc12m.tsv"}, "data.url_list not found: /nowhere/cc12m.tsv"),
    ({"input_format": "xlsx"}, "'input_format' must be one of tsv, tsv.gz, csv"),  # when read
    ({"input_format": "jsonl", "max_samples": 5}, "max_samples works on tsv, csv and parquet"),
    ({"input_format": "parquet", "header": False}, "header = false applies to tsv and csv"),
])
def test_bad_url_list_settings(tmp_path, change, message):
    (tmp_path / "l.tsv").write_text("url\tcaption\n")
    with pytest.raises(ConfigError, match=message):
        cfg = dataclasses.replace(DataConfig(url_list=str(tmp_path / "l.tsv")), **change)
        prepare_url_list(cfg, tmp_path / "w")


def test_unreachable_list_is_one_line(tmp_path, web):
    url, _, _ = web
    with pytest.raises(ConfigError, match="cannot fetch .*/absent.tsv"):
        prepare_url_list(DataConfig(url_list=f"{url}/absent.tsv", max_samples=2), tmp_path)


def test_missing_url_list_exits_2(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(f'artifacts = "{tmp_path / "a"}"\n[data]\nurl_list = "{tmp_path}/no.tsv"\n'
                      "[data.synthetic]\ntiny_models = false\n")
    result = CliRunner().invoke(app, ["data", "--config", str(config)])
    assert result.exit_code == 2
    expected = f"error: data.url_list not found: {tmp_path}/no.tsv"
    assert result.stderr.strip().splitlines() == [expected]


@pytest.mark.slow
def test_img2dataset_resume_downloads_only_unfinished_shards(tmp_path, web):
    url, www, hits = web
    rng = random.Random(0)
    lines = []
    for i in range(7):
        scene = random_scene(rng)
        (www / f"{i}.jpg").write_bytes(jpeg_bytes(draw(scene, 96, rng)))
        lines.append(f"{url}/{i}.jpg\t{scene.caption(0)}")
    lines.insert(3, f"{url}/gone.jpg\ta picture that is not there")  # a 404, counted
    (www / "pairs.tsv").write_text("\n".join(lines) + "\n")  # no header, as CC12M
    cfg = DataConfig(dataset="web", url_list=f"{url}/pairs.tsv", header=False, max_samples=7,
                     processes_count=1, thread_count=2, number_sample_per_shard=4, image_size=64)
    out = tmp_path / "shards" / "web"
    summary = download_pairs(cfg, out, tmp_path / "downloads")
    assert (summary["count"], summary["successes"], summary["shards"]) == (7, 6, 2)
    assert list(summary["failures"].values()) == [1] and "404" in next(iter(summary["failures"]))
    line = format_summary("web", summary)
    assert line.startswith("web: 6/7 downloaded (85.7%) into 2 shards; failures: 1 HTTP Error 404")
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    image_hits = sum(n for path, n in hits.items() if path.endswith(".jpg"))
    assert image_hits == 7 and "/6.jpg" not in hits  # the 8th row is past max_samples

    # As if killed while writing shard 1 (img2dataset writes _stats.json last). The re-run
    # leaves the finished shard 0 alone, neither fetched again nor rewritten (each img2dataset
    # run costs ~15-35 s of process spawns here, so a separate no-op re-run is not timed too).
    (out / "00001_stats.json").unlink()
    summary = download_pairs(cfg, out, tmp_path / "downloads")
    assert (summary["count"], summary["successes"]) == (7, 6)
    assert (out / "00000.tar").stat().st_mtime_ns == first["00000.tar"]
    assert (out / "00001.tar").stat().st_mtime_ns != first["00001.tar"]
    fetched_twice = {p for p, n in hits.items() if p.endswith(".jpg") and n == 2}
    assert fetched_twice == {"/3.jpg", "/4.jpg", "/5.jpg"}  # shard 1's rows, and only those
    assert sum(hits[f"/{i}.jpg"] for i in range(3)) + hits["/gone.jpg"] == 4

    with pytest.raises(ConfigError, match="data.number_sample_per_shard is 5 but .* with 4"):
        download_pairs(dataclasses.replace(cfg, number_sample_per_shard=5), out,
                       tmp_path / "downloads")


def test_summary_names_top_reasons_and_the_rest():
    s = {"count": 20, "successes": 10, "shards": 1,
         "failures": {f"reason {i}\nline": 7 - i for i in range(7)}}
    line = format_summary("cc12m", s)
    assert "\n" not in line
    assert line.endswith("failures: 7 reason 0 line, 6 reason 1 line, 5 reason 2 line, "
                         "4 reason 3 line, 3 reason 4 line, 3 more in 2 other reasons")


def test_ctrl_c_in_img2dataset_is_an_interrupt_not_a_success(tmp_path, monkeypatch):
    import img2dataset

    def download_killed_by_ctrl_c(**kwargs):
        # img2dataset's own handler: clean up, then sys.exit(0).
        signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # the signal arrives first

    monkeypatch.setattr(img2dataset, "download", download_killed_by_ctrl_c)
    (tmp_path / "l.tsv").write_text("url\tcaption\n")
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        download_pairs(DataConfig(url_list=str(tmp_path / "l.tsv")), tmp_path / "out", tmp_path)
    assert signal.getsignal(signal.SIGINT) is before
    assert not (tmp_path / "cc12m.summary.json").exists()
