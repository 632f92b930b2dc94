"""Open-vocabulary segmentation in the eval stage: each eval.dense set scored under the
protocol (dense/protocol.py) with each of eval.dense.head's dense heads, one JSON per set and
head (RunDir.segmentation_results), a per-class IoU plot, overlay pictures and, with
--save-masks, the predicted label maps. Every head sees the same images, prompts and protocol,
so the report's rows compare the heads alone (issue 19: what the projector head costs against
the learned one). With eval.dense.pamr each head is scored twice from one pass over the windows,
without and with PAMR, each a result, files and a report row of its own."""

from __future__ import annotations

import logging
import time

import numpy as np
from PIL import Image

from dinov2clip.config import Config, ConfigError
from dinov2clip.dense.metrics import IGNORE, SegmentationMeter
from dinov2clip.dense.prompts import SUB_IMAGENET, class_embeddings
from dinov2clip.dense.protocol import Protocol, predict_each
from dinov2clip.formats.segsets import SegSet, segset_dir
from dinov2clip.io_utils import atomic_write, atomic_write_json
from dinov2clip.store import RunDir
from dinov2clip.terminal import progress

log = logging.getLogger(__name__)

# Talk2DINO (DINOv2 ViT-B/14-reg + CLIP ViT-B/16) mIoU as issue 19 quotes the paper (arXiv
# 2411.19331), by benchmark kind (data.segmentation_sets' kinds); a set of that kind, or so
# named, gets the number beside ours in report.md. Not checked against the paper's own table,
# which the stored copies here hold only as an image: PUBLISHED_SOURCE says so in every result.
PUBLISHED_SOURCE = "Talk2DINO ViT-B as issue 19 quotes arXiv 2411.19331; unverified here"
TALK2DINO_VITB = {"voc20": 87.1, "context59": 39.8, "coco-stuff": 28.1, "cityscapes": 36.6,
                  "ade20k": 21.1, "voc21": 61.5, "context60": 35.1, "coco-object": 41.0}


def check_segmentation(cfg: Config) -> None:
    """Every eval.dense set is there and finished: one line up front, not after retrieval."""
    for name in cfg.eval.dense.sets:
        path = segset_dir(cfg.root, name)
        if not path.is_dir():
            raise ConfigError(f"eval.dense.sets: no segmentation set {name!r} at {path} (the "
                              "data stage installs one: a benchmark from "
                              f"data.segmentation_sets.{name}, or the synthetic shapes set "
                              "with data.synthetic.num_segmentation)")
        SegSet(path).read_classes()


def segmentation_for(cfg: Config, run: RunDir) -> dict:
    """{set: {head, or head+pamr: its results}} for every eval.dense set and head, each also
    written to its JSON."""
    from dinov2clip.models.inference import DinoV2Clip

    model = DinoV2Clip.from_pretrained(run.path, device=cfg.eval.device,
                                       dtype=cfg.extract.compute_dtype)
    return {name: {key: res for head in cfg.eval.dense.heads
                   for key, res in evaluate_set(cfg, run, model, name, head).items()}
            for name in cfg.eval.dense.sets}


def evaluate_set(cfg: Config, run: RunDir, model, name: str, head: str) -> dict:
    """{head: results}, and with eval.dense.pamr {head+pamr: results} too, from one pass."""
    from dinov2clip.evaluate.seg_report import overlay_picture

    d = cfg.eval.dense
    seg = SegSet(segset_dir(cfg.root, name))
    classes, background = seg.read_classes()
    protocols = [Protocol(d.short_side, d.window, d.stride,
                          d.threshold(head) if background else None, pamr=refined)
                 for refined in ((False, True) if d.pamr else (False,))]
    prompts = seg.read_prompts()  # the protocol's names ("table" for VOC's "diningtable")
    prompted = prompts[1:] if background else prompts  # background gets no prompt
    scorer = model.dense_scorer(class_embeddings(model.encode_text, prompted, SUB_IMAGENET),
                                head, uses_bg_clean(cfg, head))
    meters, started = [SegmentationMeter(len(classes)) for _ in protocols], time.perf_counter()
    samples = seg.samples(d.max_images)
    bar = progress(samples, desc=f"segment {name} ({head})", unit="img")
    for i, sample in enumerate(bar):
        label = sample.read_label()
        preds = predict_each(model.image_tensor(sample.image), scorer, protocols, label.shape)
        for protocol, meter, pred in zip(protocols, meters, preds, strict=True):
            pred = np.where(label == IGNORE, IGNORE, pred.numpy()).astype(np.uint8)
            meter.update(pred, label)
            if d.save_masks:
                _save_png(run.segmentation_mask(name, head, sample.key, protocol.pamr), pred)
            if i < d.overlays:
                path = run.segmentation_overlay(name, head, sample.key, protocol.pamr)
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(path, lambda tmp, s=sample, p=pred, lb=label: overlay_picture(
                    s.image, lb, p, classes, tmp))
    seconds = round(time.perf_counter() - started, 3)  # with PAMR: the pass both came from
    recorded = {"published": published_for(seg, name), "prompted_as": {
        c: p for c, p in zip(classes, prompts, strict=True) if c != p}}
    return {head + ("+pamr" if protocol.pamr else ""):
            _write(cfg, run, name, head, classes, protocol, meter.result(), seconds, recorded)
            for protocol, meter in zip(protocols, meters, strict=True)}


def published_for(seg: SegSet, name: str) -> dict:
    """Talk2DINO's number for the set's benchmark: by the kind its classes.json records (a set
    the data stage installed under any name), else by the set's own name."""
    meta = seg.read_meta()
    kind = meta.get("kind") or name.lower()
    # the split's size as published (a data-stage set records it): fewer images scored here,
    # by max_images or skips, is not the number's set, and the report marks it
    return {"talk2dino_vitb": TALK2DINO_VITB.get(kind), "source": PUBLISHED_SOURCE,
            "images": meta.get("published_images")}


def _write(cfg: Config, run: RunDir, name: str, head: str, classes: list[str],
           protocol: Protocol, scores: dict, seconds: float, recorded: dict) -> dict:
    """One result: its JSON and IoU plot written, a line logged. recorded: what the set adds
    (the published number, the classes prompted under another name)."""
    from dinov2clip.evaluate.seg_report import iou_chart, shown_head

    res = {**_results(cfg, run, name, head, classes, protocol, scores), "seconds": seconds,
           **recorded}
    atomic_write_json(run.segmentation_results(name, head, protocol.pamr), res)
    atomic_write(run.segmentation_plot(name, head, protocol.pamr),
                 lambda tmp: iou_chart(res, tmp))
    log.info("segmentation %s: mIoU %.2f, pixel accuracy %.2f over %d images (%s) in %.1fs",
             name, res["mIoU"], res["pixel_accuracy"], res["n_images"], shown_head(res),
             seconds)
    return res


def uses_bg_clean(cfg: Config, head: str) -> bool:
    """Background cleaning reads the learned head's attention weighting: the projector head
    has none, so its result records that it ran without."""
    return cfg.eval.dense.bg_clean and head == "talk2dino"


def _results(cfg: Config, run: RunDir, name: str, head: str, classes: list[str],
             protocol: Protocol, scores: dict) -> dict:
    from dinov2clip.evaluate.report import without_nan

    models = run.trained_models()
    per_class = dict(zip(classes, scores.pop("per_class_iou"), strict=True))
    return without_nan({
        "set": name, **scores, "per_class_iou": per_class, "classes": classes,
        "head": head, "bg_clean": uses_bg_clean(cfg, head), "pamr": protocol.pamr,
        "backbone": models.dino_model,
        "teacher": f"{models.clip_model} {models.clip_pretrained}".strip(),
        "protocol": {**protocol.to_dict(), "prompts": list(SUB_IMAGENET),
                     "upsampling": "bilinear", "ignore_label": IGNORE,
                     "miou": "dataset level: intersection and union summed over images"},
        "device": str(model_device(cfg)),
    })


def model_device(cfg: Config) -> str:
    from dinov2clip.device import resolve_device

    return str(resolve_device(cfg.eval.device, "eval.device"))


def _save_png(path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(labels.astype(np.uint8), "L")
    atomic_write(path, lambda tmp: image.save(tmp, "PNG"))

