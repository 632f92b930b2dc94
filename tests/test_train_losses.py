"""Every loss in the registry, checked against values worked out by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from dinov2clip.config import ConfigError
from dinov2clip.train.losses import LOSSES, WeightedLoss


def unit(x):
    return F.normalize(x, dim=-1)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(6, 16, generator=g) * 3  # raw projector output, not normalised
    img = unit(torch.randn(6, 16, generator=g))
    txt = unit(img + 0.3 * torch.randn(6, 16, generator=g))
    return pred, img, txt


def test_unit_mse_is_two_minus_two_cosine_over_dim(batch):
    pred, img, txt = batch
    cos = F.cosine_similarity(pred, img, dim=-1)
    expected = ((2 - 2 * cos) / pred.shape[1]).mean()
    torch.testing.assert_close(LOSSES["unit_mse"]()(pred, img, txt), expected)
    # scale-free in the prediction, zero at the target
    torch.testing.assert_close(LOSSES["unit_mse"]()(5 * pred, img, txt), expected)
    assert LOSSES["unit_mse"]()(img * 7, img, txt).item() == pytest.approx(0, abs=1e-7)


def test_cosine_and_theia_mix(batch):
    pred, img, txt = batch
    cos = F.cosine_similarity(pred, img, dim=-1).mean()
    torch.testing.assert_close(LOSSES["cosine"]()(pred, img, txt), 1 - cos)
    d = (unit(pred) - img).abs()  # smooth-L1 with beta 1: 0.5 d^2 below 1, d - 0.5 above
    assert (d > 1).any() and (d < 1).any()
    smooth = torch.where(d < 1, 0.5 * d.square(), d - 0.5).mean()
    torch.testing.assert_close(LOSSES["cos_smoothl1"]()(pred, img, txt),
                               0.9 * (1 - cos) + 0.1 * smooth)


@pytest.mark.parametrize("name,target", [("text_infonce", 2), ("image_infonce", 1)])
def test_infonce_temperature_and_value(batch, name, target):
    loss = LOSSES[name]()
    assert loss.log_scale.exp().item() == pytest.approx(1 / 0.07)
    assert loss.log_scale.requires_grad
    pred, img, txt = batch
    other = batch[target]
    logits = (1 / 0.07) * unit(pred) @ other.T
    labels = torch.arange(6)
    expected = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    torch.testing.assert_close(loss(pred, img, txt), expected)
    # identical embeddings for every pair: nothing to tell apart, the loss is log(B)
    same = unit(torch.ones(6, 16))
    assert loss(same, same, same).item() == pytest.approx(math.log(6), rel=1e-5)


def test_retrieval_kd_is_zero_when_student_matches_teacher(batch):
    pred, img, txt = batch
    kd = LOSSES["retrieval_kd"]()
    assert kd(img * 4, img, txt).item() == pytest.approx(0, abs=1e-6)
    assert kd(pred, img, txt).item() > 0.1
    log_teacher = F.log_softmax(100 * img @ txt.T, dim=-1)
    log_student = F.log_softmax(100 * unit(pred) @ txt.T, dim=-1)
    expected = (log_teacher.exp() * (log_teacher - log_student)).sum(-1).mean()
    torch.testing.assert_close(kd(pred, img, txt), expected)


def test_weighted_sum_and_registry(batch):
    pred, img, txt = batch
    loss = WeightedLoss({"unit_mse": 1.0, "text_infonce": 0.2})
    total, parts = loss(pred, img, txt)
    torch.testing.assert_close(total, parts["unit_mse"] + 0.2 * parts["text_infonce"])
    assert [n for n, _ in loss.named_parameters()] == ["terms.text_infonce.log_scale"]
    total.backward()
    assert loss.terms["text_infonce"].log_scale.grad is not None
    with pytest.raises(ConfigError, match="unknown loss 'mse'"):
        WeightedLoss({"mse": 1.0})
    with pytest.raises(ConfigError, match="empty"):
        WeightedLoss({})
