"""Several evaluated runs side by side: one table, compare.md, compare.csv and compare.png.

Each run is read from its own files: eval/results.json for the recalls, config.json for what was
trained (backbone, teacher, pooling, loss, epochs). "% of teacher" is against the teacher the run
was trained towards, measured in the same eval, so runs with different teachers compare fairly.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from dinov2clip.config import ConfigError
from dinov2clip.evaluate.report import DIRECTIONS, fmt
from dinov2clip.io_utils import atomic_write, atomic_write_text
from dinov2clip.store import RunDir

log = logging.getLogger(__name__)
KS = (1, 5, 10)
COLUMNS = ("run", "backbone", "teacher", "pooling", "loss", "epochs", "set", "direction",
           *(f"R@{k}" for k in KS), *(f"% of teacher R@{k}" for k in KS))
# compare.csv: one row per run and eval set, both directions as columns, numbers unrounded.
CSV_COLUMNS = ("run", "backbone", "teacher", "pooling", "loss", "best_epoch", "epochs", "set",
               *(f"{d}_R@{k}" for d in DIRECTIONS for k in KS),
               *(f"{d}_R@{k}_pct_of_teacher" for d in DIRECTIONS for k in KS))


@dataclass(frozen=True)
class RunResults:
    name: str
    backbone: str
    teacher: str
    pooling: str
    loss: str
    best_epoch: int | None
    n_epochs: int  # epochs trained
    results: dict  # eval/results.json

    @property
    def epochs(self) -> str:
        """Best epoch / epochs trained, as the table shows it."""
        return f"{self.best_epoch if self.best_epoch is not None else '?'}/{self.n_epochs}"


def resolve_runs(runs: list[str], pattern: str | None) -> list[Path]:
    """The run directories named, then those a --runs glob matches that hold an eval."""
    dirs = [Path(r) for r in runs]
    for d in dirs:
        if not RunDir(d).results.is_file():
            raise ConfigError(f"{d}: no eval/results.json (run `pipeline eval` for it first)")
    if pattern:
        matched = sorted(Path(p) for p in glob.glob(pattern) if Path(p).is_dir())
        evaluated = [d for d in matched if RunDir(d).results.is_file()]
        skipped = [d.name for d in matched if d not in evaluated]
        if skipped:
            log.info("compare: %d runs without eval/results.json left out: %s", len(skipped),
                     ", ".join(skipped))
        dirs += [d for d in evaluated if d not in dirs]
    if not dirs:
        raise ConfigError("compare: no evaluated runs given (name run directories, or "
                          f"--runs 'runs/*'){f'; {pattern!r} matched none' if pattern else ''}")
    return dirs


def read_run(path: Path) -> RunResults:
    run = RunDir(path)
    try:
        results = json.loads(run.results.read_text())
        results["sets"], results["ks"]
    except (ValueError, KeyError):
        raise ConfigError(f"{run.results}: not an eval results file") from None
    tr, models = run.read_config().train, run.trained_models()  # what the run was trained on
    pre = models.clip_pretrained
    teacher = _short(models.clip_model) + (f" / {_short(pre)}" if pre else "")
    loss = " + ".join(k if w == 1 else f"{w:g}*{k}" for k, w in tr.loss.items())
    best = results.get("run_info", {}).get("best_epoch")
    return RunResults(name=run.name, backbone=_short(models.dino_model), teacher=teacher,
                      pooling=tr.pooling, loss=loss, best_epoch=best, n_epochs=tr.epochs,
                      results=results)


def _short(name: str) -> str:
    """A model id for a table: the hub id or path's last part ("local-dir:" dropped)."""
    return Path(name.split(":", 1)[1] if name.startswith(("hf-hub:", "local-dir:")) else name
                ).name.removesuffix(".json").removesuffix(".safetensors")


def rows(runs: list[RunResults]) -> list[list[str]]:
    """One row per run, eval set and direction: projected R@k and its % of the run's teacher."""
    out = []
    for r in runs:
        for set_name, res in r.results["sets"].items():
            for d, label in DIRECTIONS.items():
                recall = [res["projected"].get(f"{d}_R@{k}") for k in KS]
                pct = [res.get("projected_pct", {}).get(f"{d}_R@{k}") for k in KS]
                out.append([r.name, r.backbone, r.teacher, r.pooling, r.loss, r.epochs, set_name,
                            label, *(fmt(v, 2) for v in recall), *(fmt(v, 1) for v in pct)])
    return out


def markdown(table: list[list[str]]) -> str:
    lines = ["# Runs compared", "",
             "Projected image embeddings, R@k in %; % of teacher: against the run's own teacher's "
             "image embeddings on the same eval set (CLIP_benchmark's protocol).", "",
             "| " + " | ".join(COLUMNS) + " |",
             "|" + "---|" * 8 + "---:|" * (len(COLUMNS) - 8)]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    return "\n".join(lines) + "\n"


def plain(table: list[list[str]]) -> str:
    """The table for a terminal: columns padded to their widest cell."""
    cells = [list(COLUMNS), *table]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) if i < 8 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True)))
                     for row in cells)


def csv_text(runs: list[RunResults]) -> str:
    """compare.csv: the table's numbers, unrounded (empty where undefined), a row per run and
    set, for a spreadsheet or pandas."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in runs:
        for set_name, res in r.results["sets"].items():
            recall = [res["projected"].get(f"{d}_R@{k}") for d in DIRECTIONS for k in KS]
            pct = [res.get("projected_pct", {}).get(f"{d}_R@{k}") for d in DIRECTIONS for k in KS]
            writer.writerow([r.name, r.backbone, r.teacher, r.pooling, r.loss,
                             "" if r.best_epoch is None else r.best_epoch, r.n_epochs, set_name,
                             *(_cell(v) for v in recall + pct)])
    return buf.getvalue()


def _cell(value: float | None) -> str:
    return "" if value is None or value != value else repr(float(value))


def chart(runs: list[RunResults], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = chart_figure(runs)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def chart_figure(runs: list[RunResults]):
    """Per eval set: each run's mean over k of % of its teacher, both directions, each bar
    labelled with its value; one legend above the panels, where it covers no bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sets = sorted({s for r in runs for s in r.results["sets"]})
    fig, axes = plt.subplots(1, len(sets), figsize=(max(5.0, 1.2 * len(runs) + 2) * len(sets),
                                                    4.6), squeeze=False, layout="constrained")
    x = np.arange(len(runs))
    for ax, set_name in zip(axes[0], sets, strict=True):
        top = 100.0
        for j, d in enumerate(DIRECTIONS):
            vals = [_mean_pct(r, set_name, d) for r in runs]
            bars = ax.bar(x + (j - 0.5) * 0.4, [np.nan if v is None else v for v in vals],
                          width=0.4, label=DIRECTIONS[d])
            ax.bar_label(bars, labels=["" if v is None else fmt(v, 1) for v in vals],
                         fontsize=7, padding=1)
            top = max(top, *(v for v in vals if v is not None))
        ax.set_xticks(x, [r.name for r in runs], rotation=30, ha="right")
        # Headroom above the tallest bar (or the 100 % line) for its value.
        ax.set(ylabel="% of teacher (mean over R@1/5/10)", title=set_name, ylim=(0, top * 1.12))
        ax.axhline(100, color="grey", lw=0.8, ls="--")
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncol=len(labels), fontsize=8)
    return fig


def _mean_pct(run: RunResults, set_name: str, d: str) -> float | None:
    res = run.results["sets"].get(set_name)
    if res is None:
        return None
    vals = [res.get("projected_pct", {}).get(f"{d}_R@{k}") for k in KS]
    vals = [v for v in vals if v is not None and v == v]
    return sum(vals) / len(vals) if vals else None


def compare(runs: list[str], pattern: str | None = None, out_dir: Path | None = None) -> str:
    """Read the runs, write compare.md, compare.csv and compare.png into out_dir (default: the
    runs' common parent), and return the table as plain text."""
    dirs = resolve_runs(runs, pattern)
    read = [read_run(d) for d in dirs]
    out_dir = Path(out_dir) if out_dir else Path(os.path.commonpath(
        [str(d.resolve().parent) for d in dirs]))
    table = rows(read)
    atomic_write_text(out_dir / "compare.md", markdown(table))
    atomic_write_text(out_dir / "compare.csv", csv_text(read))
    chart(read, out_dir / "compare.png")
    log.info("wrote compare.md, compare.csv and compare.png in %s", out_dir)
    return plain(table)
