"""CAT-Net: the attention, prior and refinement operators against explicit numpy
computations on tiny tensors, the reference's behaviours and the options that fix its
defects (fsmis.models.catnet docstring), shapes, a training step, determinism."""

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fsmis.models import backbones
from fsmis.models.catnet import (
    AttentionLayer,
    CATNet,
    CATNetParams,
    attention,
    correlation_prior,
    prior_support,
    refine_prototype,
)
from fsmis.models.lineage import lineage_prediction, similarity


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: a thread pool only adds overhead (~70x for small_cnn at 64 px on a busy
    2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _net(seed=0, size=64, **params):
    """small_cnn (stride 4): a ``size`` image gives a ``size/4`` grid."""
    torch.manual_seed(seed)
    return CATNet(backbones.build("small_cnn", feature_dim=16), CATNetParams(grid=size // 4, **params))


def _episode(size=64, n_query=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    m = torch.zeros(1, size, size)
    m[:, size // 4:size * 3 // 4, size // 5:size * 3 // 5] = 1
    return torch.randn(1, 3, size, size, generator=g), m, torch.randn(n_query, 3, size, size, generator=g)


# -- attention ----------------------------------------------------------------------------------------------------

def _np_attention(q, k, v, over, mask=None):
    """out[b, c, i] = sum_j a[b, i, j] v[b, c, j], written with loops."""
    b, n, _ = q.shape
    m = k.shape[-1]
    logits = np.einsum("bnd,bdm->bnm", q, k)
    if mask is not None:
        logits = np.where(mask[:, None, :], logits, -np.inf)
    a = _softmax(logits, axis=2 if over == "keys" else 1)
    out = np.zeros((b, v.shape[1], n))
    for bb in range(b):
        for i in range(n):
            for j in range(m):
                out[bb, :, i] += a[bb, i, j] * v[bb, :, j]
    return out, a


@pytest.mark.parametrize("over", ["keys", "queries"])
def test_attention_matches_loops(over):
    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(2, 5, 3)), rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 6, 4))
    got = attention(*(torch.tensor(x) for x in (q, k, v)), softmax_over=over)
    want, a = _np_attention(q, k, v, over)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)
    # keys: each output position's weights sum to 1; queries (the reference's SelfAttention): each key's do
    np.testing.assert_allclose(a.sum(axis=2 if over == "keys" else 1), 1.0)
    assert not np.allclose(a.sum(axis=1 if over == "keys" else 2), 1.0)


def test_attention_key_mask_gives_masked_keys_zero_weight():
    rng = np.random.default_rng(1)
    q, k = rng.normal(size=(1, 3, 2)), rng.normal(size=(1, 2, 5))
    mask = np.array([[True, False, True, False, False]])
    # one-hot values: the output is the weight matrix itself, out[0, j, i] = a[i, j]
    weights = attention(torch.tensor(q), torch.tensor(k), torch.eye(5, dtype=torch.float64)[None],
                        key_mask=torch.tensor(mask))[0].T.numpy()
    assert np.all(weights[:, ~mask[0]] == 0)
    np.testing.assert_allclose(weights.sum(1), 1.0)
    _, a = _np_attention(q, k, np.eye(5)[None], "keys", mask)
    np.testing.assert_allclose(weights, a[0], rtol=1e-12)
    # the kept keys' weights: a softmax over those keys only
    logits = q[0] @ k[0][:, mask[0]]
    np.testing.assert_allclose(weights[:, mask[0]], _softmax(logits, 1), rtol=1e-12)
    with pytest.raises(ValueError, match="over the keys"):
        attention(torch.tensor(q), torch.tensor(k), torch.eye(5, dtype=torch.float64)[None], "queries",
                  torch.tensor(mask))


def test_attention_layer_matches_explicit_computation():
    torch.manual_seed(0)
    c, g = 8, 2
    layer = AttentionLayer(c, g, "keys").double()
    with torch.no_grad():  # a LayerNorm affine that is not the identity
        layer.norm.weight.normal_()
        layer.norm.bias.normal_()
    x, y = torch.randn(2, c, g, g, dtype=torch.float64), torch.randn(2, c, g, g, dtype=torch.float64)
    got = layer(x, layer.keys_values(y)).detach().numpy()

    def conv(mod, t):  # 1x1 conv on [C, n]
        return mod.weight[:, :, 0, 0].detach().numpy() @ t + mod.bias.detach().numpy()[:, None]

    lin = [layer.mlp[0], layer.mlp[2]]
    for b in range(2):
        xs, ys = x[b].reshape(c, -1).numpy(), y[b].reshape(c, -1).numpy()
        q = conv(layer.query, xs).T * (c // 8) ** -0.5  # [n, 1]
        a = _softmax(q @ conv(layer.key, ys), axis=1)  # [n, m], over the keys
        out = conv(layer.value, ys) @ a.T  # [C, n]
        h = np.maximum(lin[0].weight.detach().numpy() @ out + lin[0].bias.detach().numpy()[:, None], 0)
        out = lin[1].weight.detach().numpy() @ h + lin[1].bias.detach().numpy()[:, None]
        norm = (out - out.mean()) / np.sqrt(out.var() + layer.norm.eps)  # over all of C x h x w
        want = norm.reshape(c, g, g) * layer.norm.weight.detach().numpy() + layer.norm.bias.detach().numpy()
        np.testing.assert_allclose(got[b], want, rtol=1e-9, atol=1e-10)


def test_attention_layer_ignores_masked_support_cells():
    torch.manual_seed(0)
    layer = AttentionLayer(8, 3)
    x, y = torch.randn(1, 8, 3, 3), torch.randn(1, 8, 3, 3)
    keep = torch.zeros(1, 9, dtype=torch.bool)
    keep[0, [0, 4, 5]] = True
    y2 = y.clone()
    y2.flatten(2)[:, :, ~keep[0]] = torch.randn(1, 8, 6) * 5  # change only the masked cells
    a = layer(x, layer.keys_values(y), keep)
    assert torch.allclose(a, layer(x, layer.keys_values(y2), keep), atol=1e-6)
    assert not torch.allclose(a, layer(x, layer.keys_values(y2)), atol=1e-3)


def test_attention_layer_refuses_another_grid():
    with pytest.raises(ValueError, match="grid"):
        AttentionLayer(8, 4)(torch.randn(1, 8, 3, 3))


# -- prior --------------------------------------------------------------------------------------------------------

def test_correlation_prior_matches_loops():
    rng = np.random.default_rng(2)
    sup, qry = rng.normal(size=(1, 4, 3, 3)), rng.normal(size=(2, 4, 3, 3))
    mask = np.zeros((1, 1, 3, 3))
    mask[..., :2, 1:] = 1
    got = correlation_prior(torch.tensor(qry), prior_support(torch.tensor(sup), torch.tensor(mask))).numpy()
    s = (sup * mask).reshape(4, 9)
    for b in range(2):
        q = qry[b].reshape(4, 9)
        best = np.array([max(s[:, j] @ q[:, i] / (np.linalg.norm(s[:, j]) * np.linalg.norm(q[:, i]) + 1e-7)
                             for j in range(9)) for i in range(9)])
        want = (best - best.min()) / (best.max() - best.min() + 1e-7)
        np.testing.assert_allclose(got[b, 0].ravel(), want, rtol=1e-9, atol=1e-12)
        assert got[b].min() == 0 and got[b].max() == pytest.approx(1.0, abs=1e-6)


def test_prior_pool_is_the_identity_at_the_channel_count_and_averages_neighbours_below():
    torch.manual_seed(0)
    sup, qry, mask = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3), torch.ones(1, 1, 3, 3)
    plain = correlation_prior(qry, prior_support(sup, mask))
    assert torch.allclose(correlation_prior(qry, prior_support(sup, mask, 4), pool=4), plain)
    # repeating channels (AdaptiveAvgPool1d up to 8) leaves cosines as they are: issue #3's 256 on 64 channels
    assert torch.allclose(correlation_prior(qry, prior_support(sup, mask, 8), pool=8), plain, atol=1e-6)
    pairs = correlation_prior(qry, prior_support(sup, mask, 2), pool=2)
    halve = lambda t: t.reshape(1, 2, 2, 3, 3).mean(2)  # noqa: E731
    assert torch.allclose(pairs, correlation_prior(halve(qry), prior_support(halve(sup), mask)), atol=1e-6)


# -- refinement ---------------------------------------------------------------------------------------------------

def _np_refine_loss(f, proto, fg):
    """The refinement's loss in numpy (one query): BCE(sig(mm(f)), sig(mm(replaced)))."""
    def norm(x):
        return 1 / (1 + np.exp(-(x - x.min()) / (x.max() - x.min())))
    x, y = norm(f), norm(np.where(fg, proto[:, None, None], f))
    return float(np.mean(-(y * np.log(x) + (1 - y) * np.log(1 - x))))


def test_refinement_first_step_is_adam_sign_step_of_the_bce_gradient():
    torch.manual_seed(0)
    f = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    proto = torch.randn(1, 3, dtype=torch.float64)
    pred = torch.full((1, 4, 4), 0.2, dtype=torch.float64)
    pred[0, 1:3, :2] = 0.9  # 4 foreground cells
    out = refine_prototype(f, proto, pred, lambda x, p: pred, iters=1, lr=0.01)
    fg = (pred[0] > 0.5).numpy()
    grad = np.zeros(3)
    for c in range(3):  # central differences of the numpy loss
        d = np.zeros(3)
        d[c] = 1e-6
        grad[c] = (_np_refine_loss(f[0].numpy(), proto[0].numpy() + d, fg)
                   - _np_refine_loss(f[0].numpy(), proto[0].numpy() - d, fg)) / 2e-6
    assert np.all(np.abs(grad) > 1e-6)
    # Adam's first step is lr * g / (|g| + eps): lr against the gradient's sign
    np.testing.assert_allclose(out[0].numpy(), proto[0].numpy() - 0.01 * np.sign(grad), rtol=0, atol=1e-7)


def test_refinement_batched_equals_one_query_at_a_time_and_keeps_an_unused_prototype():
    torch.manual_seed(0)
    f, proto, t = torch.randn(3, 4, 5, 5), torch.randn(1, 4), torch.tensor([[0.0]])

    def predict(x, p):
        return lineage_prediction(similarity(x, p), t)

    pred = predict(f, proto)
    together = refine_prototype(f, proto, pred, predict, 4, 0.05)
    alone = torch.cat([refine_prototype(f[[i]], proto, pred[[i]], predict, 4, 0.05) for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-6)
    assert not torch.allclose(together, proto.expand(3, -1), atol=1e-3)
    # no foreground predicted: nothing is replaced, the gradient is 0 and Adam does not move
    nothing = torch.zeros(3, 5, 5)
    kept = refine_prototype(f, proto, nothing, lambda x, p: nothing, 3, 0.05)
    assert torch.equal(kept, proto.expand(3, -1))


@torch.no_grad()
def _median_threshold(net, sup, m, qry, features):
    """t = the median anomaly score of ``features`` ("cross" or "fused"): about half
    of the query is predicted foreground."""
    state = net.support_from_mask(net.encode(sup), m)
    feats = net.query_pass(net.encode(qry), state)[features]
    net.t.fill_(float(similarity(feats, state["prototype"]).median()))


# -- the method ---------------------------------------------------------------------------------------------------

def test_trunk_is_the_projects_and_threshold_a_scalar():
    cfg = {"backbone": "small_cnn", "feature_dim": 16, "pretrained": None}
    assert isinstance(CATNet.build_backbone(cfg), backbones.SmallCNN)  # not the lineage's threshold head
    net = _net()
    assert net.t.shape == (1,) and float(net.t.detach()) == -10.0
    assert net.query_loss_weights({"bg_weight": 0.05, "fg_weight": 1.0}) == (0.1, 1.0)
    with pytest.raises(ValueError, match="output"):
        CATNetParams.from_dict({"output": "both"})


def test_shapes_and_cached_path_equal_forward():
    net = _net().eval()
    sup, m, qry = _episode()
    with torch.no_grad():
        logits, losses = net(sup, m, qry)
        state = net.support_from_mask(net.encode(sup), m)
        qf = net.encode(qry)
        assert logits.shape == (2, 2, 64, 64) and losses == {}
        assert net.score(qf, state).shape == (2, 2, 16, 16)
        assert torch.allclose(net.predict(qf, state, (64, 64)), logits, atol=1e-5)
    # softmax of the logits is (1 - p, p)
    p = net.probability(qf, state)
    assert torch.allclose(net.score(qf, state).softmax(1)[:, 1:], p, atol=1e-6)


def test_prediction_is_the_lineage_head_on_the_cross_attended_query():
    net = _net(refine_iters=0).eval()
    sup, m, qry = _episode()
    with torch.no_grad():
        state = net.support_from_mask(net.encode(sup), m)
        out = net.query_pass(net.encode(qry), state)
        cos = F.cosine_similarity(out["cross"], state["prototype"][..., None, None], dim=1)
        want = 1 - torch.sigmoid(0.5 * (-20 * cos - net.t))
        assert torch.allclose(out["cross_p"][:, 0], want, atol=1e-6)


def test_output_fused_ignores_cross_attention_and_refinement_as_the_reference():
    sup, m, qry = _episode()
    fused = _net(output="fused").eval()
    no_refine = _net(output="fused", refine_iters=0).eval()
    with torch.no_grad():
        a = fused(sup, m, qry)[0]
        assert torch.equal(a, no_refine(sup, m, qry)[0])
        for p in fused.cross_attention.parameters():
            p.add_(1.0)
        assert torch.equal(a, fused(sup, m, qry)[0])


def test_refinement_only_at_test_time():
    sup, m, qry = _episode()
    nets = {it: _net(refine_iters=it, refine_lr=0.5) for it in (0, 7)}
    for net in nets.values():
        _median_threshold(net.eval(), sup, m, qry, "cross")
    with torch.no_grad():
        train = [nets[it].train()(sup, m, qry)[0] for it in (0, 7)]
        test = [nets[it].eval()(sup, m, qry)[0] for it in (0, 7)]
    assert torch.equal(train[0], train[1])
    assert not torch.allclose(test[0], test[1], atol=1e-4)


def test_self_attention_softmax_option_changes_the_output():
    sup, m, qry = _episode()
    with torch.no_grad():
        a = _net(refine_iters=0).eval()(sup, m, qry)[0]
        b = _net(refine_iters=0, self_attention_softmax="queries").eval()(sup, m, qry)[0]
    assert not torch.allclose(a, b, atol=1e-4)


def test_alignment_loss_by_hand_and_zero_without_prediction():
    net = _net()
    torch.manual_seed(3)
    qf, sf = torch.randn(2, 16, 16, 16), torch.randn(1, 16, 16, 16)
    p = torch.rand(2, 1, 16, 16)
    mask = torch.zeros(1, 64, 64)
    mask[:, 10:40, 20:50] = 1
    got = net.alignment_loss(p, qf, sf, mask)
    fg = (p > 0.5).double()
    proto = (qf.double() * fg).sum((0, 2, 3)) / (fg.sum() + 1e-5)
    cos = (sf[0].double() * proto[:, None, None]).sum(0) / (sf[0].double().norm(dim=0) * proto.norm())
    prob = 1 - torch.sigmoid(0.5 * (-20 * cos + 10.0))
    up = F.interpolate(prob[None, None], size=(64, 64), mode="bilinear", align_corners=True)[0, 0]
    eps = torch.finfo(torch.float32).eps
    want = -torch.where(mask[0] == 1, up.clamp(eps, 1 - eps).log(), (1 - up).clamp(eps, 1 - eps).log()).mean()
    assert float(got.detach()) == pytest.approx(float(want), rel=1e-5)
    zero = net.alignment_loss(torch.zeros(2, 1, 16, 16), qf, sf, mask)
    assert float(zero) == 0.0 and not zero.requires_grad


@pytest.mark.parametrize("output", ["cross", "fused"])
def test_training_step_reaches_every_learning_parameter(output):
    net = _net(output=output).train()
    sup, m, qry = _episode(n_query=1)
    label = torch.zeros(1, 64, 64, dtype=torch.long)
    label[:, 20:50, 15:40] = 1
    _median_threshold(net, sup, m, qry, "fused")
    logits, losses = net(sup, m, qry)
    assert float(losses["align"].detach()) > 0
    loss = F.cross_entropy(logits, label, weight=torch.tensor(net.query_loss_weights({}))) + losses["align"]
    loss.backward()
    missing = {n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0}
    # the reference's output ("fused") never reaches its cross-attention (the defect output="cross" fixes)
    cross = {n for n, _ in net.named_parameters() if n.startswith("cross_attention.")}
    assert missing == (cross if output == "fused" else set())


def test_deterministic_and_restored_from_a_checkpoint():
    sup, m, qry = _episode()
    a, b = _net(seed=5).eval(), _net(seed=5).eval()
    with torch.no_grad():
        out = a(sup, m, qry)[0]
        assert torch.equal(out, b(sup, m, qry)[0])
        assert torch.equal(out, a(sup, m, qry)[0])  # refinement leaves no state behind
        buf = io.BytesIO()
        torch.save(a.state_dict(), buf)
        buf.seek(0)
        c = _net(seed=9).eval()
        c.load_state_dict(torch.load(buf, weights_only=True))
        assert torch.equal(out, c(sup, m, qry)[0])


def test_cross_mask_restricts_the_query_to_the_support_foreground():
    net = _net(cross_mask=True, refine_iters=0).eval()
    sup, m, _ = _episode()
    with torch.no_grad():
        state = net.support_from_mask(net.encode(sup), m)
    keep = state["key_mask"]
    grid = F.interpolate(m[:, None], size=(16, 16), mode="bilinear", align_corners=True)
    assert torch.equal(keep, grid.flatten(1) >= 0.5) and 0 < int(keep.sum()) < 256
    empty = net.support_from_mask(torch.randn(1, 16, 16, 16), torch.zeros(1, 64, 64))
    assert empty["key_mask"] is None  # no foreground cell: every cell
    assert _net().support_from_mask(torch.randn(1, 16, 16, 16), m)["key_mask"] is None


def test_identity_trunk_support_state_at_grid_resolution():
    class Identity(nn.Module):
        out_channels, stride = 8, 1

        def forward(self, x):
            return x

    net = CATNet(Identity(), CATNetParams(grid=4))
    feats = torch.randn(1, 8, 4, 4)
    fg = torch.zeros(1, 1, 4, 4)
    fg[..., 1:3, 1:3] = 1
    state = net.support_state(feats, fg)
    assert torch.allclose(state["prototype"], feats[..., 1:3, 1:3].sum((2, 3)) / (4 + 1e-5), atol=1e-6)
    assert torch.allclose(state["prior"][0], (feats * fg).flatten(2).transpose(1, 2))


@pytest.mark.parametrize("over,invariant", [("keys", "key"), ("queries", "query")])
def test_the_bias_a_softmax_cannot_see_gets_no_gradient(over, invariant):
    """A key bias shifts a query's logits row by a constant, a query bias a key's
    column: the softmax over that row (column) is unchanged, so that bias's exact
    gradient is 0 (the parity check compares those two gradients as rounding only)."""
    torch.manual_seed(0)
    layer = AttentionLayer(8, 3, over).double()
    x, y = torch.randn(2, 8, 3, 3, dtype=torch.float64), torch.randn(2, 8, 3, 3, dtype=torch.float64)
    (layer(x, layer.keys_values(y)) * torch.randn(2, 8, 3, 3, dtype=torch.float64)).sum().backward()
    other = "query" if invariant == "key" else "key"
    assert getattr(layer, invariant).bias.grad.abs().max() < 1e-12
    assert getattr(layer, other).bias.grad.abs().max() > 1e-4
