"""data.distributor: img2dataset's pyspark distributor on a local Spark (local[2]) against the
127.0.0.1 image server, and the checks that stop a bad distributor before any download.

pyspark is in the dev dependency group; ray is not installed (its missing-package error is tested).
"""

import json

import pytest
from typer.testing import CliRunner

from dinov2clip.pipeline import app
from tests.conftest import run_cli, tiny_config_text
from tests.test_img2dataset import image_server  # noqa: F401 - the fixture


def download_config(tmp_path, url: str, captions: dict, extra: str) -> tuple:
    tsv = tmp_path / "pairs.tsv"
    rows = [f"{url}/{name}\t{cap}" for name, cap in captions.items()]
    rows.append(f"{url}/missing.jpg\ta picture that is not there")  # a 404 to count
    tsv.write_text("url\tcaption\n" + "\n".join(rows) + "\n")
    artifacts = tmp_path / "artifacts"
    text = tiny_config_text(artifacts)
    text = text.replace('dataset = "shapes"\n', f'dataset = "web"\nurl_list = "{tsv}"\n'
                        'processes_count = 2\nthread_count = 4\nnumber_sample_per_shard = 8\n'
                        f'image_size = 256\n{extra}', 1)
    text = text.replace("num_train = 384", "num_train = 0").replace("num_eval = 60",
                                                                     "num_eval = 0")
    text = text.replace("zeroshot_per_class = 3", "zeroshot_per_class = 0")
    text = text.replace("tiny_models = true", "tiny_models = false")  # only the download here
    config = tmp_path / "c.toml"
    config.write_text(text)
    return config, artifacts


@pytest.mark.slow  # starts Spark and img2dataset
def test_pyspark_distributor_downloads_on_a_local_spark_master(tmp_path, image_server):  # noqa: F811
    url, captions = image_server
    config, artifacts = download_config(tmp_path, url, captions,
                                        'distributor = "pyspark"\nspark_master = "local[2]"\n')
    proc = run_cli("data", "--config", str(config))
    assert "12/13 downloaded" in proc.stderr, proc.stderr[-2000:]
    assert "Spark master local[2]" in proc.stderr
    shard_dir = artifacts / "shards" / "web"
    assert len(sorted(shard_dir.glob("*.tar"))) == 2
    stats = [json.loads(p.read_text()) for p in sorted(shard_dir.glob("*_stats.json"))]
    assert sum(s["successes"] for s in stats) == 12


@pytest.mark.parametrize("extra, message", [
    ('distributor = "slurm"\n', "data.distributor must be one of multiprocessing, pyspark, ray"),
    ('distributor = "ray"\n', "data.distributor=ray needs the ray package"),
])
def test_a_bad_distributor_stops_before_anything_is_downloaded(tmp_path, extra, message):
    config, artifacts = download_config(tmp_path, "http://127.0.0.1:9", {}, extra)
    result = CliRunner().invoke(app, ["data", "--config", str(config)])
    assert result.exit_code == 2 and f"error: {message}" in result.stderr
    assert "Traceback" not in result.output
    assert not (artifacts / "shards" / "web").exists()
