"""Reports: report.md (one table per set, the seed's published numbers beside ours) and rich.

The seed project published one "% of CLIP" per direction: "image retrieval" (text->image) and
"text retrieval" (image->text), without saying how R@1/5/10 were folded into one number. We show
two readings beside it: the mean over k of R@k % of CLIP, and R@5 % of CLIP alone, which is what
CLIP_benchmark reports when --recall_k is left at its default (5).
"""

from __future__ import annotations

from dinov2clip.terminal import make_console

# The seed's published % of CLIP ViT-B/16: (text->image "image retrieval", image->text "text").
SEED_PCT = {"flickr8k": (89.27, 89.90), "flickr30k": (92.10, 91.53), "mscoco": (82.90, 77.57)}
SEED_ALIASES = {"mscoco_captions": "mscoco", "wds_mscoco_captions": "mscoco",
                "wds_flickr30k": "flickr30k", "wds_flickr8k": "flickr8k"}
ROWS = ("clip", "projected", "ensemble")
DIRECTIONS = {"t2i": "text->image", "i2t": "image->text"}
# Zero-shot numbers and their column names; mean per-class recall is CLIP_benchmark's
# "mean_per_class_recall" (the mean over classes of top-1 recall), beside top-1 and top-5.
ZEROSHOT_METRICS = {"top1": "top1", "top5": "top5",
                    "mean_per_class_recall": "mean per-class recall"}
PER_CLASS_ALL, PER_CLASS_WORST = 20, 10  # every class up to 20 of them, else the worst 10


def fmt(value: float | None, digits: int) -> str:
    """A number for a table; n/a where it is undefined (a % of a CLIP recall of 0)."""
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def without_nan(obj):
    """NaN -> None, recursively, so results.json stays strict JSON (null, never NaN)."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: without_nan(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [without_nan(v) for v in obj]
    return obj


def metric_keys(ks: list[int]) -> list[str]:
    return [f"t2i_R@{k}" for k in ks] + [f"i2t_R@{k}" for k in ks]


def summary(res: dict, ks: list[int]) -> dict:
    """Per direction: the mean over k of R@k % of CLIP, and R@5 % of CLIP when 5 is in ks."""
    out = {}
    for row in ("projected", "ensemble"):
        pct = res[f"{row}_pct"]
        out[f"{row}_pct_mean"] = {d: sum(pct[f"{d}_R@{k}"] for k in ks) / len(ks)
                                  for d in DIRECTIONS}
        if 5 in ks:
            out[f"{row}_pct_r5"] = {d: pct[f"{d}_R@5"] for d in DIRECTIONS}
    return out


def seed_comparison(name: str, res: dict, ks: list[int]) -> dict | None:
    seed = SEED_PCT.get(SEED_ALIASES.get(name, name))
    if seed is None:
        return None
    s = res["summary"]
    out = {"seed_published": {"t2i": seed[0], "i2t": seed[1]},
           "ours_mean_over_k": s["projected_pct_mean"],
           "ensemble_mean_over_k": s["ensemble_pct_mean"]}
    if "projected_pct_r5" in s:
        out["ours_r5"] = s["projected_pct_r5"]
    return out


def markdown(results: dict) -> str:
    ks = results["ks"]
    keys = metric_keys(ks)
    info = results["run_info"]
    lines = [f"# Retrieval: run `{results['run']}`", "",
             f"Checkpoint `{info['checkpoint']}` (best epoch {info['best_epoch']}), embeddings "
             f"`{info['tag']}`, git `{info['git_sha']}`, ranked on `{info['device']}` in float32. "
             "Protocol: CLIP_benchmark's (DESIGN.md); R@k in %; ties go to the lower index.", ""]
    if results.get("note"):
        lines += [f"> {results['note']}", ""]
    for name, res in results["sets"].items():
        lines += [f"## {name} ({res['n_images']} images, {res['n_captions']} captions)", "",
                  "| image embedding | " + " | ".join(keys) + " |",
                  "|---" + "|---:" * len(keys) + "|"]
        for row in ROWS:
            lines.append(f"| {row} | " + " | ".join(fmt(res[row][k], 2) for k in keys) + " |")
        for row in ("projected", "ensemble"):
            lines.append(f"| {row}, % of CLIP | " + " | ".join(
                fmt(res[row + "_pct"][k], 1) for k in keys) + " |")
        if "seed_comparison" in res:
            lines += ["", *_seed_lines(res["seed_comparison"], ks)]
        lines.append("")
    if "zeroshot" in results:
        lines += _zeroshot_lines(results["zeroshot"])
    lines += ["Ensemble: normalize(CLIP image + projected DINOv2), a free row that needs both "
              "models at query time.", ""]
    return "\n".join(lines)


def _zeroshot_lines(z: dict) -> list[str]:
    metrics, head = list(ZEROSHOT_METRICS), list(ZEROSHOT_METRICS.values())
    lines = [f"## Zero-shot classification: `{z['data_dir']}` ({z['n_images']} images, "
             f"{z['n_classes']} classes, {z['n_templates']} prompts: {z['templates']})", "",
             "| image embedding | " + " | ".join(head) + " | "
             + " | ".join(f"{h} % of CLIP" for h in head) + " |",
             "|---" + "|---:" * 2 * len(metrics) + "|"]
    for row in ROWS:
        pct = z.get(f"{row}_pct", {})
        lines.append(f"| {row} | " + " | ".join(fmt(z[row][k], 2) for k in metrics) + " | "
                     + " | ".join("" if row == "clip" else fmt(pct.get(k), 1)
                                  for k in metrics) + " |")
    if z.get("note"):
        lines.append(f"\n> {z['note']}")
    if z.get("skipped"):
        lines.append(f"\nSkipped, by reason: {z['skipped']}")
    return [*lines, "", *_per_class_lines(z)]


def _per_class_lines(z: dict) -> list[str]:
    """The per-class top-1 table (or its largest gaps), and every class folded away below."""
    shown, caption = per_class_view(z)
    if not shown:
        return []
    lines = [f"### Per class: top-1 (%){f', {caption}' if caption else ''}", "",
             *_per_class_table(shown), ""]
    if caption:
        lines += [f"<details><summary>All {len(z['per_class'])} classes</summary>", "",
                  *_per_class_table(z["per_class"]), "", "</details>", ""]
    return lines


def _per_class_table(classes: list[dict]) -> list[str]:
    return ["| class | images | " + " | ".join(ROWS) + " |", "|---|---:" + "|---:" * len(ROWS)
            + "|", *(f"| {c['class']} | {c['n_images']} | "
                     + " | ".join(fmt(c[row], 1) for row in ROWS) + " |" for c in classes)]


def per_class_view(z: dict, limit: int = PER_CLASS_ALL, worst: int = PER_CLASS_WORST
                   ) -> tuple[list[dict], str]:
    """The classes a report shows and a caption saying which: every class up to `limit` of
    them; beyond, the `worst` where projected DINOv2 falls furthest below CLIP, which is where
    a researcher looks first (classes without readable images last)."""
    classes = z.get("per_class", [])
    if len(classes) <= limit:
        return classes, ""

    def gap(c: dict) -> tuple[bool, float]:
        if c["clip"] is None or c["projected"] is None:
            return True, 0.0
        return False, c["projected"] - c["clip"]

    shown = sorted(classes, key=gap)[:worst]  # stable: equal gaps stay in label order
    return shown, (f"the {worst} of {len(classes)} classes where projected DINOv2 is furthest "
                   "below CLIP (every class is in the results JSON)")


def _seed_lines(c: dict, ks: list[int]) -> list[str]:
    mean_label = "/".join(f"R@{k}" for k in ks)
    rows = [("seed project, published", c["seed_published"]),
            (f"ours, mean of {mean_label} % of CLIP", c["ours_mean_over_k"])]
    if "ours_r5" in c:
        rows.append(("ours, R@5 % of CLIP (CLIP_benchmark default)", c["ours_r5"]))
    rows.append((f"ensemble, mean of {mean_label} % of CLIP", c["ensemble_mean_over_k"]))
    return ["% of CLIP, the seed's way: image retrieval = text->image, text retrieval = "
            "image->text. The seed did not say how it folded R@k into one number, so two "
            "readings of ours are shown.", "",
            "| | image retrieval (text->image) | text retrieval (image->text) |",
            "|---|---:|---:|",
            *[f"| {label} | {fmt(v['t2i'], 2)} | {fmt(v['i2t'], 2)} |" for label, v in rows]]


def print_table(results: dict) -> None:
    from rich.table import Table

    keys = metric_keys(results["ks"])
    console = make_console()
    for name, res in results["sets"].items():
        table = Table(title=f"{name}: R@k (%) and % of CLIP "
                            f"({res['n_images']} images, {res['n_captions']} captions)")
        table.add_column("image embedding", no_wrap=True)
        for k in keys:
            table.add_column(k, justify="right")
        for row in ROWS:
            table.add_row(row, *(fmt(res[row][k], 2) for k in keys))
        for row in ("projected", "ensemble"):
            table.add_row(f"{row} % of CLIP", *(fmt(res[row + "_pct"][k], 1) for k in keys),
                          style="bold" if row == "projected" else None)
        console.print(table)
        if "seed_comparison" in res:
            c = res["seed_comparison"]
            seed, ours = c["seed_published"], c["ours_mean_over_k"]
            console.print(f"  % of CLIP, text->image / image->text: seed published "
                          f"{fmt(seed['t2i'], 2)} / {fmt(seed['i2t'], 2)}; ours (mean over k) "
                          f"{fmt(ours['t2i'], 2)} / {fmt(ours['i2t'], 2)}")
    if results.get("note"):
        console.print(f"[bold yellow]{results['note']}[/]")
