"""Training curves from metrics.jsonl: loss.png (per step) and val.png (per epoch).

Drawn with matplotlib's Figure API (no pyplot state, no GUI backend), after every epoch.
"""

from __future__ import annotations

from pathlib import Path

from dinov2clip.io_utils import atomic_write
from dinov2clip.store import RunDir
from dinov2clip.train.losses import describe

# val.png: the retrieval numbers in % of CLIP on the left axis, the cosine (0..1) on the right,
# each on a scale of its own: one axis for both squeezed the cosine into a flat line.
PCT_CURVES = (("val_pct_clip", "val % of CLIP (R@1, both ways)"),
              ("evalset_pct_clip", "eval set % of CLIP (R@1, both ways)"))
COSINE_CURVE = ("val_cosine", "val cosine to CLIP")


def draw_curves(run: RunDir) -> None:
    """loss.png and val.png from the run's metrics.jsonl; the loss is named from its
    config.json (written before the first epoch)."""
    records = run.read_metrics()
    steps = [r for r in records if r.get("kind") == "step"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    loss = describe(run.read_config().train.loss)
    _save(loss_figure(steps, epochs, run.name, loss), run.loss_plot)
    _save(val_figure(epochs, run.name), run.val_plot)


def loss_figure(steps: list[dict], epochs: list[dict], run: str, loss: str):
    """Train loss per logged step and val loss per epoch; the title says which loss it is."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], label="train loss")
    ax.plot([r["step"] for r in epochs], [r["val_loss"] for r in epochs], "o-", label="val loss")
    ax.set(xlabel="step", ylabel="loss", yscale="log")
    ax.set_title(f"{run}: loss = {loss}", fontsize=10)
    ax.legend()
    return fig


def val_figure(epochs: list[dict], run: str):
    """% of CLIP on the left axis, the cosine on a twin axis on the right, one legend below."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.4), layout="constrained")
    ax = fig.add_subplot()
    xs = [r["epoch"] for r in epochs]
    for i, (key, label) in enumerate(PCT_CURVES):
        if epochs and key in epochs[0]:
            ax.plot(xs, [r[key] for r in epochs], "o-", color=f"C{i}", label=label)
    ax.set(xlabel="epoch", ylabel="% of CLIP", title=f"{run}: validation")
    ax.xaxis.get_major_locator().set_params(integer=True)
    best = epochs[-1].get("best_epoch") if epochs else None
    if best:
        ax.axvline(best, color="grey", linestyle=":", label=f"best epoch {best}")
    cos = ax.twinx()
    key, label = COSINE_CURVE
    color = "C2"
    cos.plot(xs, [r[key] for r in epochs], "s--", color=color, label=label)
    cos.set_ylabel("cosine to CLIP", color=color)
    cos.tick_params(axis="y", colors=color)
    handles = [h for a in (ax, cos) for h in a.get_legend_handles_labels()[0]]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=8)
    return fig


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
