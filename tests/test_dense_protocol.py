"""The segmentation protocol's pieces (dinov2clip/dense/protocol.py), and the synthetic dense
task whose answer is known run through all of them with the metric."""

import numpy as np
import pytest
import torch

from dinov2clip.data.synthetic_dense import DenseTask
from dinov2clip.dense.metrics import SegmentationMeter
from dinov2clip.dense.protocol import (
    Protocol,
    patch_scorer,
    predict,
    resize_short_side,
    segment_logits,
    slide_logits,
    window_boxes,
)


@pytest.mark.parametrize("h, w", [(448, 448), (448, 597), (448, 1000), (300, 200), (449, 672)])
def test_windows_cover_the_image_flush_with_its_edges(h, w):
    boxes = window_boxes(h, w, 448, 224)
    covered = np.zeros((h, w), int)
    for y1, y2, x1, x2 in boxes:
        assert y2 - y1 == min(448, h) and x2 - x1 == min(448, w)
        covered[y1:y2, x1:x2] += 1
    assert covered.min() >= 1
    # mmseg's count: max(size - window + stride - 1, 0) // stride + 1 per axis
    rows = max(h - 448 + 223, 0) // 224 + 1
    cols = max(w - 448 + 223, 0) // 224 + 1
    assert len(boxes) == rows * cols
    assert max(b[1] for b in boxes) == h and max(b[3] for b in boxes) == w


def test_overlapping_windows_are_averaged():
    # Each window answers one constant: its own left edge. Where two windows overlap, the
    # result is their mean, which a sum or a last-one-wins would not give.
    def scorer(window):
        return torch.full((1, 2, 2), float(offsets.pop(0)))

    offsets = [x1 for _, _, x1, _ in window_boxes(4, 8, 4, 2)]  # x = 0, 2, 4
    out = slide_logits(torch.zeros(1, 3, 4, 8), scorer, window=4, stride=2)[0]
    np.testing.assert_allclose(out[0].numpy(), [0, 0, 1, 1, 3, 3, 4, 4])


def test_short_side_and_label_size():
    x = torch.zeros(1, 3, 300, 200)
    assert resize_short_side(x, 448).shape[-2:] == (672, 448)
    logits = segment_logits(x, lambda w: torch.zeros(3, 4, 4), Protocol(), (300, 200))
    assert logits.shape == (3, 300, 200)


def test_background_channel_wins_below_the_threshold():
    scores = torch.tensor([0.2, 0.4])[:, None, None].expand(2, 8, 8)  # class 1 best, at 0.4
    x = torch.zeros(1, 3, 32, 32)
    low = predict(x, lambda w: scores, Protocol(64, 64, 32, bg_threshold=0.3), (32, 32))
    high = predict(x, lambda w: scores, Protocol(64, 64, 32, bg_threshold=0.5), (32, 32))
    none = predict(x, lambda w: scores, Protocol(64, 64, 32), (32, 32))
    assert (low == 2).all() and (high == 0).all() and (none == 1).all()


def dense_miou(task: DenseTask, protocol: Protocol, flip: bool = False, n: int = 12) -> float:
    """mIoU of the task's own features through the protocol; flip mirrors every window's
    answer, the kind of slip (an axis swapped, a window misplaced) the check must catch."""
    base = patch_scorer(task.features, task.text)
    scorer = (lambda w: base(w).flip(-1)) if flip else base
    meter = SegmentationMeter(task.n_classes + 1)
    for i in range(n):
        image, label = task.sample(i)
        meter.update(predict(image, scorer, protocol, label.shape), label)
    return meter.result()["mIoU"]


def test_the_synthetic_dense_task_reaches_a_high_miou():
    task = DenseTask(seed=0)
    miou = dense_miou(task, Protocol(bg_threshold=0.5))
    assert miou > 88.0, miou  # 91.9: only cells on a shape's edge are lost
    assert dense_miou(task, Protocol(bg_threshold=0.5), flip=True) < 60.0  # 30.5
