"""PAMR (dinov2clip/dense/pamr.py) against a per-pixel loop, what it keeps and what it fixes, and
the protocol scoring each window once for the rows with and without it."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dinov2clip.data.synthetic_dense import DenseTask
from dinov2clip.dense.metrics import SegmentationMeter
from dinov2clip.dense.pamr import DILATIONS, ITERATIONS, pamr
from dinov2clip.dense.protocol import Protocol, predict, predict_each, window_boxes
from tests.test_dense_protocol import dense_miou


def oracle(image: np.ndarray, scores: np.ndarray, iterations: int, dilations) -> np.ndarray:
    """PAMR pixel by pixel: image (K, H, W), scores (C, H, W); a neighbour off the image is the
    nearest edge pixel."""
    k, h, w = image.shape
    ring = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]

    def at(y, x):
        return min(max(y, 0), h - 1), min(max(x, 0), w - 1)

    neighbours, weights = {}, {}
    for y, x in itertools.product(range(h), range(w)):
        near = [at(y + dy * d, x + dx * d) for d in dilations for dy, dx in ring]
        window = [at(y, x)] * len(dilations) + near  # 3 x 3 at each dilation, centre included
        logits = []
        for j in near:
            total = 0.0
            for c in range(k):
                values = [image[c][p] for p in window]
                mean = sum(values) / len(values)
                sigma = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
                total += -abs(image[c][y, x] - image[c][j]) / (1e-8 + 0.1 * sigma)
            logits.append(total / k)
        top = max(logits)
        exp = [math.exp(v - top) for v in logits]
        neighbours[y, x], weights[y, x] = near, [e / sum(exp) for e in exp]
    out = scores.astype(np.float64)
    for _ in range(iterations):
        new = np.zeros_like(out)
        for (y, x), near in neighbours.items():
            for j, a in zip(near, weights[y, x], strict=True):
                new[:, y, x] += a * out[:, j[0], j[1]]
        out = new
    return out


def test_pamr_equals_the_pixel_loop():
    g = torch.Generator().manual_seed(0)
    image = torch.rand((1, 3, 6, 7), generator=g)
    image[:, :, :, 4:] += 1.0  # an edge, so the affinities are far from uniform
    scores = torch.rand((2, 6, 7), generator=g)
    got = pamr(image, scores, iterations=2, dilations=(1, 2))
    want = oracle(image[0].double().numpy(), scores.double().numpy(), 2, (1, 2))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_classes_are_refined_independently():
    g = torch.Generator().manual_seed(1)
    image, scores = torch.rand((1, 3, 12, 16), generator=g), torch.rand((5, 12, 16), generator=g)
    whole = pamr(image, scores)
    chunks = torch.cat([pamr(image, scores[:2]), pamr(image, scores[2:])])
    torch.testing.assert_close(whole, chunks)


def test_a_constant_image_keeps_a_constant_mask():
    scores = torch.tensor([0.3, -0.2, 0.9])[:, None, None].expand(3, 30, 40)
    out = pamr(torch.full((1, 3, 30, 40), 0.4), scores)
    torch.testing.assert_close(out, scores.contiguous())


def test_affinities_ignore_an_affine_change_of_each_channel():
    # the protocol refines with the normalised window, Talk2DINO with raw pixels: the same
    g = torch.Generator().manual_seed(2)
    raw = torch.rand((1, 3, 32, 40), generator=g)
    raw[:, :, 10:25, 5:30] *= 0.3  # a darker block
    scores = torch.rand((4, 32, 40), generator=g)
    mean = torch.tensor([0.485, 0.456, 0.406])[None, :, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[None, :, None, None]
    flipped = raw * torch.tensor([-3.0, 0.5, 7.0])[None, :, None, None] + 2.0
    for other in [(raw - mean) / std, flipped, raw * 255.0]:
        torch.testing.assert_close(pamr(other, scores), pamr(raw, scores), rtol=1e-4, atol=1e-5)


def test_the_image_is_resized_to_the_scores():
    image = torch.rand((1, 3, 16, 16))
    scores = torch.rand((2, 8, 8))
    small = F.interpolate(image, size=(8, 8), mode="bilinear", align_corners=True)
    torch.testing.assert_close(pamr(image, scores), pamr(small, scores))


A, B = torch.tensor([0.2, 0.5, 0.7]), torch.tensor([0.8, 0.3, 0.1])


def two_colours() -> tuple[torch.Tensor, np.ndarray]:
    """A disc of colour B on colour A, and its label map (1 inside)."""
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(96), indexing="ij")
    label = ((yy - 30) ** 2 + (xx - 41) ** 2 < 17 ** 2).long()
    image = torch.where(label[None] == 1, B[:, None, None], A[:, None, None])[None]
    return image, label.numpy()


def coarse(window: torch.Tensor) -> torch.Tensor:
    """Class scores on a grid of 16-pixel cells (the share of B in each): bilinear upsampling
    rounds and shrinks the disc, as a ViT's patch grid does to an object."""
    share = F.avg_pool2d((window[:, :1] > 0.5).float(), 16)[0, 0]
    return torch.stack([1 - share, share])


def miou(pred, label) -> float:
    meter = SegmentationMeter(2)
    meter.update(pred, label)
    return meter.result()["mIoU"]


def test_pamr_moves_a_blurred_boundary_onto_the_colour_edge():
    image, label = two_colours()
    plain = miou(predict(image, coarse, Protocol(64, 64, 32), label.shape), label)
    refined = miou(predict(image, coarse, Protocol(64, 64, 32, pamr=True), label.shape), label)
    assert plain < 90.0 and refined > 99.0, (plain, refined)  # 85.5 -> 100.0


def test_each_window_is_scored_once_for_both_rows():
    image, label = two_colours()
    calls = []

    def counted(window):
        calls.append(window.shape)
        return coarse(window)

    protocols = [Protocol(64, 64, 32), Protocol(64, 64, 32, pamr=True),
                 Protocol(64, 64, 32, bg_threshold=0.6, pamr=True)]
    both = predict_each(image, counted, protocols, label.shape)
    assert len(calls) == len(window_boxes(64, 96, 64, 32))
    for protocol, pred in zip(protocols, both, strict=True):
        assert torch.equal(pred, predict(image, coarse, protocol, label.shape))
    with pytest.raises(ValueError, match="share"):
        predict_each(image, coarse, [Protocol(64, 64, 32), Protocol(64, 64, 16)], label.shape)


def test_the_protocol_records_the_refinement():
    assert Protocol().to_dict()["pamr"] is False
    recorded = Protocol(pamr=True).to_dict()["pamr"]
    assert recorded["iterations"] == ITERATIONS == 10
    assert recorded["dilations"] == list(DILATIONS) == [1, 2, 4, 8, 12, 24]


def test_the_synthetic_dense_task_stays_high_with_pamr():
    # smaller windows than the protocol's 448 keep the test quick on a CPU
    task, small = DenseTask(seed=0), dict(short_side=224, window=224, stride=112)
    plain = dense_miou(task, Protocol(bg_threshold=0.5, **small), n=4)
    refined = dense_miou(task, Protocol(bg_threshold=0.5, pamr=True, **small), n=4)
    assert refined > 95.0 and refined > plain + 5.0, (plain, refined)  # 86.5 -> 98.7
