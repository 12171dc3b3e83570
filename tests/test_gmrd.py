"""GMRD: edge bands, the random region filling, descriptor generation and matching against
hand computations (numpy loops), the descriptor losses, the empty-support fallback,
a training step on small_cnn and determinism (fsmis.models.gmrd docstring)."""

import numpy as np
import pytest
import torch
from torch import nn

from fsmis.models.gmrd import (
    GMRD,
    GMRDParams,
    descriptor_losses,
    dilate,
    erode,
    fill_index,
    inner_edge,
    outer_edge,
)
from fsmis.models.lineage import LineageSegmenter

EPS = np.finfo(np.float32).eps


class ImageFeatures(nn.Module):
    """A lineage 'backbone' whose features are the image and t the image mean."""

    out_channels, stride = 3, 1

    def forward(self, x):
        return x, x.mean(dim=(1, 2, 3))[:, None]


def _tiny(size=8, k_fg=3, k_bg=4, **kw):
    return GMRD(ImageFeatures(), GMRDParams(image_size=size, fg_descriptors=k_fg, bg_descriptors=k_bg, **kw))


def _reverse_sampler(m, k):
    """Deterministic stand-in for the random draw: m-1, m-2, ..."""
    return torch.arange(m - 1, m - 1 - k, -1)


def _np_morph(mask, iterations, op):
    out = mask.copy()
    h, w = out.shape
    for _ in range(iterations):
        prev = out.copy()
        for i in range(h):
            for j in range(w):
                out[i, j] = op(prev[max(i - 1, 0):i + 2, max(j - 1, 0):j + 2])
    return out


def _np_upsample(f, size):
    """Bilinear, align_corners=True, on [C,h,w] with numpy loops."""
    c, h, w = f.shape
    out = np.zeros((c, size, size))
    for i in range(size):
        y = i * (h - 1) / (size - 1)
        y0 = int(np.floor(y))
        y1, wy = min(y0 + 1, h - 1), y - y0
        for j in range(size):
            x = j * (w - 1) / (size - 1)
            x0 = int(np.floor(x))
            x1, wx = min(x0 + 1, w - 1), x - x0
            out[:, i, j] = ((1 - wy) * (1 - wx) * f[:, y0, x0] + (1 - wy) * wx * f[:, y0, x1]
                            + wy * (1 - wx) * f[:, y1, x0] + wy * wx * f[:, y1, x1])
    return out


def _np_fill(up, region):
    """The reference's region filling with the reverse sampler, by hand."""
    c = up.shape[0]
    flat = up.reshape(c, -1)
    reg = region.reshape(-1)
    inside = [i for i in range(reg.size) if reg[i]]
    holes = [i for i in range(reg.size) if not reg[i]]
    m, n = len(inside), len(holes)
    if m >= n:
        pick = [m - 1 - i for i in range(n)]
    else:
        pick = [m - 1 - i for i in range(n % m)] + list(range(m)) * (n // m)
    out = flat.copy()
    for hole, p in zip(holes, pick):
        out[:, hole] = flat[:, inside[p]]
    return out


def _np_map(up, weights):
    return (up * weights).sum(axis=(1, 2)) / (weights.sum() + 1e-5)


# -- edges ------------------------------------------------------------------------------


def test_erode_and_dilate_match_opencv_border_semantics():
    rng = np.random.default_rng(0)
    mask = (rng.random((9, 11)) > 0.35).astype(np.float32)
    t = torch.from_numpy(mask)[None, None]
    assert np.array_equal(erode(t, 2)[0, 0].numpy(), _np_morph(mask, 2, np.min))
    assert np.array_equal(dilate(t, 2)[0, 0].numpy(), _np_morph(mask, 2, np.max))
    top = torch.zeros(1, 1, 6, 6)
    top[..., :3, :] = 1  # foreground touching the border: pixels outside the image do not erode it
    assert torch.equal(erode(top, 1)[0, 0, :, 0], torch.tensor([1.0, 1, 0, 0, 0, 0]))
    assert float(dilate(torch.zeros(1, 1, 4, 4), 2).sum()) == 0.0  # nor dilate into it


def test_edge_bands_by_hand():
    mask = torch.zeros(1, 1, 12, 12)
    mask[..., 3:9, 2:10] = 1  # 6 x 8 block
    inner = inner_edge(mask, 2)[0, 0]
    expect_inner = torch.zeros(12, 12)
    expect_inner[3:9, 2:10] = 1
    expect_inner[5:7, 4:8] = 0  # two pixels eroded from every side
    assert torch.equal(inner, expect_inner)
    band = outer_edge(mask, 2, "band")[0, 0]
    expect_band = torch.zeros(12, 12)
    expect_band[1:11, 0:12] = 1
    expect_band[3:9, 2:10] = 0
    assert torch.equal(band, expect_band)
    # the reference's dilate(1 - mask) - mask: 1 on the background, 0 on the inner band, -1 inside
    ref = outer_edge(mask, 2, "reference")[0, 0]
    expect_ref = 1.0 - mask[0, 0] - (mask[0, 0] - expect_inner)
    assert torch.equal(ref, expect_ref)
    assert set(ref.unique().tolist()) == {-1.0, 0.0, 1.0}


# -- filling ------------------------------------------------------------------------------


def test_fill_index_draws_then_tiles_as_the_reference():
    region = torch.tensor([0, 1, 0, 0, 1, 0, 0], dtype=torch.bool)  # m = 2 inside, n = 5 holes
    src = fill_index(region, _reverse_sampler)
    # holes 0,2,3,5,6 get: 5 % 2 = 1 drawn (inside[1] = 4), then the region tiled twice (1, 4, 1, 4)
    assert src.tolist() == [4, 1, 1, 4, 4, 1, 4]
    many = torch.tensor([1, 1, 0, 1, 1, 0], dtype=torch.bool)  # m = 4 >= n = 2: distinct draws
    assert fill_index(many, _reverse_sampler).tolist() == [0, 1, 4, 3, 4, 3]
    assert fill_index(torch.zeros(5, dtype=torch.bool), _reverse_sampler) is None
    assert fill_index(torch.ones(4, dtype=torch.bool), _reverse_sampler).tolist() == [0, 1, 2, 3]
    drawn = fill_index(torch.tensor([1] * 6 + [0] * 3, dtype=torch.bool), GMRD.sample_indices)
    assert len(set(drawn[6:].tolist())) == 3 and set(drawn[6:].tolist()) <= set(range(6))  # without replacement


# -- descriptors ------------------------------------------------------------------------------


def test_descriptors_against_hand_computation():
    torch.manual_seed(0)
    net = _tiny(size=8, k_fg=3, k_bg=4, outer_edge="band").eval()
    net.sample_indices = _reverse_sampler
    feats = torch.randn(1, 3, 4, 4)
    packed = LineageSegmenter.pack(feats, torch.zeros(1, 1))
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:7, 1:5] = 1
    state = net.support_state(packed, mask)
    assert state["fg"].shape == (5, 3) and state["bg"].shape == (6, 3)

    up = _np_upsample(feats[0].double().numpy(), 8)
    m = mask[0, 0].numpy().astype(bool)
    for key, region, mlp, edge in (
        ("fg", m, net.fg_mlp, m.astype(float) - _np_morph(m.astype(float), 2, np.min)),
        ("bg", ~m, net.bg_mlp, _np_morph(m.astype(float), 2, np.max) - m.astype(float)),
    ):
        filled = _np_fill(up, region)
        w1, b1 = mlp.reduce[0].weight.double().detach().numpy(), mlp.reduce[0].bias.double().detach().numpy()
        w2, b2 = mlp.reduce[2].weight.double().detach().numpy(), mlp.reduce[2].bias.double().detach().numpy()
        learned = ((filled @ w1.T + b1) @ w2.T + b2).T  # MLP over the 64 pixels of each channel
        expect = np.vstack([learned, _np_map(up, region.astype(float)), _np_map(up, edge)])
        np.testing.assert_allclose(state[key].double().detach().numpy(), expect, rtol=1e-4, atol=1e-5)
    # all foreground: the background is all zeros before the MLP (bias only), its averages are 0
    full = net.support_state(packed, torch.ones(1, 1, 8, 8))["bg"].detach()
    lin1, lin2 = net.bg_mlp.reduce[0], net.bg_mlp.reduce[2]
    bias_only = (lin2.weight @ lin1.bias + lin2.bias).detach()
    assert torch.allclose(full[:-2], bias_only[:, None].expand(4, 3), atol=1e-6)
    assert float(full[-2:].abs().max()) == 0.0


def test_matching_feeds_cosine_maps_to_the_decoders_and_softmaxes_upsampled_logits():
    torch.manual_seed(1)
    net = _tiny(size=8, k_fg=3, k_bg=4).eval()
    q = torch.randn(1, 3, 4, 4)
    packed = LineageSegmenter.pack(q, torch.zeros(1, 1))
    state = {"fg": torch.randn(5, 3), "bg": torch.randn(6, 3)}
    seen = {}
    net.fg_decoder.register_forward_hook(lambda mod, inp, out: seen.update(fg_in=inp[0], fg_out=out))
    net.bg_decoder.register_forward_hook(lambda mod, inp, out: seen.update(bg_in=inp[0], bg_out=out))
    with torch.no_grad():
        logits = net.predict(packed, state, (8, 8))
    qn = q[0].numpy()
    for key in ("fg", "bg"):
        d = state[key].numpy()
        cos = np.einsum("chw,kc->khw", qn / np.linalg.norm(qn, axis=0), d / np.linalg.norm(d, axis=1)[:, None])
        np.testing.assert_allclose(seen[f"{key}_in"][0].numpy(), cos, rtol=1e-5, atol=1e-6)
    raw = np.concatenate([seen["bg_out"][0].numpy(), seen["fg_out"][0].numpy()])  # [2, 4, 4]
    up = _np_upsample(raw, 8)
    prob = np.exp(up) / np.exp(up).sum(0, keepdims=True)
    np.testing.assert_allclose(logits[0].numpy(), np.log(np.clip(prob, EPS, 1 - EPS)), rtol=1e-5, atol=1e-5)


def test_descriptor_losses_by_hand():
    rng = np.random.default_rng(3)
    s_fg, q_fg, s_bg, q_bg = (rng.normal(size=(n, 4)) for n in (5, 5, 6, 6))

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def intra(s, q):
        s, q = unit(s), unit(q)
        vals = [max(s[i] @ q[j] for j in range(len(q) - 2)) for i in range(len(s) - 2)]
        return np.mean(vals + [s[-2] @ q[-2], s[-1] @ q[-1]])

    inter = max(0.0, np.mean(unit(s_fg) @ unit(s_bg).T)) + max(0.0, np.mean(unit(q_fg) @ unit(q_bg).T))
    expect = 2 - intra(s_fg, q_fg) - intra(s_bg, q_bg) + inter
    got = descriptor_losses(*(torch.tensor(x, dtype=torch.float32) for x in (s_fg, q_fg, s_bg, q_bg)))
    assert float(got) == pytest.approx(expect, rel=1e-5)
    same = torch.tensor(s_fg, dtype=torch.float32)
    opposite = descriptor_losses(same, same, -same, -same)  # intra 0; inter relu(<0) = 0
    assert float(opposite) == pytest.approx(0.0, abs=1e-5)


def test_empty_support_falls_back_to_the_lineage_head():
    net = _tiny(size=8).eval()
    q = torch.randn(2, 3, 8, 8)
    t = torch.tensor([[0.7], [-1.3]])
    state = net.support_state(LineageSegmenter.pack(torch.randn(1, 3, 8, 8), torch.zeros(1, 1)),
                              torch.zeros(1, 1, 8, 8))
    assert set(state) == {"fallback"} and float(state["fallback"].abs().sum()) == 0.0
    logits = net.predict(LineageSegmenter.pack(q, t), state, (8, 8))
    p = 1.0 - torch.sigmoid(0.5 * (0.0 - t))  # cos with the zero prototype is 0
    assert torch.allclose(logits[:, 1], torch.log(p)[..., None].expand(2, 8, 8), atol=1e-6)
    assert torch.allclose(logits[:, 0], torch.log(1 - p)[..., None].expand(2, 8, 8), atol=1e-6)


def test_support_mask_must_be_at_the_image_size():
    net = _tiny(size=8)
    with pytest.raises(ValueError, match="image_size"):
        net.support_state(LineageSegmenter.pack(torch.randn(1, 3, 4, 4), torch.zeros(1, 1)), torch.ones(1, 1, 4, 4))


# -- training ------------------------------------------------------------------------------


def _small(seed=0, **kw):
    torch.manual_seed(seed)
    backbone = GMRD.build_backbone({"backbone": "small_cnn", "feature_dim": 16})
    return GMRD(backbone, GMRDParams(image_size=16, fg_descriptors=4, bg_descriptors=6, **kw))


def _episode():
    g = torch.Generator().manual_seed(5)
    sup, qry = torch.randn(1, 3, 16, 16, generator=g), torch.randn(1, 3, 16, 16, generator=g)
    fg = torch.zeros(1, 16, 16)
    fg[:, 4:11, 3:10] = 1
    return sup, fg, qry


def test_training_step_reaches_every_parameter():
    net = _small(aux_weight=0.5).train()
    sup, fg, qry = _episode()
    calls = []
    plain = net.encode
    net.encode = lambda x: calls.append(x.shape) or plain(x)  # as the trainer's precision wrapper does
    logits, losses = net(sup, fg, qry)
    assert calls == [(2, 3, 16, 16)]  # support and query through encode, as one batch
    assert logits.shape == (1, 2, 16, 16) and set(losses) == {"align", "aux"}
    assert torch.allclose(logits.exp().sum(1), torch.ones(1, 16, 16), atol=1e-5)  # log-probabilities
    label = torch.zeros(1, 16, 16, dtype=torch.long)
    label[:, 5:12, 4:11] = 1
    weight = torch.tensor(net.query_loss_weights({}))
    (nn.functional.nll_loss(logits, label, weight=weight) + losses["align"] + losses["aux"]).backward()
    no_grad = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == ["backbone.threshold.weight", "backbone.threshold.bias"]  # t only feeds the fallback
    # an empty support uses the lineage head: the threshold gets its gradient there
    net.zero_grad()
    logits, losses = net(sup, torch.zeros_like(fg), qry)
    nn.functional.nll_loss(logits, label, weight=weight).backward()
    assert net.backbone.threshold.weight.grad.abs().sum() > 0


def test_alignment_uses_query_descriptors_on_the_support():
    net = _small().eval()  # no dropout: the two passes below see the same modules
    net.sample_indices = _reverse_sampler
    sup, fg, qry = _episode()
    with torch.no_grad():
        packed = net.encode(torch.cat([sup, qry]))
        pred = torch.zeros(1, 1, 16, 16)
        pred[..., 6:13, 2:9] = 1  # a query prediction, as logits
        logits = torch.cat([1 - 2 * pred, 2 * pred - 1], dim=1)
        back = net.predict(packed[:1], net.support_state(packed[1:], pred), (16, 16))
        align = net.alignment_loss(logits, packed[1:], packed[:1], fg)
    assert float(align) == pytest.approx(float(nn.functional.nll_loss(back, fg.long())), rel=1e-6)
    none = torch.stack([torch.zeros(16, 16), -torch.ones(16, 16)])[None]  # no predicted foreground
    assert float(net.alignment_loss(none, packed[1:], packed[:1], fg)) == 0.0


def test_same_seed_same_step_other_seed_other_descriptors():
    sup, fg, qry = _episode()
    runs = []
    for seed in (7, 7, 8):
        net = _small(seed=0).train()
        torch.manual_seed(seed)
        logits, losses = net(sup, fg, qry)
        runs.append((logits.detach(), losses["align"].detach()))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][0], runs[2][0])  # other random filling and dropout


def test_params_defaults_are_the_current_reference():
    p = GMRDParams()
    assert (p.fg_descriptors, p.bg_descriptors, p.image_size, p.bg_weight) == (100, 600, 256, 0.1)
    assert (p.mlp_relu, p.aux_weight, p.outer_edge) == (False, 0.0, "band")
    with pytest.raises(ValueError, match="outer_edge"):
        GMRDParams.from_dict({"outer_edge": "ring"}, "gmrd")
    net = GMRD(ImageFeatures(), GMRDParams(image_size=4, fg_descriptors=2, bg_descriptors=3, mlp_relu=True))
    assert isinstance(net.fg_mlp.reduce[2], nn.ReLU) and net.fg_mlp.reduce[3].out_features == 2
