"""recall.png (grouped bars per set) and epochs.png (% of CLIP against epoch, per set)."""

from __future__ import annotations

from pathlib import Path

from dinov2clip.evaluate.report import DIRECTIONS, ROWS, SEED_ALIASES, SEED_PCT, metric_keys


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def recall_chart(results: dict, path: Path) -> None:
    import numpy as np

    plt = _plt()
    keys = metric_keys(results["ks"])
    sets = list(results["sets"])
    fig, axes = plt.subplots(1, len(sets), figsize=(5.5 * len(sets), 4), squeeze=False)
    width = 0.8 / len(ROWS)
    for ax, name in zip(axes[0], sets, strict=True):
        x = np.arange(len(keys))
        for j, row in enumerate(ROWS):
            vals = [results["sets"][name][row][k] for k in keys]
            ax.bar(x + (j - (len(ROWS) - 1) / 2) * width, vals, width=width, label=row)
        ax.set_xticks(x, keys, rotation=30)
        ax.set(ylim=(0, 100), ylabel="recall (%)", title=name)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def epochs_chart(epochs: dict, path: Path) -> None:
    """Mean-over-k % of CLIP per direction against epoch; the seed's final number as a line."""
    plt = _plt()
    sets = list(epochs["sets"])
    fig, axes = plt.subplots(1, len(sets), figsize=(5.5 * len(sets), 4), squeeze=False)
    best = epochs["run_info"].get("best_epoch")
    for ax, name in zip(axes[0], sets, strict=True):
        per_epoch = epochs["sets"][name]["per_epoch"]
        xs = [p["epoch"] for p in per_epoch]
        seed = SEED_PCT.get(SEED_ALIASES.get(name, name))
        for i, (d, label) in enumerate(DIRECTIONS.items()):
            color = f"C{i}"
            ax.plot(xs, [p["summary"]["projected_pct_mean"][d] for p in per_epoch], "o-",
                    color=color, label=f"projected, {label}")
            ax.plot(xs, [p["summary"]["ensemble_pct_mean"][d] for p in per_epoch], ":",
                    color=color, label=f"ensemble, {label}")
            if seed:
                ax.axhline(seed[i], color=color, lw=0.8, ls="--", label=f"seed, {label}")
        if best:
            ax.axvline(best, color="grey", lw=0.8, label=f"chosen epoch {best}")
        ax.set(xlabel="epoch", ylabel="% of CLIP (mean over k)", title=name)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
