"""The segmentation metric (dinov2clip/dense/metrics.py) against a literal pixel loop."""

import math
import random

import numpy as np
import pytest

from dinov2clip.dense.metrics import IGNORE, SegmentationMeter, confusion, scores


def oracle(images: list[tuple[list[list[int]], list[list[int]]]], n: int) -> dict:
    """The protocol, literally: per class, count intersection and union pixel by pixel over
    the whole dataset, then divide; classes never seen anywhere are left out of the mean."""
    inter, union, correct, total = [0] * n, [0] * n, 0, 0
    for pred, label in images:
        for prow, lrow in zip(pred, label, strict=True):
            for p, t in zip(prow, lrow, strict=True):
                if t == IGNORE:
                    continue
                total += 1
                correct += p == t
                for c in range(n):
                    inter[c] += p == c and t == c
                    union[c] += p == c or t == c
    ious = [inter[c] / union[c] if union[c] else math.nan for c in range(n)]
    seen = [v for v in ious if not math.isnan(v)]
    return {"mIoU": 100 * sum(seen) / len(seen), "per_class_iou": [100 * v for v in ious],
            "pixel_accuracy": 100 * correct / total}


def random_images(rng: random.Random, n: int, count: int):
    out = []
    for _ in range(count):
        h, w = rng.randint(1, 9), rng.randint(1, 9)
        label = [[IGNORE if rng.random() < 0.15 else rng.randrange(n) for _ in range(w)]
                 for _ in range(h)]
        pred = [[rng.randrange(n) for _ in range(w)] for _ in range(h)]
        out.append((pred, label))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_dataset_level_miou_equals_the_pixel_loop(seed):
    rng = random.Random(seed)
    n = 6  # class 5 is absent from some draws: nan, left out of the mean
    images = random_images(rng, n - 1, 7)
    meter = SegmentationMeter(n)
    for pred, label in images:
        meter.update(np.array(pred, dtype=np.uint8), np.array(label, dtype=np.uint8))
    got, want = meter.result(), oracle(images, n)
    assert got["mIoU"] == pytest.approx(want["mIoU"], abs=1e-9)
    assert got["pixel_accuracy"] == pytest.approx(want["pixel_accuracy"], abs=1e-9)
    np.testing.assert_allclose(got["per_class_iou"], want["per_class_iou"], atol=1e-9)
    assert math.isnan(got["per_class_iou"][5]) and got["n_images"] == 7


def test_summing_over_images_is_not_averaging_per_image():
    # Image 1: class 1 is one pixel, predicted right (IoU 1). Image 2: class 1 has 3 pixels,
    # none right (IoU 0). Dataset level: 1 / 4, not the per-image mean 1 / 2.
    meter = SegmentationMeter(2)
    meter.update(np.array([[1, 0]]), np.array([[1, 0]]))
    meter.update(np.array([[0, 0, 0]]), np.array([[1, 1, 1]]))
    assert meter.result()["per_class_iou"][1] == pytest.approx(25.0)


def test_ignored_pixels_count_for_nothing():
    label = np.array([[0, IGNORE], [1, IGNORE]])
    right = confusion(np.array([[0, 1], [1, 0]]), label, 2)
    assert right.sum() == 2 and scores(right)["mIoU"] == 100.0


@pytest.mark.parametrize("pred, label, words", [
    (np.zeros((2, 2), int), np.zeros((2, 3), int), "shape"),
    (np.zeros((2, 2), int), np.full((2, 2), 7), "outside 0..2"),
    (np.full((2, 2), 3), np.zeros((2, 2), int), "outside 0..2"),
    (np.zeros((2, 2)), np.zeros((2, 2), int), "integers"),
])
def test_bad_maps_are_refused(pred, label, words):
    with pytest.raises(ValueError, match=words):
        confusion(pred, label, 3)


@pytest.mark.parametrize("seed", range(3))
def test_dataset_level_scores_equal_torchmetrics(seed):
    import torch
    from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

    n = 6  # class 5 never drawn, class 4 only ever predicted: both kinds of "absent"
    g = torch.Generator().manual_seed(seed)
    per_class = MulticlassJaccardIndex(n, average=None, ignore_index=IGNORE)
    macro = MulticlassJaccardIndex(n, average="macro", ignore_index=IGNORE)
    accuracy = MulticlassAccuracy(n, average="micro", ignore_index=IGNORE)
    meter = SegmentationMeter(n)
    for _ in range(5):
        h, w = torch.randint(3, 17, (2,), generator=g).tolist()
        label = torch.randint(0, 4, (h, w), generator=g)
        label[torch.rand((h, w), generator=g) < 0.2] = IGNORE
        pred = torch.randint(0, 5, (h, w), generator=g)
        meter.update(pred, label)
        for metric in (per_class, macro, accuracy):
            metric.update(pred, label)
    ours, theirs = meter.result(), 100 * per_class.compute().double().numpy()
    # A class in neither labels nor predictions (class 5) has no IoU: ours is nan, theirs is
    # its zero_division (0). Both leave it out of the mean (their macro weights a class with
    # an empty union 0), so per-class IoU is compared where it is defined and mIoU everywhere.
    assert math.isnan(ours["per_class_iou"][5]) and theirs[5] == 0.0
    np.testing.assert_allclose(ours["per_class_iou"][:5], theirs[:5], atol=1e-4)
    assert ours["per_class_iou"][4] == 0.0  # predicted, never true: counted, as IoU 0
    assert ours["mIoU"] == pytest.approx(100 * macro.compute().item(), abs=1e-4)
    assert ours["pixel_accuracy"] == pytest.approx(100 * accuracy.compute().item(), abs=1e-4)
