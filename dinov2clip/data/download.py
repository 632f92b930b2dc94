"""CC12M (or any URL/caption list) to webdataset shards through img2dataset."""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from pathlib import Path

from dinov2clip.config import ConfigError, DataConfig

log = logging.getLogger(__name__)


def download_pairs(cfg: DataConfig, out_dir: Path, work_dir: Path) -> dict:
    """Run img2dataset into out_dir; a re-run resumes (incremental mode skips finished shards)."""
    from img2dataset import download

    url_list = _limited_url_list(cfg, work_dir) if cfg.max_samples else cfg.url_list
    out_dir.mkdir(parents=True, exist_ok=True)
    download(
        url_list=str(url_list),
        input_format=cfg.input_format,
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
        incremental_mode="incremental",
        enable_wandb=False,
        distributor="multiprocessing",
    )
    return summarise_stats(out_dir)


def _limited_url_list(cfg: DataConfig, work_dir: Path) -> Path:
    """The first max_samples rows of the URL list, as a file img2dataset can read."""
    src = Path(cfg.url_list)
    if not src.exists():
        raise ConfigError(f"data.url_list not found: {src}")
    work_dir.mkdir(parents=True, exist_ok=True)
    if cfg.input_format == "parquet":
        import pyarrow.parquet as pq

        out = work_dir / f"urls_first_{cfg.max_samples}.parquet"
        pq.write_table(pq.read_table(src).slice(0, cfg.max_samples), out)
        return out
    delim = "\t" if cfg.input_format == "tsv" else ","
    out = work_dir / f"urls_first_{cfg.max_samples}.{cfg.input_format}"
    with open(src, newline="") as fin, open(out, "w", newline="") as fout:
        reader, writer = csv.reader(fin, delimiter=delim), csv.writer(fout, delimiter=delim)
        for i, row in enumerate(reader):
            if i > cfg.max_samples:  # row 0 is the header
                break
            writer.writerow(row)
    return out


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
    return {"count": total, "successes": ok, "failures": dict(reasons.most_common())}


def format_summary(name: str, s: dict) -> str:
    fails = ", ".join(f"{n} {r}" for r, n in list(s["failures"].items())[:5]) or "none"
    rate = 100.0 * s["successes"] / s["count"] if s["count"] else 0.0
    return f"{name}: {s['successes']}/{s['count']} downloaded ({rate:.1f}%); failures: {fails}"
