"""Prototype operators against hand computations."""

import math

import pytest
import torch

from fsmis.models import prototypes as P


def test_masked_average_by_hand():
    f = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[10.0, 20.0], [30.0, 40.0]]]])  # [1,2,2,2]
    m = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    out = P.masked_average(f, m)
    # channel 0: (1 + 3) / (2 + 1e-5); channel 1: (10 + 30) / (2 + 1e-5)
    assert out.shape == (1, 2)
    assert out[0, 0].item() == pytest.approx(4 / (2 + 1e-5), rel=1e-6)
    assert out[0, 1].item() == pytest.approx(40 / (2 + 1e-5), rel=1e-6)


def test_local_prototypes_keep_only_covered_windows():
    f = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    m = torch.zeros(1, 1, 4, 4)
    m[..., :2, :2] = 1  # top-left window fully covered
    m[..., 0, 2] = 1  # top-right window 25 % covered
    protos = P.local_prototypes(f, m, window=2, threshold=0.95)
    assert protos.shape == (1, 1)
    assert protos[0, 0].item() == pytest.approx((0 + 1 + 4 + 5) / 4)
    # lowering the threshold admits the partly covered window too (its mean feature 2.5+...)
    protos = P.local_prototypes(f, m, window=2, threshold=0.2)
    assert sorted(protos[:, 0].tolist()) == pytest.approx([2.5, 4.5])


def test_cosine_scores_and_scale():
    q = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    protos = torch.tensor([[1.0, 1.0], [0.0, 2.0], [3.0, 0.0]])
    s = P.cosine_scores(q, protos, scale=20.0)
    assert s.shape == (1, 3, 1, 1)
    assert s.flatten().tolist() == pytest.approx([20 / math.sqrt(2), 0.0, 20.0], abs=1e-5)


def test_cosine_scores_of_zero_vector_are_zero_not_nan():
    q = torch.zeros(1, 2, 1, 1)
    s = P.cosine_scores(q, torch.tensor([[1.0, 0.0]]), scale=20.0)
    assert torch.isfinite(s).all() and s.abs().max() == 0


def test_softmax_pool_is_weighted_sum():
    s = torch.tensor([1.0, 3.0]).view(1, 2, 1, 1)
    expected = (math.exp(1) * 1 + math.exp(3) * 3) / (math.exp(1) + math.exp(3))
    assert P.softmax_pool(s).item() == pytest.approx(expected, rel=1e-6)


def test_pooled_cosine_by_hand_and_equal_to_the_two_step_form():
    # one query position [1, 0]; prototypes at 45 and 90 degrees and along it
    q = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    protos = torch.tensor([[1.0, 1.0], [0.0, 2.0], [3.0, 0.0]])
    s = [20 / math.sqrt(2), 0.0, 20.0]
    expected = sum(math.exp(x) * x for x in s) / sum(math.exp(x) for x in s)
    assert P.pooled_cosine(q, protos, 20.0).item() == pytest.approx(expected, rel=1e-6)
    # shared [K,C] and per-query [B,K,C] prototypes, against softmax_pool(cosine_scores(...))
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 8, 5, 6, generator=g)
    for protos in (torch.randn(7, 8, generator=g), torch.randn(3, 7, 8, generator=g)):
        two_step = P.softmax_pool(P.cosine_scores(q, protos, 20.0))
        fused = P.pooled_cosine(q, protos, 20.0)
        assert fused.shape == (3, 1, 5, 6)
        assert torch.allclose(fused, two_step, atol=1e-4)


def test_resize_mask_bilinear_point_sampling():
    m = torch.zeros(1, 8, 8)
    m[:, :4] = 1
    r = P.resize_mask(m, (2, 2))
    assert r.shape == (1, 1, 2, 2)
    assert r[0, 0, 0].tolist() == [1.0, 1.0] and r[0, 0, 1].tolist() == [0.0, 0.0]


def test_segmentation_loss_weights():
    logits = torch.zeros(1, 2, 1, 2)  # p = 0.5 everywhere -> CE = ln 2 per pixel
    target = torch.tensor([[[0, 1]]])
    loss = P.segmentation_loss(logits, target, bg_weight=0.05, fg_weight=1.0)
    # weighted mean: (0.05 ln2 + 1 ln2) / (0.05 + 1) = ln 2
    assert loss.item() == pytest.approx(math.log(2), rel=1e-6)
    target = torch.tensor([[[0, 255]]])
    assert P.segmentation_loss(logits, target, 0.05, 1.0).item() == pytest.approx(math.log(2), rel=1e-6)


def test_foreground_is_the_argmax_prediction_with_ties_to_background():
    scores = torch.tensor([[[[0.2, 0.9, 0.5, -1.0]], [[0.8, 0.1, 0.5, float("-inf")]]]])  # [1, 2, 1, 4]
    fg = P.foreground(scores)
    assert fg.shape == (1, 1, 1, 4) and fg.dtype == torch.bool
    assert fg.flatten().tolist() == [True, False, False, False]  # the tie (0.5, 0.5) is background
    g = torch.Generator().manual_seed(0)
    many = torch.randn(3, 2, 16, 16, generator=g)
    assert torch.equal(P.foreground(many)[:, 0], many.argmax(dim=1) == 1)
