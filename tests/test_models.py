"""Method-level behaviour of SSL-ALPNet and PANet on hand-made features."""

import pytest
import torch
from torch import nn

from fsmis.models import prototypes as P
from fsmis.models import registry
from fsmis.models.fewshot import EmptyPrototypeSet
from fsmis.models.panet import PANet
from fsmis.models.ssl_alpnet import SSLALPNet


class Identity(nn.Module):
    out_channels, stride = 3, 1

    def forward(self, x):
        return x


def _mask(h, w, y0, y1, x0, x1):
    m = torch.zeros(1, 1, h, w)
    m[..., y0:y1, x0:x1] = 1
    return m


def test_ssl_alpnet_fg_switch_small_mask_uses_global_prototype_only():
    net = SSLALPNet(Identity()).eval()
    feats = torch.randn(1, 3, 16, 16)
    small = _mask(16, 16, 0, 3, 0, 3)  # no 4x4 cell fully covered
    st = net.support_state(feats, small)
    assert st["fg"].shape == (1, 3)
    assert torch.allclose(st["fg"], P.masked_average(feats, small))


def test_ssl_alpnet_large_mask_local_plus_global_with_test_window():
    net = SSLALPNet(Identity()).eval()  # test window 2
    feats = torch.randn(1, 3, 16, 16)
    big = _mask(16, 16, 0, 8, 0, 8)  # 4x4 cells covered -> local + global
    st = net.support_state(feats, big)
    # 2x2 windows inside an 8x8 block: 16 local prototypes + 1 global
    assert st["fg"].shape == (17, 3)
    net.train()  # training window 4 -> 4 local + 1 global
    assert net.support_state(feats, big)["fg"].shape == (5, 3)
    # background: local only, cells fully outside the 8x8 block: 48 of 64 at window 2
    net.eval()
    assert st["bg"].shape == (48, 3)


def test_ssl_alpnet_scores_prefer_the_matching_region():
    net = SSLALPNet(Identity()).eval()
    feats = torch.zeros(1, 3, 16, 16)
    feats[:, 0] = 1.0
    feats[:, 1, :8, :8] = 2.0  # foreground has a distinct feature direction
    fg = _mask(16, 16, 0, 8, 0, 8)
    scores = net.score(feats, net.support_state(feats, fg))
    pred = scores.argmax(1)[0]
    assert pred[:8, :8].all() and not pred[8:, :].any() and not pred[:, 8:].any()


def test_empty_background_policy():
    feats = torch.randn(1, 3, 8, 8)
    full = torch.ones(1, 1, 8, 8)
    st = SSLALPNet(Identity()).eval().support_state(feats, full)  # global fallback
    assert st["bg"].shape == (1, 3)
    with pytest.raises(EmptyPrototypeSet):
        SSLALPNet.from_keywords(Identity(), empty_bg="raise").eval().support_state(feats, full)


def test_panet_uses_one_prototype_per_class():
    feats = torch.randn(1, 3, 8, 8)
    fg = _mask(8, 8, 0, 4, 0, 4)
    st = PANet(Identity()).support_state(feats, fg)
    assert torch.allclose(st["fg"], P.masked_average(feats, fg))
    assert torch.allclose(st["bg"], P.masked_average(feats, 1 - fg))


@pytest.mark.parametrize("method", ["ssl_alpnet", "panet"])
def test_forward_shapes_and_alignment_loss_has_gradient(method):
    torch.manual_seed(0)
    net = registry.build(method, {"backbone": "small_cnn", "feature_dim": 16}).train()
    img = torch.randn(1, 3, 64, 64)
    fg = torch.zeros(1, 64, 64)
    fg[:, 16:48, 16:48] = 1
    logits, losses = net(img, fg, img.clone())
    assert logits.shape == (1, 2, 64, 64)
    assert losses["align"].requires_grad
    losses["align"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_cached_prediction_equals_forward_in_eval():
    torch.manual_seed(0)
    net = registry.build("ssl_alpnet", {"backbone": "small_cnn", "feature_dim": 16}).eval()
    s, q = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    fg = torch.zeros(1, 64, 64)
    fg[:, 8:40, 8:40] = 1
    with torch.no_grad():
        full, _ = net(s, fg, q)
        cached = net.predict(net.encode(q), net.prepare_support(s, fg), (64, 64))
    assert torch.allclose(full, cached, atol=1e-5)


def test_registry_rejects_unknown_method():
    with pytest.raises(ValueError, match="unknown method"):
        registry.build("nope", {"backbone": "small_cnn"})


def test_resolve_variants_and_untrained():
    cfg = {"method_params": {"ssl_alpnet": {"threshold": 0.95}, "panet": {"scale": 20.0}},
           "variants": {"panet_cold": {"method": "panet", "params": {"scale": 5.0}}}}
    assert registry.resolve("panet_cold", cfg) == ("panet", {"scale": 5.0})
    assert registry.resolve("untrained", cfg) == ("ssl_alpnet", {"threshold": 0.95})
    assert registry.resolve("panet", cfg) == ("panet", {"scale": 20.0})
    assert cfg["method_params"]["panet"] == {"scale": 20.0}  # not modified


def test_resolve_applies_setting_overrides_then_variant_params():
    from fsmis.models import registry

    config = {
        "method_params": {"dspnet": {"alpha_fg": 0.2, "bcma_taps": [0.3, 0.8, 0.3], "ran": True}},
        "method_params_by_setting": {"1": {"dspnet": {"alpha_fg": 0.3, "bcma_taps": [0.2, 0.8, 0.2]}}},
        "variants": {"dspnet_no_ran": {"method": "dspnet", "params": {"ran": False, "alpha_fg": 0.5}}},
    }
    assert registry.resolve("dspnet", config, "1") == (
        "dspnet", {"alpha_fg": 0.3, "bcma_taps": [0.2, 0.8, 0.2], "ran": True})
    assert registry.resolve("dspnet", config, "2")[1]["alpha_fg"] == 0.2  # no override for setting 2
    assert registry.resolve("dspnet", config)[1]["alpha_fg"] == 0.2
    arch, params = registry.resolve("dspnet_no_ran", config, "1")
    assert arch == "dspnet" and params == {"alpha_fg": 0.5, "bcma_taps": [0.2, 0.8, 0.2], "ran": False}
