"""The eval stage: CLIP_benchmark retrieval for CLIP, projected DINOv2 and their ensemble."""

from __future__ import annotations

import logging
from pathlib import Path

from dinov2clip.config import Config, ConfigError, UseOptions, write_resolved
from dinov2clip.io_utils import atomic_write, atomic_write_json, atomic_write_text
from dinov2clip.store import RunDir, embeddings_root

log = logging.getLogger(__name__)


def run(cfg: Config, all_epochs: bool = False) -> dict:
    """Write runs/<run>/eval/: results.json, report.md, recall.png (and epochs.* if asked, and
    zeroshot.json where eval.zeroshot names a folder-per-class set)."""
    from dinov2clip.evaluate.plots import epochs_chart, recall_chart
    from dinov2clip.evaluate.report import markdown, print_table, without_nan
    from dinov2clip.evaluate.stage import evaluate_epochs, evaluate_run

    check_zeroshot(cfg)  # a bad zero-shot setting fails before the retrieval work
    results = evaluate_run(cfg)
    run = RunDir(results["run_info"]["run_dir"])
    write_resolved(cfg, run.eval_dir)

    def write_reports() -> None:
        atomic_write_json(run.results, without_nan(results))
        atomic_write_text(run.report, markdown(results))

    write_reports()
    atomic_write(run.recall_plot, lambda tmp: recall_chart(results, tmp))
    print_table(results)
    epochs = None
    if all_epochs:
        epochs = evaluate_epochs(cfg)
        atomic_write_json(run.epochs_results, without_nan(epochs))
        atomic_write(run.epochs_plot, lambda tmp: epochs_chart(epochs, tmp))
    if cfg.eval.zeroshot:  # last: the retrieval reports are already safe on disk
        results["zeroshot"] = zeroshot_for(cfg, run)
        write_reports()
    if epochs is not None:  # returned, not in results.json: epochs.json holds them
        results["epochs"] = epochs
    log.info("eval results in %s", run.eval_dir)
    return results


def check_planned_sets(cfg: Config) -> None:
    """Before `run --stage all` does any work: every eval set is one extract will embed, or one
    embedded before; a typo would otherwise surface only after data, extract and train."""
    planned = [entry.partition("/")[2] for entry in cfg.extract.datasets]
    for name in cfg.eval.sets:
        if name not in planned and not (embeddings_root(cfg.root) / name).is_dir():
            raise ConfigError(f"eval.sets: unknown eval set {name!r}: not in extract.datasets "
                              f"({', '.join(cfg.extract.datasets) or 'empty'}) and no "
                              f"embeddings/{name} under {cfg.root}")


def check_zeroshot(cfg: Config) -> None:
    """One line and exit 2 for a missing folder, class-name file or prompt set, up front."""
    e = cfg.eval
    if not e.zeroshot:
        return
    from dinov2clip.evaluate.templates import get_templates
    from dinov2clip.evaluate.zeroshot import load_folder_dataset

    get_templates(e.zeroshot_templates)
    load_folder_dataset(Path(e.zeroshot), _classnames_file(cfg), e.zeroshot_max_per_class)


def zeroshot_for(cfg: Config, run: RunDir) -> dict:
    """eval.zeroshot's top-1/top-5 for CLIP, projected and ensemble, into eval/zeroshot.json.

    Images are decoded and embedded as extract does: its batch size, workers and dtype; the
    models run where eval.device says.
    """
    from dinov2clip.evaluate.zeroshot import run_zeroshot

    e, x = cfg.eval, cfg.extract
    options = UseOptions(device=e.device, dtype=x.compute_dtype, batch_size=x.batch_size,
                         num_workers=x.num_workers)
    return run_zeroshot(run=run.path, data_dir=Path(e.zeroshot),
                        classnames_file=_classnames_file(cfg), templates=e.zeroshot_templates,
                        out=run.eval_zeroshot, options=options,
                        max_per_class=e.zeroshot_max_per_class)


def _classnames_file(cfg: Config) -> Path | None:
    return Path(cfg.eval.zeroshot_classnames) if cfg.eval.zeroshot_classnames else None
