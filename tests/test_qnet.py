"""Q-Net (fsmis.models.qnet) against hand computations on tiny tensors."""

import math

import numpy as np
import pytest
import torch
from test_lineage import np_bilinear

from fsmis.models.qnet import QNet, QNetParams

SMALL = {"backbone": "small_cnn", "feature_dim": 2}


def make(**params):
    torch.manual_seed(0)
    return QNet(QNet.build_backbone(SMALL), QNetParams(**params))


def pack(fine, coarse, t):
    """The packing ``encode`` promises, built independently: coarse repeated 2 x 2 and cropped."""
    h, w = fine.shape[-2:]
    up = np.repeat(np.repeat(coarse, 2, axis=2), 2, axis=3)[..., :h, :w]
    b = fine.shape[0]
    tt = np.broadcast_to(np.asarray(t, dtype=np.float64).reshape(b, 1, 1, 1), (b, 1, h, w))
    return torch.from_numpy(np.concatenate([fine, up, tt], axis=1)).float()


def np_path_prob(f, proto, t, scale=20.0):
    """``f [C,h,w]``, ``proto [C]`` -> ``1 - sigmoid(0.5 (-scale cos - t))`` ``[h,w]``."""
    cos = np.einsum("chw,c->hw", f, proto) / (np.linalg.norm(f, axis=0) * np.linalg.norm(proto))
    return 1 - 1 / (1 + np.exp(-0.5 * (-scale * cos - t)))


def np_map(f, mask):
    up = np_bilinear(f, mask.shape, align_corners=False)
    return (up * mask).sum(axis=(1, 2)) / (mask.sum() + 1e-5)


def np_combined(fine, coarse, protos, t, size, alpha):
    pf = np_bilinear(np_path_prob(fine, protos[0], t)[None], size, align_corners=True)[0]
    pc = np_bilinear(np_path_prob(coarse, protos[1], t)[None], size, align_corners=True)[0]
    return alpha * pf + (1 - alpha) * pc


@pytest.fixture
def episode():
    g = np.random.default_rng(3)
    return {
        "fine": g.normal(size=(1, 2, 4, 4)), "coarse": g.normal(size=(1, 2, 2, 2)),
        "mask": (g.random((1, 8, 8)) > 0.5).astype(np.float64), "t": 1.5,
    }


# -- packing -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("side", [32, 36])
def test_encode_packs_both_paths_exactly(side):
    net = make().eval()
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        fine, coarse, t = net.backbone.levels(x)
        (pf, pc), pt = net.paths(net.encode(x))
    assert torch.equal(pf, fine) and torch.equal(pc, coarse) and torch.equal(pt, t)
    assert pc.shape[-1] == (side // 4 + 1) // 2


# -- support and query ----------------------------------------------------------------------------------------------

def test_support_prototypes_by_hand(episode):
    net = make()
    packed = pack(episode["fine"], episode["coarse"], [episode["t"]])
    state = net.support_from_mask(packed, torch.from_numpy(episode["mask"]).float())
    for proto, f in zip(state["protos"], (episode["fine"], episode["coarse"])):
        np.testing.assert_allclose(proto[0].numpy(), np_map(f[0], episode["mask"][0]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("alpha", [0.9, 0.6])
def test_probability_by_hand_and_logits(episode, alpha):
    net = make(alpha=alpha).train()  # training mode: no refinement
    g = np.random.default_rng(4)
    q_fine, q_coarse, q_t = g.normal(size=(1, 2, 4, 4)), g.normal(size=(1, 2, 2, 2)), -0.7
    protos = [g.normal(size=2), g.normal(size=2)]
    state = {"protos": [torch.tensor(p[None]).float() for p in protos]}
    packed = pack(q_fine, q_coarse, [q_t])
    want = np_combined(q_fine[0], q_coarse[0], protos, q_t, (9, 7), alpha)
    p = net.probability(packed, state, (9, 7))
    np.testing.assert_allclose(p[0, 0].detach().numpy(), want, rtol=1e-5, atol=1e-6)
    soft = net.predict(packed, state, (9, 7)).softmax(1)
    np.testing.assert_allclose(soft[0, 1].detach().numpy(), want, rtol=1e-5, atol=1e-6)
    # score: the same combination on the fine feature grid
    score = net.score(packed, state)
    assert score.shape == (1, 2, 4, 4)
    np.testing.assert_allclose(score.softmax(1)[0, 1].detach().numpy(),
                               np_combined(q_fine[0], q_coarse[0], protos, q_t, (4, 4), alpha), rtol=1e-5, atol=1e-6)


def test_threshold_comes_from_each_query():
    net = make().train()
    g = np.random.default_rng(5)
    fine, coarse = g.normal(size=(1, 2, 4, 4)), g.normal(size=(1, 2, 2, 2))
    state = {"protos": [torch.tensor(g.normal(size=(1, 2))).float() for _ in range(2)]}
    two = pack(np.concatenate([fine, fine]), np.concatenate([coarse, coarse]), [0.0, 3.0])
    p = net.probability(two, state, (4, 4))
    for b, t in enumerate((0.0, 3.0)):
        torch.testing.assert_close(p[b:b + 1], net.probability(pack(fine, coarse, [t]), state, (4, 4)))
    assert (p[1] > p[0]).all()  # foreground where the anomaly score is below t: a higher t, more foreground


# -- refinement -----------------------------------------------------------------------------------------------------

def test_one_refinement_step_by_hand():
    """Background cells pin the min (-6) and max (5); the foreground cells take the prototype (0.5, 0.5), inside
    that range. The BCE's gradient then reaches the prototype only through its target argument, where the loss is
    -mean(z_orig * sigmoid(z_new)) + const with z_orig > 0, so every coordinate's gradient is negative, and Adam's
    first step is lr * sign: the prototype grows by exactly lr = 0.01 per channel."""
    net = make(refine_iters=1)
    feats = torch.tensor([[[5.0, -6.0, 0.3], [0.8, 0.6, -0.5], [0.2, 0.9, 0.7]],
                          [[-6.0, 5.0, 0.9], [0.4, 0.7, -0.7], [0.3, 0.6, 0.8]]])[None]
    proto, t = torch.tensor([[0.5, 0.5]]), torch.zeros(1, 1)
    pred = net._path_probability(feats, proto, t)
    fg = (pred > 0.5)[0]
    assert fg.tolist() == [[False, False, True], [True, True, False], [True, True, True]]
    refined = net.refine(feats, proto, pred, t)
    torch.testing.assert_close(refined, proto + 0.01, atol=1e-6, rtol=0)


def reference_refine(fts, proto, t, iters, lr=0.01, scale=20.0):
    """The reference's updatePrototype for one query (its structure: one Parameter, Adam, BCELoss over the whole
    query tensor, global min/max), written out here."""
    def get_pred(prototype):
        sim = -torch.nn.functional.cosine_similarity(fts, prototype[..., None, None], dim=1) * scale
        return 1.0 - torch.sigmoid(0.5 * (sim - t))

    proto_ = torch.nn.Parameter(proto.clone()[None])
    opt = torch.optim.Adam([proto_], lr=lr)
    pred = get_pred(proto_[0]).detach()[:, None]  # N x Wa x h x w
    for _ in range(iters):
        mask = torch.stack((1.0 - pred.sum(1), pred.sum(1)), dim=1).argmax(dim=1, keepdim=True)
        mask = mask.repeat(1, fts.shape[1], 1, 1)
        bg = fts * (1 - mask)
        fg = torch.zeros_like(fts) + proto_[0].unsqueeze(-1).unsqueeze(-1).repeat(1, 1, *fts.shape[-2:]) * mask
        new = bg + fg
        a = torch.sigmoid((fts - fts.min()) / (fts.max() - fts.min()))
        b = torch.sigmoid((new - new.min()) / (new.max() - new.min()))
        loss = torch.nn.BCELoss()(a, b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        pred = get_pred(proto_[0]).detach()[:, None]
    return proto_[0].detach()


def test_batched_refinement_equals_reference_loop_per_query():
    net = make(refine_iters=4)
    g = torch.Generator().manual_seed(6)
    feats = torch.randn(2, 3, 5, 5, generator=g)
    proto = torch.randn(1, 3, generator=g)
    sim = -torch.nn.functional.cosine_similarity(feats, proto[..., None, None], dim=1) * 20
    t = sim.flatten(1).median(1).values[:, None]  # about half of each query foreground
    pred = net._path_probability(feats, proto, t)
    got = net.refine(feats, proto, pred, t)
    for b in range(2):
        want = reference_refine(feats[b:b + 1], proto, t[b:b + 1], iters=4)
        torch.testing.assert_close(got[b:b + 1], want, rtol=1e-6, atol=1e-7)
    assert (got - proto).abs().max() > 0.02  # it moved


def test_refinement_only_at_test_time(episode):
    g = np.random.default_rng(7)
    packed = pack(g.normal(size=(1, 2, 4, 4)), g.normal(size=(1, 2, 2, 2)), [0.3])
    net = make()
    state = net.support_from_mask(pack(episode["fine"], episode["coarse"], [0.0]),
                                  torch.from_numpy(episode["mask"]).float())
    train_p = net.train().probability(packed, state, (8, 8))
    with torch.no_grad():
        eval_p = net.eval().probability(packed, state, (8, 8))
        net.params = QNetParams(refine_iters=0)
        plain_p = net.probability(packed, state, (8, 8))
    torch.testing.assert_close(plain_p, train_p.detach())
    assert (eval_p - plain_p).abs().max() > 1e-4


def test_eval_prediction_batched_equals_one_by_one():
    net = make().eval()
    torch.manual_seed(1)
    sup, mask = torch.randn(1, 3, 32, 32), (torch.rand(1, 32, 32) > 0.5).float()
    queries = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        state = net.prepare_support(sup, mask)
        feats = net.encode(queries)
        together = net.predict(feats, state, (32, 32))
        single = torch.cat([net.predict(feats[i:i + 1], state, (32, 32)) for i in range(3)])
        again = net.predict(feats, state, (32, 32))
    torch.testing.assert_close(together, single, rtol=1e-5, atol=1e-5)
    assert torch.equal(together, again)


# -- alignment and training -------------------------------------------------------------------------------------------

def hand_alignment(q_fine, q_coarse, q_t, s_fine, s_coarse, p, sup_mask, alpha=0.9):
    fg = (p > 1 - p).astype(np.float64)
    protos = [np_map(q_fine, fg), np_map(q_coarse, fg)]
    ps = np_combined(s_fine, s_coarse, protos, q_t, sup_mask.shape, alpha)
    eps = float(np.finfo(np.float32).eps)
    picked = np.where(sup_mask == 1, ps, 1 - ps)
    return -np.mean(np.log(np.clip(picked, eps, 1 - eps)))


def test_alignment_loss_by_hand(episode):
    net = make().train()
    g = np.random.default_rng(8)
    q_fine, q_coarse, q_t = g.normal(size=(1, 2, 4, 4)), g.normal(size=(1, 2, 2, 2)), 0.8
    p = g.random((8, 8))
    # float64: saturated probabilities (1 - p for p near 1) lose digits in float32, as in the reference
    sup = pack(episode["fine"], episode["coarse"], [episode["t"]]).double()  # the support's own t is not used
    qry = pack(q_fine, q_coarse, [q_t]).double()
    sup_mask = torch.from_numpy(episode["mask"])
    want = hand_alignment(q_fine[0], q_coarse[0], q_t, episode["fine"][0], episode["coarse"][0], p,
                          episode["mask"][0])
    got = net.alignment_loss(torch.from_numpy(p[None, None]), qry, sup, sup_mask)
    assert got.item() == pytest.approx(want, rel=1e-6)
    # a second query without predicted foreground counts 0 in the mean over queries
    two_p = torch.from_numpy(np.stack([p, np.full_like(p, 0.2)])[:, None])
    two_q = pack(np.concatenate([q_fine, q_fine]), np.concatenate([q_coarse, q_coarse]), [q_t, q_t]).double()
    assert net.alignment_loss(two_p, two_q, sup, sup_mask).item() == pytest.approx(want / 2, rel=1e-6)
    assert net.alignment_loss(two_p[1:], two_q[1:], sup, sup_mask).item() == 0.0


def test_training_forward_losses_and_gradients():
    net = make().train()
    torch.manual_seed(2)
    sup, qry = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    mask = torch.zeros(1, 32, 32)
    mask[:, 8:24, 10:26] = 1
    logits, losses = net(sup, mask, qry)
    assert logits.shape == (1, 2, 32, 32) and set(losses) == {"align"}
    p = logits.softmax(1)
    torch.testing.assert_close(p.sum(1), torch.ones(1, 32, 32))
    assert net.query_loss_weights({"bg_weight": 0.05, "fg_weight": 1.0}) == (0.1, 1.0)
    loss = torch.nn.functional.cross_entropy(logits, mask.long(), weight=torch.tensor([0.1, 1.0]))
    (loss + losses["align"]).backward()
    assert net.backbone.threshold.weight.grad.abs().sum() > 0
    assert all(prm.grad is not None for prm in net.backbone.features.parameters())
    _, eval_losses = net.eval()(sup, mask, qry)
    assert eval_losses == {}


def test_params_defaults_and_validation():
    p = QNetParams()
    assert (p.bg_weight, p.alpha, p.scale, p.refine_iters, p.refine_lr) == (0.1, 0.9, 20.0, 7, 0.01)
    with pytest.raises(ValueError, match="alpha"):
        QNetParams.from_dict({"alpha": 1.5})
    with pytest.raises(ValueError, match="refine_iters"):
        QNetParams.from_dict({"refine_iters": -1})
    assert math.isclose(QNetParams.from_dict({"alpha": 0.6}).alpha, 0.6)


def test_cached_prediction_equals_forward_in_eval():
    net = make().eval()
    torch.manual_seed(3)
    s, q = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    fg = torch.zeros(1, 32, 32)
    fg[:, 8:20, 6:22] = 1
    with torch.no_grad():
        full, _ = net(s, fg, q)
        cached = net.predict(net.encode(q), net.prepare_support(s, fg), (32, 32))
    # probabilities: the logits of saturated ones (log of ~eps) magnify rounding of the batch-of-2 encoding
    torch.testing.assert_close(full.softmax(1), cached.softmax(1), atol=1e-4, rtol=0)
    assert torch.equal(full.argmax(1), cached.argmax(1))
