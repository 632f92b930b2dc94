"""Segmentation's share of the reports: report.md's table beside Talk2DINO's published
numbers, the per-class IoU bars, and overlay pictures (image | ground truth | prediction)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dinov2clip.dense.metrics import IGNORE
from dinov2clip.evaluate.report import fmt


def markdown_lines(segmentation: dict) -> list[str]:
    lines = ["## Open-vocabulary segmentation", "",
             "Protocol of GroupViT, TCL, FreeDA and Talk2DINO: short side, sliding window "
             "averaged, bilinear to the label's size, argmax; dataset-level mIoU with label 255 "
             "ignored. Talk2DINO: its ViT-B numbers (DINOv2 ViT-B/14-reg, CLIP ViT-B/16) as "
             "issue 19 quotes the paper, not yet checked against its table. "
             "+ PAMR: each window's class scores refined by its pixels (10 iterations, "
             "dilations 1-24); such a row and the head's plain one come from one pass over the "
             "windows and share its seconds. A head scored on several sets gets a 'mean of N "
             "sets' row, beside Talk2DINO's mean over the same sets.", "",
             "| set | head | images | mIoU | pixel acc. | mAcc | Talk2DINO ViT-B mIoU | "
             "window / stride / short side | bg threshold | seconds |",
             "|---|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    rows = [(name, r) for name, by_head in segmentation.items() for r in by_head.values()]
    for name, r in rows:  # one row per set and head: the heads side by side
        p = r["protocol"]
        lines.append(f"| {name} | {shown_head(r)} | {r['n_images']} | {fmt(r['mIoU'], 2)} | "
                     f"{fmt(r['pixel_accuracy'], 2)} | {fmt(r['mAcc'], 2)} | "
                     f"{published_cell(r)} | {p['window']} / "
                     f"{p['stride']} / {p['short_side']} | {fmt(p['bg_threshold'], 2)} | "
                     f"{fmt(r.get('seconds'), 1)} |")
    lines += mean_rows([r for _, r in rows])
    if any(published_cell(r).endswith("*") for _, r in rows):
        lines += ["", "\\* scored here on fewer images than the published split (max_images, or "
                  "samples skipped when installed): not the published number's set."]
    return [*lines, ""]


def mean_rows(results: list[dict]) -> list[str]:
    """Per head (PAMR apart), the mean mIoU over the sets it was scored on, as papers report
    an average over their benchmarks, beside Talk2DINO's mean over the same sets (blank when a
    set has no published number); only for a head scored on two sets or more."""
    by_head: dict[str, list[dict]] = {}
    for r in results:
        by_head.setdefault(shown_head(r), []).append(r)
    rows = []
    for head, rs in by_head.items():
        if len(rs) < 2:
            continue
        published = [r["published"].get("talk2dino_vitb") for r in rs]
        ours = [r["mIoU"] for r in rs]
        mean_published = (fmt(sum(published) / len(published), 1)
                          + ("*" if any(published_cell(r).endswith("*") for r in rs) else "")
                          if None not in published else "")
        mean = fmt(sum(ours) / len(ours), 2) if None not in ours else ""
        rows.append(f"| mean of {len(rs)} sets | {head} | {sum(r['n_images'] for r in rs)} | "
                    f"{mean} |  |  | {mean_published} |  |  |  |")
    return rows


def published_cell(res: dict) -> str:
    """Talk2DINO's number, marked * when this result scored fewer images than its split."""
    published = res["published"]
    number, images = published.get("talk2dino_vitb"), published.get("images")
    subset = number is not None and images is not None and res["n_images"] < images
    return fmt(number, 1) + ("*" if subset else "")


def shown_head(res: dict) -> str:
    """How a result's head reads in the report and the log: "talk2dino + bg clean + PAMR"."""
    return res["head"] + (" + bg clean" if res.get("bg_clean") else "") + (
        " + PAMR" if res.get("pamr") else "")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def iou_chart(res: dict, path) -> None:
    """Per-class IoU bars, classes in the set's order; a class never seen is drawn empty."""
    plt = _plt()
    names = list(res["per_class_iou"])
    values = [v if v is not None else 0.0 for v in res["per_class_iou"].values()]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(names) + 2), 3.6))
    bars = ax.bar(range(len(names)), values, color="C0")
    ax.bar_label(bars, fmt="%.1f", fontsize=6, padding=1)
    ax.axhline(res["mIoU"] or 0.0, color="C1", lw=1, ls="--", label=f"mIoU {fmt(res['mIoU'], 1)}")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set(ylim=(0, 105), ylabel="IoU (%)",
           title=f"{res['set']}: per-class IoU ({shown_head(res)})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def palette(n: int) -> np.ndarray:
    """(n + 1, 3) uint8 colours: tab20 by class, and grey for the ignored label last."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    colours = [tuple(int(255 * c) for c in cmap(i % 20)[:3]) for i in range(n)]
    return np.array([*colours, (128, 128, 128)], dtype=np.uint8)


def colourise(labels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    index = np.where(labels == IGNORE, len(colours) - 1, np.minimum(labels, len(colours) - 2))
    return colours[index]


def overlay_picture(image_path: Path, label: np.ndarray | None, pred: np.ndarray,
                    classes: list[str], path) -> None:
    """image | ground truth | prediction side by side (no ground truth: image | prediction),
    with a legend of the classes shown."""
    plt = _plt()
    from matplotlib.patches import Patch

    colours = palette(len(classes))
    with Image.open(image_path) as im:
        rgb = np.asarray(im.convert("RGB"))
    panels = [("image", rgb)]
    if label is not None:
        panels.append(("ground truth", colourise(label, colours)))
    panels.append(("prediction", colourise(pred, colours)))
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.4))
    for ax, (title, picture) in zip(axes, panels, strict=True):
        ax.imshow(picture)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    maps = [pred.ravel()] + ([label.ravel()] if label is not None else [])
    shown = sorted({int(v) for v in np.unique(np.concatenate(maps))
                    if v != IGNORE and v < len(classes)})
    handles = [Patch(color=colours[c] / 255, label=classes[c]) for c in shown]
    if label is not None:
        handles.append(Patch(color=colours[-1] / 255, label="ignored (255)"))
    fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=7)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
