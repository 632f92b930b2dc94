"""data.distributor: img2dataset's pyspark distributor on a local Spark (local[2]) against the
127.0.0.1 image server, and the checks that stop a bad distributor before any download.

pyspark is in the dev dependency group; ray is not installed (its missing-package error is tested).
"""

import json

import pytest
from typer.testing import CliRunner

from dinov2clip.pipeline import app
from tests.conftest import demo_config, run_cli
from tests.test_img2dataset import image_server, write_pairs_tsv  # noqa: F401 - the fixture


def download_config(tmp_path, url: str, captions: dict, distributor: dict) -> tuple:
    """(config, artifacts): download only (no synthetic data, no models) from url."""
    artifacts = tmp_path / "artifacts"
    config = demo_config(tmp_path / "c.toml", artifacts, {
        "data.dataset": "web",
        "data.url_list": str(write_pairs_tsv(tmp_path / "pairs.tsv", url, captions)),
        "data.processes_count": 2, "data.thread_count": 4, "data.number_sample_per_shard": 8,
        "data.image_size": 256, "data.synthetic.num_train": 0, "data.synthetic.num_eval": 0,
        "data.synthetic.zeroshot_per_class": 0, "data.synthetic.tiny_models": False,
        **{f"data.{key}": value for key, value in distributor.items()}})
    return config, artifacts


@pytest.mark.slow  # starts Spark and img2dataset
def test_pyspark_distributor_downloads_on_a_local_spark_master(tmp_path, image_server):  # noqa: F811
    url, captions = image_server
    config, artifacts = download_config(tmp_path, url, captions,
                                        {"distributor": "pyspark", "spark_master": "local[2]"})
    proc = run_cli("data", "--config", str(config))
    assert "12/13 downloaded" in proc.stderr, proc.stderr[-2000:]
    assert "Spark master local[2]" in proc.stderr
    shard_dir = artifacts / "shards" / "web"
    assert len(sorted(shard_dir.glob("*.tar"))) == 2
    stats = [json.loads(p.read_text()) for p in sorted(shard_dir.glob("*_stats.json"))]
    assert sum(s["successes"] for s in stats) == 12


@pytest.mark.parametrize("distributor, message", [
    ("slurm", "'data.distributor' must be one of multiprocessing, pyspark, ray, got 'slurm'"),
    ("ray", "data.distributor=ray needs the ray package"),
])
def test_a_bad_distributor_stops_before_anything_is_downloaded(tmp_path, distributor, message):
    config, artifacts = download_config(tmp_path, "http://127.0.0.1:9", {}, {})
    result = CliRunner().invoke(app, ["data", "--config", str(config),
                                      "--set", f"data.distributor={distributor!r}"])
    assert result.exit_code == 2 and result.stderr.startswith("error: ")
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert not (artifacts / "shards" / "web").exists()
