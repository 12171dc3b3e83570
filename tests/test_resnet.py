import pytest
import torch

from fsmis.errors import InputError
from fsmis.models.resnet import ResNetTrunk, load_pretrained


@pytest.fixture(scope="module")
def r101():
    torch.manual_seed(0)
    return ResNetTrunk(depth=101, output_stride=8, out_channels=256).eval()


@pytest.fixture(scope="module")
def r50_state(tmp_path_factory):
    """A ResNet-50 (os 8) trunk with non-default BN statistics, and its files."""
    torch.manual_seed(1)
    net = ResNetTrunk(depth=50, output_stride=8, out_channels=32)
    with torch.no_grad():
        for name, buf in net.named_buffers():
            if name.endswith("running_mean"):
                buf.uniform_(-0.1, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
        for name, p in net.named_parameters():
            if name.endswith("bn3.weight"):  # non-zero-ish affine so eval output differs
                p.uniform_(0.2, 1.0)
    net.eval()
    d = tmp_path_factory.mktemp("weights")
    # deeplabv3_resnet101-style file: backbone. prefix, heads we ignore, wrapped in "model"
    deeplab = {f"backbone.{k}": v for k, v in net.state_dict().items()}
    deeplab["classifier.0.weight"] = torch.zeros(256, 2048, 1, 1)
    deeplab["classifier.4.bias"] = torch.zeros(21)
    deeplab["aux_classifier.0.weight"] = torch.zeros(256, 1024, 3, 3)
    deeplab_path = d / "deeplab_like.pth"
    torch.save({"model": deeplab}, deeplab_path)
    # plain ImageNet resnet-style file: no prefix, fc.*, no num_batches_tracked (old files)
    plain = {k: v for k, v in net.state_dict().items()
             if not k.startswith("localconv") and not k.endswith("num_batches_tracked")}
    plain["fc.weight"] = torch.zeros(1000, 2048)
    plain["fc.bias"] = torch.zeros(1000)
    plain_path = d / "resnet50_imagenet_like.pth"
    torch.save(plain, plain_path)
    return net, deeplab_path, plain_path


# ---------------------------------------------------------------- architecture

def test_r101_output_shape_and_stride(r101):
    assert r101.stride == 8 and r101.out_channels == 256
    with torch.no_grad():
        y = r101(torch.randn(2, 3, 64, 64))
        f = r101.trunk_features(torch.randn(1, 3, 64, 64))
    assert y.shape == (2, 256, 8, 8)
    assert f.shape == (1, 2048, 8, 8)


@pytest.mark.parametrize("os_, size", [(16, 4), (32, 2)])
def test_r50_output_stride(os_, size):
    net = ResNetTrunk(depth=50, output_stride=os_, out_channels=32).eval()
    assert net.stride == os_ and net.out_channels == 32
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 64)).shape == (1, 32, size, size)


def _conv2_geometry(layer):
    return [(b.conv2.stride[0], b.conv2.dilation[0], b.conv2.padding[0]) for b in layer]


def test_dilations_output_stride_8(r101):
    # (stride, dilation, padding) of every 3x3 conv: the first block of a dilated
    # stage keeps the dilation in force before that stage (torchvision semantics)
    assert _conv2_geometry(r101.layer1) == [(1, 1, 1)] * 3
    assert _conv2_geometry(r101.layer2) == [(2, 1, 1)] + [(1, 1, 1)] * 3
    assert _conv2_geometry(r101.layer3) == [(1, 1, 1)] + [(1, 2, 2)] * 22
    assert _conv2_geometry(r101.layer4) == [(1, 2, 2), (1, 4, 4), (1, 4, 4)]
    assert r101.layer2[0].downsample[0].stride == (2, 2)
    assert r101.layer3[0].downsample[0].stride == (1, 1)
    assert r101.layer4[0].downsample[0].stride == (1, 1)
    assert r101.conv1.stride == (2, 2) and r101.maxpool.stride == 2


def test_dilations_output_stride_16_and_32():
    n16 = ResNetTrunk(depth=50, output_stride=16)
    assert _conv2_geometry(n16.layer3) == [(2, 1, 1)] + [(1, 1, 1)] * 5
    assert _conv2_geometry(n16.layer4) == [(1, 1, 1), (1, 2, 2), (1, 2, 2)]
    n32 = ResNetTrunk(depth=50, output_stride=32)
    assert _conv2_geometry(n32.layer4) == [(2, 1, 1), (1, 1, 1), (1, 1, 1)]


def test_parameter_counts_equal_torchvision(r101):
    trunk = sum(p.numel() for n, p in r101.named_parameters() if not n.startswith("localconv"))
    # torchvision resnet101: 44,549,160 parameters, minus fc (2048*1000 + 1000)
    assert trunk == 44_549_160 - 2_049_000 == 42_500_160
    assert r101.localconv.weight.shape == (256, 2048, 1, 1) and r101.localconv.bias is None
    n50 = ResNetTrunk(depth=50, output_stride=8)
    # torchvision resnet50: 25,557,032 parameters, minus fc
    assert sum(p.numel() for n, p in n50.named_parameters()
               if not n.startswith("localconv")) == 25_557_032 - 2_049_000


def test_state_dict_keys_follow_torchvision_layout(r101):
    keys = set(r101.state_dict())
    for k in ["conv1.weight", "bn1.weight", "bn1.running_mean", "bn1.num_batches_tracked",
              "layer1.0.conv1.weight", "layer1.0.downsample.0.weight",
              "layer1.0.downsample.1.running_var", "layer2.0.downsample.1.bias",
              "layer3.22.conv3.weight", "layer4.2.bn3.bias", "localconv.weight"]:
        assert k in keys, k
    assert "layer1.1.downsample.0.weight" not in keys
    assert "conv1.bias" not in keys
    # torchvision resnet101 has 626 state-dict entries, 2 of them fc.*
    assert len(r101.trunk_state_keys()) == 624


def test_bad_arguments():
    with pytest.raises(ValueError, match="depth"):
        ResNetTrunk(depth=34)
    with pytest.raises(ValueError, match="output_stride"):
        ResNetTrunk(depth=50, output_stride=4)


# ---------------------------------------------------------------- pretrained loading

def test_round_trip_deeplab_style_file(r50_state):
    src, deeplab_path, _ = r50_state
    torch.manual_seed(2)
    dst = ResNetTrunk(depth=50, output_stride=8, out_channels=32).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(dst.trunk_features(x), src.trunk_features(x))
    proj_before = dst.localconv.weight.detach().clone()

    loaded = load_pretrained(dst, deeplab_path)
    assert loaded == sorted(dst.trunk_state_keys())
    # the projection is never loaded: it stays as initialised
    assert torch.equal(dst.localconv.weight, proj_before)
    assert not torch.equal(dst.localconv.weight, src.localconv.weight)
    with torch.no_grad():
        assert torch.equal(dst.trunk_features(x), src.trunk_features(x))
        dst.localconv.weight.copy_(src.localconv.weight)
        assert torch.equal(dst(x), src(x))


def test_round_trip_plain_resnet_file_via_constructor(r50_state):
    src, _, plain_path = r50_state
    dst = ResNetTrunk(depth=50, output_stride=8, out_channels=32, pretrained=plain_path).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(dst.trunk_features(x), src.trunk_features(x))


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(InputError, match="nope.pth: .*not found"):
        load_pretrained(ResNetTrunk(depth=50), path)


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.pth"
    path.write_bytes(b"PK\x03\x04 this is not a torch archive" * 10)
    with pytest.raises(InputError, match="corrupt.pth: cannot read"):
        load_pretrained(ResNetTrunk(depth=50), path)


def test_pickled_module_is_refused(tmp_path):
    path = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 2), path)  # a pickled object, not a state dict
    with pytest.raises(InputError, match="module.pth"):
        load_pretrained(ResNetTrunk(depth=50), path)


def test_shape_mismatch_names_file_and_key(tmp_path, r50_state):
    src = r50_state[0]
    sd = {f"backbone.{k}": v for k, v in src.state_dict().items()}
    sd["backbone.layer1.0.conv1.weight"] = torch.zeros(64, 64, 3, 3)
    path = tmp_path / "wrong_shape.pth"
    torch.save(sd, path)
    with pytest.raises(InputError, match=r"wrong_shape.pth: 1 tensors have the wrong shape.*"
                                         r"layer1\.0\.conv1\.weight"):
        load_pretrained(ResNetTrunk(depth=50, out_channels=32), path)


def test_missing_and_unexpected_keys(tmp_path, r50_state, r101):
    _, _, plain_path = r50_state
    # ResNet-50 weights into a ResNet-101 trunk: layer3.6 .. layer3.22 are missing
    with pytest.raises(InputError, match=r"resnet50_imagenet_like.pth: missing \d+ "
                                         r"ResNet-101 trunk keys: layer3\.10\."):
        load_pretrained(r101, plain_path)
    # non-strict: loads what matches
    torch.manual_seed(3)
    r101b = ResNetTrunk(depth=101)
    loaded = load_pretrained(r101b, plain_path, strict=False)
    assert "layer3.5.conv1.weight" in loaded and "layer3.6.conv1.weight" not in loaded
    # unexpected key
    src = r50_state[0]
    sd = dict(src.state_dict())
    sd["layer5.0.conv1.weight"] = torch.zeros(1)
    path = tmp_path / "extra.pth"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(InputError, match=r"extra.pth: 1 unexpected keys: layer5\.0\.conv1"):
        load_pretrained(ResNetTrunk(depth=50, out_channels=32), path)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(InputError, match="list.pth: not a state dict"):
        load_pretrained(ResNetTrunk(depth=50), path)
