"""The eval stage: CLIP_benchmark retrieval for CLIP, projected DINOv2 and their ensemble."""

from __future__ import annotations

import logging

from dinov2clip.config import Config, write_resolved
from dinov2clip.io_utils import atomic_write, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


def run(cfg: Config, all_epochs: bool = False) -> dict:
    """Write runs/<run>/eval/: results.json, report.md, recall.png (and epochs.* if asked)."""
    from dinov2clip.evaluate.plots import epochs_chart, recall_chart
    from dinov2clip.evaluate.report import markdown, print_table, without_nan
    from dinov2clip.evaluate.stage import evaluate_epochs, evaluate_run

    results = evaluate_run(cfg)
    out = cfg.root / "runs" / results["run"] / "eval"
    write_resolved(cfg, out)
    atomic_write_json(out / "results.json", without_nan(results))
    atomic_write_text(out / "report.md", markdown(results))
    atomic_write(out / "recall.png", lambda tmp: recall_chart(results, tmp))
    print_table(results)
    if all_epochs:
        epochs = evaluate_epochs(cfg)
        atomic_write_json(out / "epochs.json", without_nan(epochs))
        atomic_write(out / "epochs.png", lambda tmp: epochs_chart(epochs, tmp))
        results["epochs"] = epochs
    log.info("eval results in %s", out)
    return results
