"""IPLSL (a reconstruction, see fsmis.models.iplsl): each component's defining
behaviour on hand-made inputs, the off switches, persistence and a training step."""

import io
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from fsmis.models import prototypes as P
from fsmis.models import registry
from fsmis.models.iplsl import IPLSL, IPLSLParams
from fsmis.models.iplsl_blocks import boundary_band, masked_averages, peak_prototype, self_masks, to_grid
from fsmis.models.panet import PANet
from fsmis.models.ssl_alpnet import SSLALPNet

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
SWITCHES = ("deep_path", "interaction", "self_learning", "boundary")
ALL_OFF = dict.fromkeys(SWITCHES, False)


class Tiny(nn.Module):
    """A two-layer 'backbone' with a ``stem`` (the low-level tap), 1x1 convolutions."""

    def __init__(self, channels, low=3):
        super().__init__()
        self.stem = nn.Conv2d(3, low, 1)
        self.head = nn.Conv2d(low, channels, 1)
        self.out_channels, self.stride = channels, 1

    def forward(self, x):
        return self.head(self.stem(x))


def _mask(h, w, y0, y1, x0, x1):
    m = torch.zeros(1, 1, h, w)
    m[..., y0:y1, x0:x1] = 1
    return m


def _packed(net, b=1, size=16, seed=0):
    """Random mid/high/low maps packed as ``net.encode`` returns them."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, sum(net.channels), size, size, generator=g)


def _episode(size, seed=0):
    g = torch.Generator().manual_seed(seed)
    sup, qry = torch.randn(1, 3, size, size, generator=g), torch.randn(1, 3, size, size, generator=g)
    fg = torch.zeros(1, size, size)
    fg[:, size // 8: 7 * size // 8, size // 4: 3 * size // 4] = 1
    return sup, fg, qry


# -- peak prototypes and pooling -------------------------------------------------------------


def test_peak_prototype_is_the_masked_channel_maximum():
    f = torch.tensor([[[[1.0, 9.0], [3.0, -2.0]], [[-5.0, 0.0], [-1.0, 4.0]]]])  # [1,2,2,2]
    m = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])  # cells (0,0), (1,0), (1,1)
    assert peak_prototype(f, m).tolist() == [[3.0, 4.0]]  # 9 and 0 lie outside the mask
    # mean of the two largest: (3 + 1) / 2, (4 + -1) / 2
    assert peak_prototype(f, m, topk=2).tolist() == [[2.0, 1.5]]
    # a soft mask counts from the level on: 0.5 is in, 0.4 is out
    soft = torch.tensor([[[[0.5, 0.4], [0.0, 0.0]]]])
    assert peak_prototype(f, soft).tolist() == [[1.0, -5.0]]
    assert peak_prototype(f, soft, topk=3).tolist() == [[1.0, -5.0]]  # only one cell to average
    assert peak_prototype(f, torch.zeros(1, 1, 2, 2)).tolist() == [[0.0, 0.0]]  # empty: zero vector
    # the support state's foreground high-level prototype is that peak
    net = IPLSL.from_keywords(Tiny(2), interaction=False, self_learning=False, boundary=False, decoder_channels=2,
                prototype_sets="mean")
    feats = torch.cat([torch.randn(1, 2, 2, 2), f], 1)
    assert net.support_state(feats, m)["high_fg"].tolist() == [[3.0, 4.0]]


def test_masked_averages_equal_masked_average_per_mask():
    torch.manual_seed(0)
    f, masks = torch.randn(2, 5, 4, 6), torch.rand(2, 3, 4, 6)
    out = masked_averages(f.flatten(2), masks.flatten(2).transpose(1, 2))
    for j in range(3):
        assert torch.allclose(out[:, j], P.masked_average(f, masks[:, j:j + 1]), atol=1e-6)


# -- self-learning --------------------------------------------------------------------------


def test_self_learning_with_a_perfect_first_prediction_gives_the_querys_own_prototypes():
    net = IPLSL.from_keywords(Tiny(6), boundary=False, decoder_channels=4).eval()
    feats = _packed(net, b=2, size=12, seed=1)
    m = torch.cat([_mask(12, 12, 2, 9, 3, 10), _mask(12, 12, 0, 5, 0, 12)])  # one mask per query
    first = (30.0 * (2 * m - 1)).flatten(2)
    first = torch.cat([-first, first], 1)  # [B,2,n]: background, foreground logits
    protos, (fg, bg) = net.self_prototypes(net.query_levels(feats), first)
    assert torch.equal(fg, m.flatten(2)) and torch.equal(bg, 1 - m.flatten(2))
    mid, high, _ = net.levels(feats)
    assert torch.allclose(protos["mid_fg"], P.masked_average(mid, m), atol=1e-6)
    assert torch.allclose(protos["mid_bg"], P.masked_average(mid, 1 - m), atol=1e-6)
    assert torch.equal(protos["high_fg"], high.masked_fill(m == 0, -torch.inf).amax(dim=(2, 3)))
    assert torch.allclose(protos["high_bg"], P.masked_average(high, 1 - m), atol=1e-6)


def test_self_masks_use_separate_thresholds_and_an_empty_class_keeps_its_prototype():
    p_fg = torch.tensor([0.9, 0.65, 0.5, 0.35, 0.1])  # fg > 0.7: cell 0; bg > 0.6: cells 3, 4
    logits = torch.stack([torch.zeros(5), torch.log(p_fg / (1 - p_fg))])[None]
    fg, bg = self_masks(logits, 0.7, 0.6)
    assert fg.flatten().tolist() == [1, 0, 0, 0, 0] and bg.flatten().tolist() == [0, 0, 0, 1, 1]
    old = {"mid_fg": torch.ones(2, 3), "mid_bg": torch.zeros(2, 3)}
    new = {"mid_fg": torch.full((2, 3), 5.0), "mid_bg": torch.full((2, 3), 7.0)}
    masks = (torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]]), torch.ones(2, 1, 2))  # query 1: no fg cell
    kept = IPLSL._keep_where_empty(new, old, masks)
    assert kept["mid_fg"][:, 0].tolist() == [5.0, 1.0] and kept["mid_bg"][:, 0].tolist() == [7.0, 7.0]


def test_self_learning_output_is_the_mix_of_first_and_self_learned_predictions():
    torch.manual_seed(2)
    kw = {"deep_path": False, "interaction": False, "boundary": False, "prototype_sets": "mean"}
    net = IPLSL.from_keywords(Tiny(5), self_mix=0.25, **kw).eval()
    feats, q = _packed(net, seed=2), _packed(net, b=2, seed=3)
    fg = _mask(16, 16, 3, 12, 4, 13)
    out = net._score(q, net.support_state(feats, fg))
    assert torch.allclose(out["scores"], 0.75 * out["first"] + 0.25 * out["self"], atol=1e-6)
    panet = PANet(Tiny(5))  # first pass: the support prototypes
    assert torch.allclose(out["first"], panet.score(q, panet.support_state(feats, fg)), atol=1e-5)
    own, _ = net.self_prototypes(net.query_levels(q), out["first"].flatten(2))
    expected = torch.cat([P.cosine_scores(q[i:i + 1], torch.stack([own["mid_bg"][i], own["mid_fg"][i]]), 20.0)
                          for i in range(2)])
    assert torch.allclose(out["self"], expected, atol=1e-4)


# -- interaction ----------------------------------------------------------------------------


def test_interaction_mixes_support_and_query_mean_prototypes():
    torch.manual_seed(3)
    kw = {"deep_path": False, "self_learning": False, "boundary": False, "prototype_sets": "mean"}
    feats, q = torch.randn(1, 4, 16, 16), torch.randn(2, 4, 16, 16)
    fg = _mask(16, 16, 2, 10, 5, 14)
    panet = PANet(Tiny(4))
    support = panet.support_state(feats, fg)
    prob = torch.softmax(panet.score(q, support), dim=1)[:, 1:]  # support-only prediction
    lam = 0.3
    bg_p = (1 - lam) * support["bg"] + lam * P.masked_average(q, 1 - prob)
    fg_p = (1 - lam) * support["fg"] + lam * P.masked_average(q, prob)
    expected = torch.cat([P.cosine_scores(q[i:i + 1], torch.stack([bg_p[i], fg_p[i]]), 20.0) for i in range(2)])
    net = IPLSL.from_keywords(Tiny(4), interact_mix=lam, **kw).eval()
    assert torch.allclose(net.score(q, net.support_state(feats, fg)), expected, atol=1e-4)
    zero = IPLSL.from_keywords(Tiny(4), interact_mix=0.0, **kw).eval()  # no query share: PANet
    assert torch.allclose(zero.score(q, zero.support_state(feats, fg)), panet.score(q, support), atol=1e-5)


def test_high_level_interaction_mixes_the_support_and_query_peaks():
    torch.manual_seed(4)
    net = IPLSL.from_keywords(Tiny(3), self_learning=False, boundary=False, decoder_channels=3, interact_mix=0.5,
                prototype_sets="mean").eval()
    feats, q = _packed(net, seed=4), _packed(net, seed=5)
    fg = _mask(16, 16, 4, 12, 4, 12)
    st = net.support_state(feats, fg)
    ql = net.query_levels(q)
    support = {k: st[k] for k in ("mid_fg", "mid_bg", "high_fg", "high_bg")}
    prob = torch.softmax(net._head(ql, support, st, informed=False), 1)[:, 1:]
    query_peak = peak_prototype(ql["high"], (prob >= 0.5).float())
    fused = {k: 0.5 * v for k, v in support.items()}
    fused["high_fg"] = fused["high_fg"] + 0.5 * query_peak
    fused["high_bg"] = fused["high_bg"] + 0.5 * masked_averages(ql["high"], (1 - prob).transpose(1, 2))[:, 0]
    fused["mid_fg"] = fused["mid_fg"] + 0.5 * masked_averages(ql["mid"], prob.transpose(1, 2))[:, 0]
    fused["mid_bg"] = fused["mid_bg"] + 0.5 * masked_averages(ql["mid"], (1 - prob).transpose(1, 2))[:, 0]
    expected = net._head(ql, fused, st, informed=True).unflatten(2, (16, 16))
    assert torch.allclose(net.score(q, st), expected, atol=1e-5)


# -- boundary complement ----------------------------------------------------------------------


def test_boundary_band_by_hand():
    fg = _mask(7, 7, 2, 5, 2, 5)  # a 3x3 square
    band = boundary_band(fg, 1)[0, 0]
    expected = torch.zeros(7, 7)
    expected[1:6, 1:6] = 1  # dilation: the 5x5 square around it ...
    expected[3, 3] = 0  # ... minus the erosion: the centre cell
    assert torch.equal(band, expected)
    assert boundary_band(torch.ones(1, 1, 5, 5), 1).sum() == 0  # no boundary, no band
    assert torch.equal(boundary_band(fg, 0), torch.zeros(1, 1, 7, 7))


def test_boundary_branch_changes_only_the_band_and_follows_the_low_level_scores():
    torch.manual_seed(5)
    on = IPLSL.from_keywords(Tiny(4, low=3), deep_path=False, boundary_mode="prototype", boundary_weight=1.0).eval()
    off = IPLSL.from_keywords(Tiny(4, low=3), deep_path=False, boundary=False).eval()
    feats, q = _packed(on, seed=6), _packed(on, b=2, seed=7)
    fg = _mask(16, 16, 3, 11, 2, 12)
    s_on = on.score(q, on.support_state(feats, fg))
    s_off = off.score(q[:, :4], off.support_state(feats[:, :4], fg))  # the same maps without the low level
    band = boundary_band((s_off[:, 1:] > s_off[:, :1]).float(), 1).expand_as(s_on).bool()
    assert 0 < band[:, 0].sum() < band[:, 0].numel()
    assert torch.equal(s_on[~band], s_off[~band])  # interior and far background: bit-identical
    assert not torch.allclose(s_on[band], s_off[band], atol=1e-3)
    # boundary_weight 1: inside the band the logits are the low-level scores against the
    # query's own confident cells
    low = q[:, 4:]
    fgm, bgm = (m.unflatten(2, (16, 16)) for m in self_masks(s_off.flatten(2), 0.7, 0.6))
    for i in range(2):
        li = low[i:i + 1]
        protos = torch.stack([P.masked_average(li, bgm[i:i + 1])[0], P.masked_average(li, fgm[i:i + 1])[0]])
        low_scores = P.cosine_scores(li, protos, 20.0)
        assert torch.allclose(s_on[i][band[i]], low_scores[0][band[i]], atol=1e-4)


def test_learned_boundary_head_starts_as_identity_and_acts_only_in_the_band():
    torch.manual_seed(12)
    on = IPLSL.from_keywords(Tiny(4, low=3), deep_path=False, boundary_mode="learned", boundary_hidden=5).eval()
    off = IPLSL.from_keywords(Tiny(4, low=3), deep_path=False, boundary=False).eval()
    assert {n for n, _ in on.named_parameters()} - {n for n, _ in off.named_parameters()} == {
        "boundary_head.conv.weight", "boundary_head.conv.bias", "boundary_head.out.weight", "boundary_head.out.bias"}
    feats, q = _packed(on, seed=8), _packed(on, b=2, seed=9)
    fg = _mask(16, 16, 3, 11, 2, 12)
    s_off = off.score(q[:, :4], off.support_state(feats[:, :4], fg))
    assert torch.equal(on.score(q, on.support_state(feats, fg)), s_off)  # zero-initialised residual
    with torch.no_grad():
        on.boundary_head.out.weight.normal_()
        on.boundary_head.out.bias.fill_(3.0)
    s_on = on.score(q, on.support_state(feats, fg))
    band = boundary_band((s_off[:, 1:] > s_off[:, :1]).float(), 1).expand_as(s_on).bool()
    assert torch.equal(s_on[~band], s_off[~band]) and not torch.allclose(s_on[band], s_off[band], atol=1e-3)


def test_low_level_tap_captures_the_stem_without_changing_the_backbone():
    torch.manual_seed(6)
    net = registry.build("iplsl", {"backbone": "small_cnn", "feature_dim": 8}).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        mid, high, low = net.levels(net.encode(x))
        assert torch.equal(mid, net.backbone(x))
        assert torch.equal(low, net.backbone.stem(x))  # small_cnn: stem is at the grid's stride 4
        assert torch.equal(high, net.decoder(mid))
    assert net.channels == (8, 4, 32)  # mid, high (half of mid), low (small_cnn width)
    assert not net.backbone.stem._forward_hooks  # the hook is gone after encoding
    fine = torch.arange(16.0).reshape(1, 1, 4, 4)  # a finer low-level map (ResNet layer1) is average-pooled
    assert to_grid(fine, (2, 2)).flatten().tolist() == [2.5, 4.5, 10.5, 12.5]


# -- switches -------------------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_every_component_off_is_panet_or_ssl_alpnet(training):
    torch.manual_seed(7)
    feats, q = torch.randn(1, 8, 32, 32), torch.randn(2, 8, 32, 32)
    fg = _mask(32, 32, 5, 25, 3, 20)
    for mode, ref in (("mean", PANet(Tiny(8))), ("local", SSLALPNet(Tiny(8)))):
        net = IPLSL.from_keywords(Tiny(8), prototype_sets=mode, **ALL_OFF).train(training)
        ref.train(training)
        assert net.channels == (8, 0, 0) and list(net.state_dict()) == ["backbone.stem.weight", "backbone.stem.bias",
                                                                         "backbone.head.weight", "backbone.head.bias"]
        assert torch.allclose(net.score(q, net.support_state(feats, fg)), ref.score(q, ref.support_state(feats, fg)),
                              atol=1e-5), mode


@pytest.mark.parametrize("switch", SWITCHES)
def test_each_switch_off_removes_its_parameters_channels_and_effect(switch):
    torch.manual_seed(8)
    cfg = {"backbone": "small_cnn", "feature_dim": 8}
    full = registry.build("iplsl", cfg).eval()
    off = registry.build("iplsl", cfg, {switch: False})
    off.load_state_dict(full.state_dict(), strict=False)  # the same weights where both have them
    off.eval()
    names_full, names_off = set(full.state_dict()), set(off.state_dict())
    if switch == "deep_path":
        assert names_full - names_off == {n for n in names_full if n.startswith("decoder.")} != set()
        assert off.channels[1] == 0
    else:
        assert names_full == names_off  # interaction, self-learning and boundary have no parameters
    if switch == "boundary":
        assert off.channels[2] == 0
    sup, fg, qry = _episode(64)
    with torch.no_grad():
        a, b = full(sup, fg, qry)[0], off(sup, fg, qry)[0]
    assert not torch.allclose(a, b, atol=1e-3)


# -- persistence, caching, training -----------------------------------------------------------


def test_saved_and_reloaded_model_gives_identical_logits():
    torch.manual_seed(9)
    cfg = {"backbone": "small_cnn", "feature_dim": 16}
    net = registry.build("iplsl", cfg)
    sup, fg, qry = _episode(64)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    logits, losses = net.train()(sup, fg, qry, qry_label=fg)  # one step: BN statistics and weights move
    (P.segmentation_loss(logits, fg, 0.05, 1.0) + sum(losses.values())).backward()
    opt.step()
    net.eval()
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    fresh = registry.build("iplsl", cfg).eval()
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    with torch.no_grad():
        assert torch.equal(net(sup, fg, qry)[0], fresh(sup, fg, qry)[0])


def test_cached_support_state_equals_forward_in_eval():
    torch.manual_seed(10)
    net = registry.build("iplsl", {"backbone": "small_cnn", "feature_dim": 16}).eval()
    sup, fg, _ = _episode(64)
    qry = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        full, losses = net(sup, fg, qry)
        cached = net.predict(net.encode(qry), net.prepare_support(sup, fg), (64, 64))
        one = net.predict(net.encode(qry[1:]), net.prepare_support(sup, fg), (64, 64))
    assert losses == {}
    assert torch.allclose(full, cached, atol=1e-5)
    assert torch.allclose(cached[1:], one, atol=1e-5)  # queries of a batch are independent


@pytest.mark.parametrize("full_align", [False, True])
def test_train_forward_returns_the_losses_with_gradients(full_align):
    torch.manual_seed(11)
    net = registry.build("iplsl", {"backbone": "small_cnn", "feature_dim": 16}, {"full_align": full_align}).train()
    sup, fg, qry = _episode(64)
    logits, losses = net(sup, fg, qry, qry_label=fg)
    assert logits.shape == (1, 2, 64, 64) and logits.requires_grad
    assert set(losses) == {"align", "self"}
    for name, loss in [("query", P.segmentation_loss(logits, fg, 0.05, 1.0)), *losses.items()]:
        assert torch.isfinite(loss) and loss > 0, name
        grads = torch.autograd.grad(loss, [net.backbone.head.weight, net.decoder.out.weight],
                                    retain_graph=True, allow_unused=True)
        assert all(g is not None and g.abs().sum() > 0 for g in grads), name
    # the self loss is the weighted CE of the self-learned prediction, times its weight
    half = registry.build("iplsl", {"backbone": "small_cnn", "feature_dim": 16},
                          {"full_align": full_align, "self_loss_weight": 0.5})
    half.load_state_dict(net.state_dict())
    torch.manual_seed(11)
    assert torch.allclose(half.train()(sup, fg, qry, qry_label=fg)[1]["self"], 0.5 * losses["self"], rtol=1e-4)
    assert set(net(sup, fg, qry)[1]) == {"align"}  # no query label: no self loss
    assert set(registry.build("iplsl", {"backbone": "small_cnn", "feature_dim": 16},
                              {"self_learning": False}).train()(sup, fg, qry, qry_label=fg)[1]) == {"align"}


def test_schema_defaults_build_the_default_parameters():
    props = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))["properties"]["method_params"]["properties"]["iplsl"]
    defaults = {k: v["default"] for k, v in props["properties"].items()}
    net = registry.build("iplsl", {"backbone": "small_cnn", "feature_dim": 16}, defaults)
    assert isinstance(net, IPLSL) and net.params == IPLSLParams()
    assert all(getattr(net.params, s) for s in SWITCHES)
