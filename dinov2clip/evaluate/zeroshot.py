"""Zero-shot classification on a folder-per-class dataset (ImageNet layout).

Each class's classifier is the mean of its L2-normalised prompt embeddings, normalised again
(CLIP's prompt ensembling). CLIP's image embeddings, projected DINOv2 and their ensemble are
scored against the same classifier, so "% of CLIP" compares image towers and nothing else.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from dinov2clip.config import ConfigError, UseOptions
from dinov2clip.evaluate.report import ZEROSHOT_METRICS, fmt, per_class_view
from dinov2clip.evaluate.templates import get_templates
from dinov2clip.formats.images import IMAGE_SUFFIXES, ImageCrops, collate_crops, list_images
from dinov2clip.io_utils import atomic_write_json
from dinov2clip.retrieval import retrieval_ranks
from dinov2clip.store import RunDir
from dinov2clip.terminal import progress

log = logging.getLogger(__name__)
ROWS = ("clip", "projected", "ensemble")
KS = (1, 5)
LABELS = {"clip": "CLIP", "projected": "projected DINOv2", "ensemble": "ensemble"}


@dataclass
class FolderDataset:
    classnames: list[str]  # prompt text per class, in label order
    folders: list[str]  # class folder names, sorted; label = position
    files: list[Path]
    labels: list[int]


def load_folder_dataset(root: Path, classnames_file: Path | None = None,
                        max_per_class: int = 0) -> FolderDataset:
    """Classes are root's sub-folders (sorted); images anywhere below each of them. A class
    folder without images is an error: it would be a class no image can be, silently."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"dataset folder not found: {root}")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ConfigError(f"{root}: no class sub-folders (expected <root>/<class>/<image>)")
    names = _classnames(folders, classnames_file)
    files, labels = [], []
    for label, folder in enumerate(folders):
        found = list_images(root / folder)
        if not found:
            raise ConfigError(f"{root / folder}: class folder has no images "
                              f"({' '.join(IMAGE_SUFFIXES)}); add some or remove the folder")
        found = found[:max_per_class] if max_per_class > 0 else found
        files += found
        labels += [label] * len(found)
    return FolderDataset(names, folders, files, labels)


def _classnames(folders: list[str], path: Path | None) -> list[str]:
    """Folder names with _ as spaces; or a JSON list/dict or TXT (one per line) overriding them."""
    if path is None:
        return [f.replace("_", " ") for f in folders]
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"class-name file not found: {path}")
    text = path.read_text()
    try:
        loaded = json.loads(text) if path.suffix == ".json" else [
            line.strip() for line in text.splitlines() if line.strip()]
    except ValueError as err:
        raise ConfigError(f"{path}: not valid JSON: {err}") from None
    if isinstance(loaded, dict):  # folder name -> class name, e.g. ImageNet wnid -> label
        missing = [f for f in folders if f not in loaded]
        if missing:
            raise ConfigError(f"{path}: no class name for folder {missing[0]!r}")
        return [str(loaded[f]) for f in folders]
    if not isinstance(loaded, list) or len(loaded) != len(folders):
        n = len(loaded) if isinstance(loaded, list) else "no"
        raise ConfigError(f"{path}: {n} class names for {len(folders)} class folders "
                          "(give one per folder, in sorted folder order, or a JSON dict)")
    return [str(x) for x in loaded]


def build_classifier(encode_text, classnames: list[str], templates: tuple[str, ...]
                     ) -> torch.Tensor:
    """(n_classes, dim) L2-normalised: per class, the mean of its normalised prompt embeddings."""
    rows = []
    for name in progress(classnames, desc="classifier", unit="class", leave=False):
        emb = encode_text([t.format(name) for t in templates])  # (n_templates, dim), unit norm
        rows.append(F.normalize(emb.float().mean(dim=0), dim=-1))
    return torch.stack(rows)


def topk_accuracy(images: torch.Tensor, classifier: torch.Tensor, labels: torch.Tensor,
                  ks=KS, device: torch.device | str = "cpu") -> dict[str, float]:
    """Percent of images whose label is among the k best classes (k capped at n_classes)."""
    return topk_of(class_ranks(images, classifier, labels, device), ks)


def class_ranks(images: torch.Tensor, classifier: torch.Tensor, labels: torch.Tensor,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """(n_images,) the rank of each image's own class, 0 = first.

    Ranked by the one ranking function: each image is a query whose "caption" is its class, so
    equal logits go to the lower class index, as equal scores do in retrieval.
    """
    return retrieval_ranks(images, classifier, labels, device)[0]


def topk_of(ranks: torch.Tensor, ks=KS) -> dict[str, float]:
    return {f"top{k}": 100.0 * int((ranks < k).sum()) / len(ranks) for k in ks}


def per_class_top1(ranks: torch.Tensor, labels: torch.Tensor, n_classes: int
                   ) -> list[float | None]:
    """Each class's top-1 recall in percent: the share of its images ranked it first. None for
    a class whose images were all unreadable (no recall to speak of)."""
    labels = labels.long().cpu()
    seen = torch.bincount(labels, minlength=n_classes).tolist()
    hits = torch.bincount(labels[ranks.cpu() == 0], minlength=n_classes).tolist()
    return [100.0 * h / n if n else None for h, n in zip(hits, seen, strict=True)]


def mean_per_class_recall(per_class: list[float | None]) -> float:
    """CLIP_benchmark's mean_per_class_recall: every class weighs the same, however many
    images it has (classes without images left out, as sklearn's balanced accuracy does)."""
    recalls = [r for r in per_class if r is not None]
    return sum(recalls) / len(recalls)


def class_scores(images: torch.Tensor, classifier: torch.Tensor, labels: torch.Tensor,
                 device: torch.device | str = "cpu") -> tuple[dict[str, float], list]:
    """(top-k and mean per-class recall in percent, each class's top-1) from one ranking."""
    ranks = class_ranks(images, classifier, labels, device)
    per_class = per_class_top1(ranks, labels, classifier.shape[0])
    return {**topk_of(ranks), "mean_per_class_recall": mean_per_class_recall(per_class)
            }, per_class


def trivial_note(n_classes: int, ks=KS) -> str:
    """What says nothing: top-k over k or fewer classes always holds the label."""
    trivial = [f"top{k}" for k in ks if k >= n_classes]
    return (f"{' and '.join(trivial)} {'is' if len(trivial) == 1 else 'are'} trivially 100 % "
            f"with {n_classes} class{'es' if n_classes > 1 else ''}" if trivial else "")


def percent_of_clip(clip: dict, other: dict) -> dict:
    return {k: (100.0 * other[k] / clip[k] if clip[k] > 0 else None) for k in clip}


def run_zeroshot(*, run: str | Path, data_dir: Path, classnames_file: Path | None = None,
                 templates: str = "imagenet80", out: Path | None = None,
                 options: UseOptions = UseOptions(), max_per_class: int = 0,
                 root: Path | None = None) -> dict:
    """run: a run directory, "hf-hub:ORG/NAME", or a run name under root/runs."""
    from dinov2clip.models.inference import DinoV2Clip

    prompts = get_templates(templates)
    data = load_folder_dataset(data_dir, classnames_file, max_per_class)  # fail before loading
    run_dir = RunDir.resolve(run, root)
    model = DinoV2Clip.from_pretrained(run_dir.path, **options.model_args(), clip_image=True)
    log.info("zero-shot: %d images, %d classes, %d prompts each", len(data.files),
             len(data.classnames), len(prompts))
    classifier = build_classifier(model.encode_text, data.classnames, prompts)
    emb, labels, skipped = _embed(model, data, options)
    if not labels:
        raise ConfigError(f"{data_dir}: no readable images (skipped: {dict(skipped)})")
    y = torch.tensor(labels)
    images = {"clip": emb["clip"], "projected": emb["projected"],
              "ensemble": F.normalize(emb["clip"] + emb["projected"], dim=-1)}
    results = {"run_dir": str(run_dir), "tag": run_dir.trained_on().tag,
               "data_dir": str(data_dir), "templates": templates,
               "n_templates": len(prompts), "n_classes": len(data.classnames),
               "n_images": len(labels), "skipped": dict(sorted(skipped.items())),
               "note": trivial_note(len(data.classnames)),
               "compute_dtype": str(model.dtype).removeprefix("torch."),  # what actually ran
               "device": str(model.device)}
    per_class = {}
    for row in ROWS:
        results[row], per_class[row] = class_scores(images[row], classifier, y, model.device)
    results["projected_pct"] = percent_of_clip(results["clip"], results["projected"])
    results["ensemble_pct"] = percent_of_clip(results["clip"], results["ensemble"])
    results["per_class"] = per_class_table(data, y, per_class)
    out = Path(out) if out else run_dir.zeroshot_results(data_dir)
    atomic_write_json(out, results)
    print_zeroshot(results)
    log.info("zero-shot results in %s", out)
    return results


def per_class_table(data: FolderDataset, labels: torch.Tensor, per_class: dict) -> list[dict]:
    """One record per class, in label order: its folder, name, readable images, each row's
    top-1 in percent."""
    counts = torch.bincount(labels, minlength=len(data.folders)).tolist()
    return [{"folder": folder, "class": name, "n_images": n,
             **{row: per_class[row][i] for row in ROWS}}
            for i, (folder, name, n) in enumerate(zip(data.folders, data.classnames, counts,
                                                      strict=True))]


def _embed(model, data: FolderDataset, options: UseOptions):
    loader = DataLoader(ImageCrops(data.files, [model.dino_spec, model.clip_spec]),
                        batch_size=options.batch_size, num_workers=options.num_workers,
                        collate_fn=collate_crops)
    parts = {"clip": [], "projected": []}
    labels, skipped = [], Counter()
    bar = progress(total=len(data.files), desc="zero-shot", unit="img")
    for batch in loader:
        for i, reason in batch.failures:
            skipped[reason] += 1
            log.debug("skipped %s: %s", data.files[i], reason)
        if batch.indices:
            parts["projected"].append(model.encode_image(batch.crops[0]))
            parts["clip"].append(model.encode_clip_image(batch.crops[1]))
            labels += [data.labels[i] for i in batch.indices]
        bar.update(len(batch.indices) + len(batch.failures))
    bar.close()
    if skipped:
        log.warning("skipped %d unreadable images: %s", sum(skipped.values()), dict(skipped))
    return {k: torch.cat(v) if v else torch.zeros(0) for k, v in parts.items()}, labels, skipped


def print_zeroshot(results: dict) -> None:
    from rich.table import Table

    from dinov2clip.terminal import make_console

    table = Table(title=f"zero-shot: {results['n_images']} images, {results['n_classes']} "
                        f"classes, {results['n_templates']} prompts ({results['templates']})")
    table.add_column("image tower")
    for name in ZEROSHOT_METRICS.values():
        table.add_column(name, justify="right")
        table.add_column(f"{name} % of CLIP", justify="right")
    for row in ROWS:
        pct = results.get(f"{row}_pct") or {}
        cells = []
        for k in ZEROSHOT_METRICS:
            cells.append(f"{results[row][k]:.2f}")
            cells.append("" if row == "clip" or pct.get(k) is None else f"{pct[k]:.1f}")
        table.add_row(LABELS[row], *cells)
    console = make_console()
    console.print(table)
    _print_per_class(console, results)
    if results.get("note"):
        console.print(f"[bold yellow]{results['note']}[/]")
    if results["skipped"]:
        console.print(f"skipped: {results['skipped']}")


def _print_per_class(console, results: dict) -> None:
    from rich.table import Table

    shown, caption = per_class_view(results)
    table = Table(title=f"per class: top-1 (%){f', {caption}' if caption else ''}")
    table.add_column("class")
    table.add_column("images", justify="right")
    for row in ROWS:
        table.add_column(LABELS[row], justify="right")
    for c in shown:
        table.add_row(c["class"], str(c["n_images"]), *(fmt(c[row], 1) for row in ROWS))
    console.print(table)
