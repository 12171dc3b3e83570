"""ADNet: each operator against a hand computation (numpy loops) on tiny tensors, the
logits contract, the evaluation path, a training step with the small backbone and
determinism."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from fsmis import train as training_loop
from fsmis.models import prototypes as P
from fsmis.models.adnet import ADNet, ADNetParams
from fsmis.models.lineage import PROB_EPS as EPS
from fsmis.models.lineage import lineage_prediction, probability_logits


class Identity(nn.Module):
    """A 'backbone' that returns its input: features are set by hand."""

    def __init__(self, channels=3):
        super().__init__()
        self.out_channels, self.stride = channels, 1

    def forward(self, x):
        return x


def _linear_weights(n_in, n_out, align_corners):
    """Hand-written 1-D linear interpolation: ``[n_out, n_in]`` weights (PyTorch's
    source-index rule, clamped at the borders)."""
    w = np.zeros((n_out, n_in))
    for x in range(n_out):
        if align_corners:
            src = x * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        else:
            src = max((x + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(math.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        lam = src - i0
        w[x, i0] += 1 - lam
        w[x, i1] += lam
    return w


def _upsample(a, size, align_corners):
    """Bilinear upsampling of ``a [..., h, w]`` by explicit loops over output pixels."""
    h, w = a.shape[-2:]
    wy, wx = _linear_weights(h, size[0], align_corners), _linear_weights(w, size[1], align_corners)
    out = np.zeros(a.shape[:-2] + tuple(size))
    for y in range(size[0]):
        for x in range(size[1]):
            out[..., y, x] = sum(wy[y, i] * wx[x, j] * a[..., i, j] for i in range(h) for j in range(w))
    return out


def _cos_map(feats, proto):
    """Cosine of every position of ``feats [C,h,w]`` with ``proto [C]``, by loops."""
    c, h, w = feats.shape
    out = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            v = feats[:, y, x]
            out[y, x] = v @ proto / (np.linalg.norm(v) * np.linalg.norm(proto))
    return out


def _prob(feats, proto, t, scale=20.0):
    s = -scale * _cos_map(feats, proto)
    return 1.0 - 1.0 / (1.0 + np.exp(-0.5 * (s - t)))


def _rect(shape, y0, y1, x0, x1):
    m = torch.zeros(shape)
    m[..., y0:y1, x0:x1] = 1
    return m


# -- prototype ---------------------------------------------------------------------------

@pytest.mark.parametrize("grid,size", [((4, 4), (16, 16)), ((3, 5), (7, 12))])
def test_prototype_equals_pooling_the_upsampled_features(grid, size):
    """The reference upsamples the features (align_corners=False) and pools with the
    image mask; ours pools on the grid with U^T m: the same number."""
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(1, 3, *grid, generator=g, dtype=torch.float64).float()
    mask = (torch.rand(1, *size, generator=g) > 0.6).float()
    up = _upsample(feats.numpy()[0], size, align_corners=False)  # [C, H, W]
    m = mask.numpy()[0]
    expected = (up * m).sum(axis=(1, 2)) / (m.sum() + 1e-5)
    net = ADNet(Identity())
    got = net.support_from_mask(feats, mask)
    assert got.shape == (1, 3)
    np.testing.assert_allclose(got[0].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_upsampled_pooling_differs_from_the_grid_pooling_and_the_option_selects_it():
    feats = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    mask = _rect((1, 16, 16), 0, 5, 0, 5)  # an edge inside a cell
    up = ADNet(Identity()).support_from_mask(feats, mask)
    grid_net = ADNet.from_keywords(Identity(), prototype_pooling="grid")
    grid = grid_net.support_from_mask(feats, mask)
    assert torch.allclose(grid, P.masked_average(feats, P.resize_mask(mask, (4, 4))))
    assert (up - grid).abs().max() > 1e-2
    # a hand value: with a 16 x 16 mask covering rows/cols 0..4 at scale 4, the weight of a
    # feature cell is the sum of its interpolation weights over those pixels (U^T m)
    wy = _linear_weights(4, 16, False)[:5].sum(axis=0)
    weights = np.outer(wy, wy)
    expected = (feats[0].numpy() * weights).sum(axis=(1, 2)) / (25 + 1e-5)
    np.testing.assert_allclose(up[0].numpy(), expected, rtol=1e-5, atol=1e-6)


# -- anomaly score, probability, logits ----------------------------------------------------

def test_probability_against_hand_computation():
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(2, 4, 3, 3, generator=g)
    proto = torch.randn(1, 4, generator=g)
    net = ADNet(Identity(4))
    with torch.no_grad():
        net.t.fill_(-7.5)
        p = net.probability(feats, proto)
    assert p.shape == (2, 1, 3, 3)
    for b in range(2):
        np.testing.assert_allclose(p[b, 0].numpy(), _prob(feats[b].numpy(), proto[0].numpy(), -7.5), atol=1e-6)
    # the operator itself: 1 - sigmoid(slope (S - T)); float32 rounds 1 - sigmoid(15) (3.06e-7) to a
    # multiple of 2^-24 as the reference does, hence the absolute tolerance
    s, t = torch.tensor([-20.0, 0.0, 20.0]), torch.tensor([-10.0])
    exact = [1 - 1 / (1 + math.exp(-x)) for x in (-5.0, 5.0, 15.0)]
    np.testing.assert_allclose(lineage_prediction(s, t).numpy(), exact, rtol=1e-6, atol=1e-7)


def test_logits_softmax_to_one_minus_p_and_p_and_clamp_like_the_reference():
    p = torch.tensor([0.0, 1e-9, 0.25, 0.5, 0.9, 1.0]).reshape(1, 1, 1, 6)
    logits = probability_logits(p)
    assert logits.shape == (1, 2, 1, 6)
    clamp = np.clip(np.stack([1 - p.numpy()[0, 0, 0], p.numpy()[0, 0, 0]]), EPS, 1 - EPS)
    np.testing.assert_allclose(logits[0, :, 0].numpy(), np.log(clamp), rtol=1e-6)
    soft = torch.softmax(logits, dim=1)[0, :, 0]
    np.testing.assert_allclose(soft[1].numpy(), [EPS, EPS, 0.25, 0.5, 0.9, 1 - EPS], rtol=1e-5)
    # prediction p > 0.5; a tie is background, as the reference's argmax
    assert P.foreground(logits)[0, 0, 0].tolist() == [False, False, False, False, True, True]


def test_predict_upsamples_p_with_align_corners_then_takes_logits():
    g = torch.Generator().manual_seed(4)
    feats = torch.randn(1, 3, 3, 4, generator=g)
    proto = torch.randn(1, 3, generator=g)
    net = ADNet(Identity()).eval()
    logits = net.predict(feats, proto, (7, 9))
    p = _prob(feats[0].numpy(), proto[0].numpy(), -10.0)
    p_up = _upsample(p, (7, 9), align_corners=True)
    np.testing.assert_allclose(torch.softmax(logits, 1)[0, 1].detach().numpy(), p_up, atol=1e-6)
    assert torch.equal(net.score(feats, proto), probability_logits(net.probability(feats, proto)))


# -- losses --------------------------------------------------------------------------------

def _hand_alignment(qry, pred_p, sup, sup_mask, t):
    """The reference's alignLoss written out: query argmax -> prototype -> support NLL."""
    fg = pred_p > 1 - pred_p  # [B, h, w]
    proto = (qry * fg[:, None]).sum(axis=(0, 2, 3)) / (fg.sum() + 1e-5)
    p_s = _prob(sup[0], proto, t)
    p_up = _upsample(p_s, sup_mask.shape, align_corners=True)
    probs = np.clip(np.stack([1 - p_up, p_up]), EPS, 1 - EPS)
    m = sup_mask.astype(int)
    return -np.mean(np.log(np.where(m == 1, probs[1], probs[0])))


def test_alignment_loss_against_hand_computation():
    g = torch.Generator().manual_seed(5)
    qry = torch.randn(1, 3, 4, 4, generator=g)
    sup = torch.randn(1, 3, 4, 4, generator=g)
    sup_mask = _rect((1, 8, 8), 1, 5, 2, 7)
    net = ADNet(Identity()).train()
    with torch.no_grad():
        net.t.fill_(-3.0)  # a threshold that predicts part of the query
    proto = net.support_from_mask(sup, sup_mask)
    p = net.probability(qry, proto)
    pred = p.detach().numpy()[:, 0]
    assert 0 < (pred > 0.5).sum() < pred.size
    got = net.alignment_loss(probability_logits(p), qry, sup, sup_mask)
    expected = _hand_alignment(qry.numpy(), pred, sup.numpy(), sup_mask.numpy()[0], -3.0)
    assert got.requires_grad
    assert float(got.detach()) == pytest.approx(expected, rel=1e-5)


def test_alignment_loss_is_zero_without_predicted_foreground():
    net = ADNet(Identity()).train()
    qry, sup = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    logits = probability_logits(torch.full((1, 1, 4, 4), 0.2))
    loss = net.alignment_loss(logits, qry, sup, _rect((1, 8, 8), 0, 4, 0, 4))
    assert float(loss) == 0.0 and not loss.requires_grad


def test_forward_returns_threshold_loss_and_query_weights():
    net = ADNet.from_keywords(Identity(), t_loss_scaler=2.0, threshold_init=-6.0).train()
    sup, qry = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    logits, losses = net(sup, _rect((1, 4, 4), 0, 2, 0, 2), qry)
    assert logits.shape == (1, 2, 4, 4)
    assert float(losses["threshold"].detach()) == pytest.approx(2.0 * -6.0 / 20.0)
    assert set(losses) == {"threshold", "align"}
    assert net.query_loss_weights({"bg_weight": 0.05, "fg_weight": 1.0}) == (0.1, 1.0)
    assert ADNetParams().bg_weight == 0.1 and ADNetParams().threshold_init == -10.0
    assert net(sup, _rect((1, 4, 4), 0, 2, 0, 2), qry)[1]["threshold"].shape == ()
    assert net.eval()(sup, _rect((1, 4, 4), 0, 2, 0, 2), qry)[1] == {}


def test_query_loss_is_the_references_weighted_nll():
    """The trainer's weighted cross-entropy of our logits = NLL of log(clamp(1-p, p))."""
    g = torch.Generator().manual_seed(6)
    p = torch.rand(1, 1, 5, 5, generator=g)
    p[0, 0, 0, :2] = torch.tensor([0.0, 1.0])
    label = (torch.rand(1, 5, 5, generator=g) > 0.5).float()
    ours = P.segmentation_loss(probability_logits(p), label, 0.1, 1.0)
    probs = np.clip(np.concatenate([1 - p.numpy(), p.numpy()], 1)[0], EPS, 1 - EPS)
    y = label.numpy()[0].astype(int)
    w = np.where(y == 1, 1.0, 0.1)
    nll = -(w * np.log(np.where(y == 1, probs[1], probs[0]))).sum() / w.sum()
    assert float(ours) == pytest.approx(nll, rel=1e-6)


# -- evaluation path, training step, determinism ------------------------------------------

def test_cached_evaluation_equals_the_forward_in_eval_mode():
    torch.manual_seed(7)
    net = ADNet(ADNet.build_backbone({"backbone": "small_cnn", "feature_dim": 16})).eval()
    sup, qry = torch.randn(1, 3, 32, 32), torch.randn(2, 3, 32, 32)
    fg = _rect((1, 32, 32), 8, 20, 6, 22)
    with torch.no_grad():
        logits, losses = net(sup, fg, qry)
        cached = net.predict(net.encode(qry), net.prepare_support(sup, fg), (32, 32))
    assert losses == {}
    assert torch.allclose(logits, cached, atol=1e-5)


def _episode(size, seed):
    g = torch.Generator().manual_seed(seed)
    fg = _rect((1, size, size), size // 4, 3 * size // 4, size // 4, 5 * size // 8)
    return {"sup_img": torch.randn(1, 3, size, size, generator=g), "sup_fg": fg,
            "qry_img": torch.randn(1, 3, size, size, generator=g),
            "qry_label": _rect((1, size, size), size // 4 + 2, 3 * size // 4, size // 4, 5 * size // 8 + 2)}


def _trained_step(seed=8):
    torch.manual_seed(seed)
    net = ADNet(ADNet.build_backbone({"backbone": "small_cnn", "feature_dim": 16})).train()
    opt, _ = training_loop.make_optimizer(net, {"lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4,
                                                "lr_step": 1000, "lr_gamma": 0.95, "steps": 10})
    cfg = {"bg_weight": 0.05, "fg_weight": 1.0, "align_weight": 1.0}
    with torch.no_grad():
        net.t.fill_(-2.0)  # predicted foreground in the query: the alignment term is live
    losses = training_loop.training_step(net, _episode(64, seed), cfg, opt)
    return net, losses


def test_training_step_with_small_cnn_reaches_the_threshold():
    net, losses = _trained_step()
    assert all(torch.isfinite(v) for v in losses.values())
    assert float(losses["align_loss"]) > 0
    assert float(losses["other_loss"]) == pytest.approx(-2.0 / 20.0)  # the threshold loss
    assert net.t.grad is not None and float(net.t.grad.abs()) > 0
    assert float(net.t.detach()) != -2.0
    assert all(p.grad is not None for p in net.backbone.parameters())


def test_training_is_deterministic():
    a, la = _trained_step(9)
    b, lb = _trained_step(9)
    assert all(torch.equal(la[k], lb[k]) for k in la)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
