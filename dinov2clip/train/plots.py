"""Training curves from metrics.jsonl: loss.png (per step) and val.png (per epoch).

Drawn with matplotlib's Figure API (no pyplot state, no GUI backend), after every epoch.
"""

from __future__ import annotations

from pathlib import Path

from dinov2clip.io_utils import atomic_write
from dinov2clip.store import RunDir


def draw_curves(run: RunDir) -> None:
    from matplotlib.figure import Figure

    records = run.read_metrics()
    steps = [r for r in records if r.get("kind") == "step"]
    epochs = [r for r in records if r.get("kind") == "epoch"]

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], label="train loss")
    ax.plot([r["step"] for r in epochs], [r["val_loss"] for r in epochs], "o-", label="val loss")
    ax.set(xlabel="step", ylabel="loss", yscale="log", title=run.name)
    ax.legend()
    _save(fig, run.loss_plot)

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    xs = [r["epoch"] for r in epochs]
    for key, label in (("val_pct_clip", "val % of CLIP (R@1, both ways)"),
                       ("val_cosine", "val cosine to CLIP x100"),
                       ("evalset_pct_clip", "eval set % of CLIP (R@1, both ways)")):
        if epochs and key not in epochs[0]:
            continue
        scale = 100.0 if key == "val_cosine" else 1.0
        ax.plot(xs, [scale * r[key] for r in epochs], "o-", label=label)
    best = epochs[-1].get("best_epoch") if epochs else None
    if best:
        ax.axvline(best, color="grey", linestyle=":", label=f"best epoch {best}")
    ax.set(xlabel="epoch", ylabel="%", title=f"{run.name}: validation")
    ax.legend()
    _save(fig, run.val_plot)


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
