"""Segmentation scores under the protocol of GroupViT, TCL, FreeDA and Talk2DINO (mmseg's).

Dataset level: per class, intersection and union are summed over every image first and divided
once at the end, so a class's IoU is not a mean of per-image IoUs. Label 255 is ignored. A class
that never occurs in labels nor predictions has no IoU (nan) and is left out of the mean, as
mmseg's nanmean does. tests/test_segmentation_metrics.py checks this against a pixel loop.
"""

from __future__ import annotations

import numpy as np
import torch

IGNORE = 255  # the label of pixels no class is scored on (borders in VOC, unlabelled in COCO)


def confusion(pred: torch.Tensor | np.ndarray, label: torch.Tensor | np.ndarray,
              n_classes: int, ignore: int = IGNORE) -> np.ndarray:
    """(n_classes, n_classes) int64 counts, row = true class, column = predicted class, over the
    pixels whose label is not `ignore`. pred and label: integer maps of one shape."""
    pred, label = _as_int64(pred), _as_int64(label)
    if pred.shape != label.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(label.shape)} differ "
                         "in shape: upsample the prediction to the label's size first")
    keep = label != ignore
    pred, label = pred[keep], label[keep]
    for what, values in (("label", label), ("prediction", pred)):
        if values.size and (values.min() < 0 or values.max() >= n_classes):
            raise ValueError(f"{what} holds class {int(values.max())} or {int(values.min())} "
                             f"outside 0..{n_classes - 1} (and not the ignore label {ignore})")
    counts = np.bincount(label * n_classes + pred, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes)


def scores(matrix: np.ndarray) -> dict:
    """mIoU, per-class IoU, pixel accuracy and mean class accuracy, all in percent, from a
    confusion matrix summed over a dataset. Undefined values are nan."""
    matrix = np.asarray(matrix, dtype=np.float64)
    inter = np.diag(matrix)
    union = matrix.sum(0) + matrix.sum(1) - inter  # predicted + true - both
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, np.nan)
        acc = np.where(matrix.sum(1) > 0, inter / matrix.sum(1), np.nan)
    total = matrix.sum()
    return {"mIoU": _nanmean(iou), "per_class_iou": (100.0 * iou).tolist(),
            "pixel_accuracy": 100.0 * inter.sum() / total if total else float("nan"),
            "mAcc": _nanmean(acc), "n_pixels": int(total)}


class SegmentationMeter:
    """Sums one confusion matrix over a dataset, image by image."""

    def __init__(self, n_classes: int, ignore: int = IGNORE):
        self.n_classes, self.ignore = n_classes, ignore
        self.matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
        self.n_images = 0

    def update(self, pred, label) -> None:
        self.matrix += confusion(pred, label, self.n_classes, self.ignore)
        self.n_images += 1

    def result(self) -> dict:
        return {**scores(self.matrix), "n_images": self.n_images}


def _nanmean(values: np.ndarray) -> float:
    seen = values[~np.isnan(values)]
    return 100.0 * float(seen.mean()) if seen.size else float("nan")


def _as_int64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"label maps must be integers, got {x.dtype}")
    return x.astype(np.int64)
