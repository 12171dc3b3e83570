"""The ADNet-lineage trunk and head operators (fsmis.models.lineage)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fsmis.errors import InputError
from fsmis.models import lineage as L
from fsmis.models.lineage import LineageEncoder, LineageParams, LineageSegmenter, ThresholdHead

SMALL = {"backbone": "small_cnn", "feature_dim": 8}


def np_bilinear(f, size, align_corners):
    """Reference bilinear resize of ``f [C,h,w]`` (PyTorch's source-index rule), numpy loops."""
    c, h, w = f.shape
    hh, ww = size

    def src(n_in, n_out):
        out = []
        for i in range(n_out):
            if align_corners:
                s = i * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
            else:
                s = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
            i0 = min(int(math.floor(s)), n_in - 1)
            out.append((i0, min(i0 + 1, n_in - 1), s - i0))
        return out

    out = np.zeros((c, hh, ww))
    for y, (y0, y1, ly) in enumerate(src(h, hh)):
        for x, (x0, x1, lx) in enumerate(src(w, ww)):
            out[:, y, x] = ((1 - ly) * ((1 - lx) * f[:, y0, x0] + lx * f[:, y0, x1])
                            + ly * ((1 - lx) * f[:, y1, x0] + lx * f[:, y1, x1]))
    return out


@pytest.fixture
def small():
    torch.manual_seed(0)
    return LineageSegmenter(LineageSegmenter.build_backbone(SMALL)).eval()


# -- trunk contract on small_cnn ---------------------------------------------------------------------------------------

def test_small_cnn_gets_threshold_head_and_packs_t(small):
    assert isinstance(small.backbone, ThresholdHead)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        packed = small.encode(x)
        feats, t = small.split(packed)
        raw = small.backbone.features(x)
    assert packed.shape == (2, 9, 8, 8)
    assert feats.shape == (2, 8, 8, 8) and t.shape == (2, 1)
    torch.testing.assert_close(feats, raw)
    # t = linear(global average pool), by hand, and broadcast over the whole last channel
    head = small.backbone.threshold
    want = raw.mean(dim=(2, 3)) @ head.weight.t() + head.bias
    torch.testing.assert_close(t, want)
    assert torch.equal(packed[:, -1], t[:, :, None].expand(2, 8, 8))


def test_threshold_is_per_image(small):
    """t of an image does not depend on the others in the batch (evaluation caches per slice)."""
    a, b = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        _, t_ab = small.split(small.encode(torch.cat([a, b])))
        _, t_b = small.split(small.encode(b))
    torch.testing.assert_close(t_ab[1:], t_b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(t_ab[0], t_ab[1])


def test_threshold_head_levels_coarse_is_ceil_pool(small):
    x = torch.randn(1, 3, 36, 36)  # 9 x 9 grid: the coarse path must be 5 x 5 (ceil), as layer4's stride 2
    with torch.no_grad():
        fine, coarse, t = small.backbone.levels(x)
    assert fine.shape[-2:] == (9, 9) and coarse.shape[-2:] == (5, 5) and t.shape == (1, 1)
    torch.testing.assert_close(coarse[..., 0, 0], fine[..., :2, :2].mean(dim=(-2, -1)))
    torch.testing.assert_close(coarse[..., 4, 4], fine[..., 8, 8])  # the last window holds one cell


def test_gradients_reach_threshold_head_and_backbone(small):
    small.train()
    feats, t = small.split(small.encode(torch.randn(2, 3, 32, 32)))
    (feats.square().mean() + t.sum()).backward()
    assert small.backbone.threshold.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in small.backbone.features.parameters())


def test_query_loss_weights_from_params():
    net = LineageSegmenter(LineageSegmenter.build_backbone(SMALL))
    assert net.query_loss_weights({"bg_weight": 0.05, "fg_weight": 1.0}) == (0.1, 1.0)
    net = LineageSegmenter(LineageSegmenter.build_backbone(SMALL), LineageParams.from_dict({"bg_weight": 0.3}))
    assert net.query_loss_weights({}) == (0.3, 1.0)
    with pytest.raises(ValueError, match="bg_weight"):
        LineageParams.from_dict({"bg_weight": -1})


# -- the ResNet-101 trunk ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def r101():
    torch.manual_seed(0)
    return LineageEncoder().eval()


@pytest.mark.slow
def test_resnet_trunk_shapes_at_small_input(r101):
    with torch.no_grad():
        fine, coarse, t = r101.levels(torch.randn(2, 3, 36, 36))
        fine2, t2 = r101(torch.randn(1, 3, 32, 32))
    # stride 4 on layer3 (layer2, layer3 dilated), layer4 keeps its stride 2: ceil(9 / 2) = 5
    assert fine.shape == (2, 512, 9, 9) and coarse.shape == (2, 512, 5, 5) and t.shape == (2, 1)
    assert fine2.shape == (1, 512, 8, 8) and t2.shape == (1, 1)
    assert r101.out_channels == 512 and r101.stride == 4


def test_resnet_trunk_dilation_pattern(r101):
    """torchvision's replace_stride_with_dilation=[True, True, False] layout, stated independently."""
    b = r101.backbone
    want = {"layer2": (1, 2, 1), "layer3": (2, 4, 1), "layer4": (4, 4, 2)}  # block 0, later blocks, stride
    for name, (first, rest, stride) in want.items():
        layer = getattr(b, name)
        assert layer[0].conv2.dilation == (first, first) and layer[0].conv2.stride == (stride, stride)
        assert layer[0].conv2.padding == (first, first)
        assert all(blk.conv2.dilation == (rest, rest) and blk.conv2.stride == (1, 1) for blk in layer[1:])
    assert [len(getattr(b, f"layer{i}")) for i in range(1, 5)] == [3, 4, 23, 3]
    assert r101.reduce1.weight.shape == (512, 1024, 1, 1) and r101.reduce1.bias is None
    assert r101.reduce2.weight.shape == (512, 2048, 1, 1) and r101.reduce2.bias is None
    assert b.fc.weight.shape == (1000, 2048) and r101.reduce1d.weight.shape == (1, 1000)


def _fake_deeplab_state() -> dict:
    """A torchvision-format deeplabv3_resnet101 state dict, keys and shapes written from torchvision's
    naming rules (not from our module), values distinct per tensor; plus the heads we never build."""
    state = {}

    def bn(prefix, n, i):
        state[f"{prefix}.weight"] = torch.full((n,), 1.0 + i)
        state[f"{prefix}.bias"] = torch.full((n,), -0.5 * i)
        state[f"{prefix}.running_mean"] = torch.full((n,), 0.01 * i)
        state[f"{prefix}.running_var"] = torch.full((n,), 1.0 + 0.02 * i)
        state[f"{prefix}.num_batches_tracked"] = torch.tensor(i)

    k = 1
    state["backbone.conv1.weight"] = torch.full((64, 3, 7, 7), 0.001)
    bn("backbone.bn1", 64, k)
    in_ch = 64
    for li, (width, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 23, 3)), start=1):
        for j in range(blocks):
            p = f"backbone.layer{li}.{j}"
            cin = in_ch if j == 0 else 4 * width
            for ci, shape in enumerate([(width, cin, 1, 1), (width, width, 3, 3), (4 * width, width, 1, 1)], 1):
                k += 1
                state[f"{p}.conv{ci}.weight"] = torch.full(shape, 1e-4 * k)
                bn(f"{p}.bn{ci}", shape[0], k)
            if j == 0:
                k += 1
                state[f"{p}.downsample.0.weight"] = torch.full((4 * width, cin, 1, 1), 1e-4 * k)
                bn(f"{p}.downsample.1", 4 * width, k)
        in_ch = 4 * width
    state["classifier.0.weight"] = torch.zeros(256, 2048, 3, 3)
    state["classifier.4.bias"] = torch.zeros(21)
    state["aux_classifier.0.weight"] = torch.zeros(256, 1024, 3, 3)
    return state


@pytest.mark.slow
def test_loads_torchvision_deeplabv3_state_dict_by_key(tmp_path):
    state = _fake_deeplab_state()
    path = tmp_path / "deeplabv3_resnet101_coco.pth"
    torch.save(state, path)
    torch.manual_seed(0)
    enc = LineageEncoder(pretrained=path)
    own = enc.state_dict()
    trunk = [k for k in state if k.startswith("backbone.")]
    assert set(trunk) == {k for k in own if k.startswith("backbone.") and not k.startswith("backbone.fc.")}
    for key in trunk:
        assert torch.equal(own[key], state[key]), key
    # not in the DeepLab file: the reference leaves them as initialised
    assert own["backbone.fc.weight"].std() > 0 and own["reduce1.weight"].std() > 0
    # a file that lacks trunk keys is refused instead of silently half-loaded
    del state["backbone.layer3.5.conv2.weight"]
    torch.save(state, path)
    with pytest.raises(InputError, match="layer3.5.conv2.weight"):
        LineageEncoder(pretrained=path)


# -- head operators ----------------------------------------------------------------------------------------------------

def test_similarity_is_negative_scaled_cosine():
    g = torch.Generator().manual_seed(1)
    feats, proto = torch.randn(2, 3, 2, 4, generator=g), torch.randn(2, 3, generator=g)
    sim = L.similarity(feats, proto, 20.0)
    f, p = feats.double().numpy(), proto.double().numpy()
    want = np.zeros((2, 2, 4))
    for b in range(2):
        for y in range(2):
            for x in range(4):
                v = f[b, :, y, x]
                want[b, y, x] = -20 * v @ p[b] / (np.linalg.norm(v) * np.linalg.norm(p[b]))
    np.testing.assert_allclose(sim.numpy(), want, rtol=1e-5, atol=1e-5)
    # one shared prototype [1, C] applies to every image
    np.testing.assert_allclose(L.similarity(feats, proto[:1]).numpy()[1], -20 * np.einsum(
        "chw,c->hw", f[1] / np.linalg.norm(f[1], axis=0), p[0] / np.linalg.norm(p[0])), rtol=1e-5, atol=1e-5)


def test_lineage_prediction_by_hand_per_image_threshold():
    sim = torch.tensor([[[-20.0, 0.0], [3.0, 10.0]], [[-20.0, 0.0], [3.0, 10.0]]])
    t = torch.tensor([[2.0], [-4.0]])
    p = L.lineage_prediction(sim, t)
    want = [[1 - 1 / (1 + math.exp(-0.5 * (s - tb))) for s in (-20.0, 0.0, 3.0, 10.0)] for tb in (2.0, -4.0)]
    np.testing.assert_allclose(p.reshape(2, 4).numpy(), want, rtol=1e-6, atol=1e-7)
    assert p[0, 0, 0] > 0.99 and p[1, 1, 1] < 0.06  # similar -> foreground; far above t -> background
    assert L.LineageSegmenter.lineage_prediction is L.lineage_prediction
    # sim [B,1,h,w] broadcasts the same way
    torch.testing.assert_close(L.lineage_prediction(sim[:, None], t)[:, 0], p)


def test_probability_logits_softmax_and_nll():
    p = torch.tensor([0.0, 1e-9, 0.2, 0.5, 0.9, 1.0]).reshape(1, 1, 2, 3)
    logits = L.probability_logits(p)
    assert logits.shape == (1, 2, 2, 3)
    eps = float(np.finfo(np.float32).eps)
    clamp = np.clip(p.numpy()[0, 0].astype(np.float64), eps, 1 - eps)
    np.testing.assert_allclose(logits[0, 1].numpy(), np.log(clamp), rtol=1e-6)
    np.testing.assert_allclose(logits[0, 0].numpy(), np.log(np.clip(1 - p.numpy()[0, 0], eps, 1 - eps)), rtol=1e-6)
    soft = logits.softmax(1)
    torch.testing.assert_close(soft[:, 1:], p.clamp(eps, 1 - eps), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(soft[:, :1], (1 - p).clamp(eps, 1 - eps), atol=1e-6, rtol=1e-6)
    # the weighted NLL of the clamped log-probabilities, by hand; 255 ignored
    target = torch.tensor([[[0, 1, 1], [0, 255, 1]]])
    loss = L.lineage_nll(p, target, weight=torch.tensor([0.1, 1.0]))
    pp = p.numpy()[0, 0].astype(np.float64)
    terms = [(0.1, 1 - pp[0, 0]), (1.0, pp[0, 1]), (1.0, pp[0, 2]), (0.1, 1 - pp[1, 0]), (1.0, pp[1, 2])]
    want = -sum(w * math.log(min(max(q, eps), 1 - eps)) for w, q in terms) / sum(w for w, _ in terms)
    assert loss.item() == pytest.approx(want, rel=1e-5)
    # the trainer's weighted cross-entropy of the logits is the same loss
    ce = F.cross_entropy(logits, target, weight=torch.tensor([0.1, 1.0]), ignore_index=255)
    assert ce.item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("grid, size", [((3, 4), (11, 13)), ((2, 2), (8, 8)), ((5, 5), (5, 5))])
def test_upsampled_masked_average_matches_upsample_then_pool(grid, size):
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(2, 3, *grid, generator=g, dtype=torch.float64)
    mask = (torch.rand(2, *size, generator=g) > 0.6).double()
    got = L.upsampled_masked_average(feats, mask)
    want = np.zeros((2, 3))
    for b in range(2):
        up = np_bilinear(feats[b].numpy(), size, align_corners=False)
        m = mask[b].numpy()
        want[b] = (up * m).sum(axis=(1, 2)) / (m.sum() + 1e-5)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)
    # [B,1,H,W] masks too
    torch.testing.assert_close(L.upsampled_masked_average(feats, mask[:, None]), got)


def test_upsample_probability_aligns_corners():
    p = torch.tensor([[[[0.0, 1.0], [0.5, 0.25]]]])
    up = L.upsample_probability(p, (3, 3))
    np.testing.assert_allclose(up[0].numpy(), np_bilinear(p[0].numpy(), (3, 3), align_corners=True), rtol=1e-6)
    assert up[0, 0, 1, 1].item() == pytest.approx((0.0 + 1.0 + 0.5 + 0.25) / 4)
