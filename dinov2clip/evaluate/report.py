"""Reports: results.json, report.md (one table per set), recall.png, and a rich terminal table."""

from __future__ import annotations

from pathlib import Path

# The seed project's published % of CLIP ViT-B/16 (text->image "image retrieval" / image->text).
SEED_PCT = {"flickr8k": (89.27, 89.90), "flickr30k": (92.10, 91.53), "mscoco": (82.90, 77.57)}
ROWS = ("clip", "projected", "ensemble")


def metric_keys(ks: list[int]) -> list[str]:
    return [f"t2i_R@{k}" for k in ks] + [f"i2t_R@{k}" for k in ks]


def markdown(results: dict, ks: list[int]) -> str:
    keys = metric_keys(ks)
    lines = [f"# Retrieval: run `{results['run']}`", ""]
    if results.get("note"):
        lines += [f"> {results['note']}", ""]
    for name, res in results["sets"].items():
        lines += [f"## {name} ({res['n_images']} images, {res['n_captions']} captions)", "",
                  "| embedding | " + " | ".join(keys) + " |",
                  "|---" * (len(keys) + 1) + "|"]
        for row in ROWS:
            lines.append(f"| {row} | " + " | ".join(f"{res[row][k]:.2f}" for k in keys) + " |")
        for row in ("projected", "ensemble"):
            lines.append(f"| {row}, % of CLIP | " + " | ".join(
                f"{res[row + '_pct'][k]:.1f}" for k in keys) + " |")
        if name in SEED_PCT:
            t2i, i2t = SEED_PCT[name]
            lines += ["", f"Seed project, published: {t2i:.2f}% of CLIP for text->image, "
                          f"{i2t:.2f}% for image->text."]
        lines.append("")
    return "\n".join(lines)


def print_table(results: dict, ks: list[int]) -> None:
    from rich.console import Console
    from rich.table import Table

    keys = metric_keys(ks)
    console = Console()
    for name, res in results["sets"].items():
        table = Table(title=f"{name}: R@k (%) and % of CLIP")
        table.add_column("embedding")
        for k in keys:
            table.add_column(k, justify="right")
        for row in ROWS:
            table.add_row(row, *(f"{res[row][k]:.2f}" for k in keys))
        for row in ("projected", "ensemble"):
            table.add_row(f"{row} % of CLIP", *(f"{res[row + '_pct'][k]:.1f}" for k in keys))
        console.print(table)
    if results.get("note"):
        console.print(f"[bold yellow]{results['note']}[/]")


def recall_chart(results: dict, ks: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = metric_keys(ks)
    sets = list(results["sets"])
    fig, axes = plt.subplots(1, len(sets), figsize=(5.5 * len(sets), 4), squeeze=False)
    for ax, name in zip(axes[0], sets, strict=True):
        x = np.arange(len(keys))
        for j, row in enumerate(ROWS):
            vals = [results["sets"][name][row][k] for k in keys]
            ax.bar(x + (j - 1) * 0.27, vals, width=0.27, label=row)
        ax.set_xticks(x, keys, rotation=30)
        ax.set(ylim=(0, 100), ylabel="recall (%)", title=name)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
