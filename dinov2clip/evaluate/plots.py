"""recall.png (grouped bars per set) and epochs.png (% of CLIP against epoch, per set)."""

from __future__ import annotations

import math
from pathlib import Path

from dinov2clip.evaluate.report import DIRECTIONS, ROWS, SEED_ALIASES, SEED_PCT, metric_keys


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def recall_chart(results: dict, path: Path) -> None:
    _save(recall_figure(results), path)


def epochs_chart(epochs: dict, path: Path) -> None:
    _save(epochs_figure(epochs), path)


def _save(fig, path: Path) -> None:
    if fig.get_layout_engine() is None:  # recall_figure lays itself out (constrained)
        fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    _plt().close(fig)


def recall_figure(results: dict):
    """Grouped bars per set, each labelled with its value, and each key's chance level; the
    axis ends just above the data."""
    import numpy as np

    plt = _plt()
    keys = metric_keys(results["ks"])
    sets = list(results["sets"])
    fig, axes = plt.subplots(1, len(sets), figsize=(6.5 * len(sets), 4.5), squeeze=False,
                             layout="constrained")
    width = 0.8 / len(ROWS)
    for ax, name in zip(axes[0], sets, strict=True):
        x = np.arange(len(keys))
        top = 0.0
        for j, row in enumerate(ROWS):
            vals = [_or_zero(results["sets"][name][row][k]) for k in keys]
            bars = ax.bar(x + (j - (len(ROWS) - 1) / 2) * width, vals, width=width, label=row)
            ax.bar_label(bars, fmt="%.1f", fontsize=6, padding=1)
            top = max(top, *vals)
        chance = [chance_recall(results["sets"][name], results["ks"])[k] for k in keys]
        _chance_marks(ax, x, chance)
        top = max(top, *chance)  # bars below chance (an untrained run) still show the line
        ax.set_xticks(x, keys, rotation=30)
        # Room above the tallest bar for its label; never past 100 % by much.
        ax.set(ylim=(0, min(105.0, max(1.0, top) * 1.15)), ylabel="recall (%)", title=name)
        ax.grid(axis="y", alpha=0.3)
    # One legend above the panels: inside one it covered the first group's bars and values.
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncol=len(labels), fontsize=8)
    return fig


def chance_recall(res: dict, ks: list[int]) -> dict[str, float]:
    """R@k in percent under a random ranking. Text->image: k / n_images. Image->text, with
    m = n_captions / n_images captions per image (rounded): the chance that one of them is
    among the k best of n_captions, 1 - C(n - m, k) / C(n, k)."""
    n_img, n_cap = res["n_images"], res["n_captions"]
    m = max(1, round(n_cap / n_img))
    out = {}
    for k in ks:
        out[f"t2i_R@{k}"] = 100.0 * min(k, n_img) / n_img
        miss = math.prod((n_cap - m - i) / (n_cap - i) for i in range(k)) if k <= n_cap - m else 0
        out[f"i2t_R@{k}"] = 100.0 * (1.0 - miss)
    return out


def _chance_marks(ax, x, levels: list[float]) -> None:
    """A dashed segment across each group of bars at its chance level: how far above a
    random ranking the bars are (on a small set, not so far)."""
    ax.hlines(levels, x - 0.45, x + 0.45, colors="black", linestyles="--", lw=1.0,
              label="chance (random ranking)", zorder=3)


def epochs_figure(epochs: dict):
    """Mean-over-k % of CLIP per direction against epoch: colour is the direction, line style
    the embedding; CLIP itself is the 100 % line, the seed's final number a dashed one."""
    from matplotlib.lines import Line2D

    plt = _plt()
    sets = list(epochs["sets"])
    fig, axes = plt.subplots(1, len(sets), figsize=(6 * len(sets), 5), squeeze=False)
    best = epochs["run_info"].get("best_epoch")
    for ax, name in zip(axes[0], sets, strict=True):
        per_epoch = epochs["sets"][name]["per_epoch"]
        xs = [p["epoch"] for p in per_epoch]
        seed = SEED_PCT.get(SEED_ALIASES.get(name, name))
        ax.axhline(100, color="black", lw=1.0)
        for i, d in enumerate(DIRECTIONS):
            color = f"C{i}"
            ax.plot(xs, [p["summary"]["projected_pct_mean"][d] for p in per_epoch], "o-",
                    color=color)
            ax.plot(xs, [p["summary"]["ensemble_pct_mean"][d] for p in per_epoch], ":",
                    color=color)
            if seed:
                ax.axhline(seed[i], color=color, lw=0.8, ls="--")
        if best:
            ax.axvline(best, color="grey", lw=0.8)
        ax.set(xlabel="epoch", ylabel="% of CLIP (mean over k)", title=name)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        directions = [Line2D([], [], color=f"C{i}", lw=2, label=label)
                      for i, label in enumerate(DIRECTIONS.values())]
        styles = [Line2D([], [], color="grey", marker="o", label="projected"),
                  Line2D([], [], color="grey", ls=":", label="ensemble"),
                  Line2D([], [], color="black", lw=1.0, label="CLIP (100 %)")]
        styles += [Line2D([], [], color="grey", ls="--", lw=0.8, label="seed, published")] * bool(
            seed)
        styles += [Line2D([], [], color="grey", lw=0.8, label=f"chosen epoch {best}")] * bool(best)
        # Below the axes, where no line can hide under them.
        first = ax.legend(handles=directions, title="direction", fontsize=7, title_fontsize=7,
                          loc="upper left", bbox_to_anchor=(0, -0.14))
        ax.add_artist(first)
        ax.legend(handles=styles, fontsize=7, loc="upper right", bbox_to_anchor=(1, -0.14),
                  ncol=2)
    return fig


def _or_zero(value: float | None) -> float:
    """A bar for a missing number (nan or None) is drawn empty."""
    return 0.0 if value is None or value != value else value
