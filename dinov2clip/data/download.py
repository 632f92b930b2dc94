"""CC12M (or any URL/caption list) to webdataset shards through img2dataset."""

from __future__ import annotations

import json
import logging
import os
import signal
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dinov2clip.config import ConfigError, DataConfig
from dinov2clip.io_utils import atomic_write_json, read_json

log = logging.getLogger(__name__)

# What decides the contents of each shard: a resumed download must not change any of them.
REQUEST_KEYS = ("url_list", "input_format", "header", "url_col", "caption_col", "max_samples",
                "number_sample_per_shard", "image_size", "resize_mode")


def download_pairs(cfg: DataConfig, out_dir: Path, work_dir: Path) -> dict:
    """Run img2dataset into out_dir; a re-run resumes (incremental mode skips finished shards)."""
    from dinov2clip.data.urllists import prepare_url_list

    check_distributor(cfg)
    check_same_request(cfg, out_dir, work_dir / f"{cfg.dataset}.request.json")
    url_list, input_format = prepare_url_list(cfg, work_dir)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check over the network
    from img2dataset import download

    out_dir.mkdir(parents=True, exist_ok=True)
    with sigint_is_an_interrupt(), distributor_session(cfg):
        download(
            url_list=url_list,
            input_format=input_format,
            url_col=cfg.url_col,
            caption_col=cfg.caption_col,
            output_folder=str(out_dir),
            output_format="webdataset",
            image_size=cfg.image_size,
            resize_mode=cfg.resize_mode,
            processes_count=cfg.processes_count,
            thread_count=cfg.thread_count,
            number_sample_per_shard=cfg.number_sample_per_shard,
            timeout=cfg.timeout,
            incremental_mode="incremental",  # shards with a _stats.json are done and skipped
            enable_wandb=False,
            distributor=cfg.distributor,
        )
    summary = summarise_stats(out_dir)
    atomic_write_json(work_dir / f"{cfg.dataset}.summary.json", summary)
    return summary


def check_distributor(cfg: DataConfig) -> None:
    """Fail before downloading: an unknown distributor, or one whose library is missing
    (img2dataset's ray distributor silently does nothing without ray)."""
    if cfg.distributor == "multiprocessing":
        return
    import importlib.util

    if importlib.util.find_spec(cfg.distributor) is None:
        raise ConfigError(f"data.distributor={cfg.distributor} needs the {cfg.distributor} "
                          f"package in this environment (pip install {cfg.distributor})")


@contextmanager
def distributor_session(cfg: DataConfig) -> Iterator[None]:
    """The Spark session or Ray connection img2dataset's distributor runs on, from the config.

    img2dataset uses an active Spark session if there is one (else it makes a local one with
    16 GB of driver memory); ray needs ray.init() before. Both are closed again afterwards.
    """
    if cfg.distributor == "pyspark":
        import sys

        from pyspark.sql import SparkSession

        master = cfg.spark_master or f"local[{cfg.processes_count}]"
        if master.startswith("local"):  # the workers run this Python, not whatever is on PATH
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        spark = SparkSession.builder.master(master).appName("dinov2clip-data").getOrCreate()
        log.info("img2dataset on Spark master %s", master)
        try:
            yield
        finally:
            spark.stop()
    elif cfg.distributor == "ray":
        import ray

        ray.init(address=cfg.ray_address or "auto")
        log.info("img2dataset on Ray cluster %s", cfg.ray_address or "auto")
        try:
            yield
        finally:
            ray.shutdown()
    else:
        yield


@contextmanager
def sigint_is_an_interrupt() -> Iterator[None]:
    """img2dataset's Ctrl-C handler exits with code 0, as if the download had finished.

    Turn that back into KeyboardInterrupt (the CLI: exit 130, "re-run to resume"), so that a
    `make data && make extract` stops, and put the previous handler back.
    """
    previous = signal.getsignal(signal.SIGINT)
    try:
        yield
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise
        raise KeyboardInterrupt from None
    finally:
        signal.signal(signal.SIGINT, previous)


def check_same_request(cfg: DataConfig, out_dir: Path, record_path: Path) -> None:
    """Stop a re-run whose list or sharding differs from the download it would resume."""
    request = {k: getattr(cfg, k) for k in REQUEST_KEYS}
    if record_path.exists() and any(out_dir.glob("*_stats.json")):
        previous = read_json(record_path)
        changed = [k for k in REQUEST_KEYS if previous.get(k) != request[k]]
        if changed:
            k = changed[0]
            raise ConfigError(f"data.{k} is {request[k]!r} but {out_dir} was downloaded with "
                              f"{previous.get(k)!r}; resuming would mix the two: use another "
                              f"data.dataset name, or delete {out_dir} to start over")
    atomic_write_json(record_path, request)


def summarise_stats(shard_dir: Path) -> dict:
    """Add up img2dataset's per-shard _stats.json files: successes and failures by reason."""
    total, ok, reasons = 0, 0, Counter()
    for path in sorted(shard_dir.glob("*_stats.json")):
        stats = json.loads(path.read_text())
        total += stats.get("count", 0)
        ok += stats.get("successes", 0)
        for reason, n in stats.get("status_dict", {}).items():
            if reason != "success":
                reasons[reason] += n
    return {"count": total, "successes": ok, "failures": dict(reasons.most_common()),
            "shards": len(list(shard_dir.glob("*.tar")))}


def format_summary(name: str, s: dict, top: int = 5) -> str:
    failures = list(s["failures"].items())
    text = ", ".join(f"{n} {' '.join(r.split())}" for r, n in failures[:top]) or "none"
    if len(failures) > top:
        text += f", {sum(n for _, n in failures[top:])} more in {len(failures) - top} other reasons"
    rate = 100.0 * s["successes"] / s["count"] if s["count"] else 0.0
    return (f"{name}: {s['successes']}/{s['count']} downloaded ({rate:.1f}%) into "
            f"{s['shards']} shards; failures: {text}")
