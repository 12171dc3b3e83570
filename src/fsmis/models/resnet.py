"""Dilated ResNet-50/101 trunk, the feature extractor of SSL-ALPNet and DSPNet.

The papers use torchvision's ``deeplabv3_resnet101`` (COCO weights) and keep only its
ResNet-101 trunk: stride replaced by dilation in ``layer3`` and ``layer4`` (output
stride 8), followed by a new 1x1 convolution 2048 -> 256 without bias (the reference's
``localconv``, randomly initialised). The DeepLab ASPP head the reference also builds
is never used in its forward pass, so it is not built here.

Architecture (written from the published description; it matches torchvision's
layout so that its checkpoints load):

* stem: 7x7 conv, stride 2, padding 3 (no bias) -> BN -> ReLU -> 3x3 max-pool,
  stride 2, padding 1;
* four stages of Bottleneck blocks (1x1 -> 3x3 -> 1x1, expansion 4, the stride sits
  on the 3x3 conv, "ResNet v1.5"), widths 64/128/256/512, block counts
  ``[3, 4, 6, 3]`` (depth 50) or ``[3, 4, 23, 3]`` (depth 101); the first block of a
  stage gets a projection shortcut ``downsample = Sequential(1x1 conv, BN)`` whenever
  its stride is not 1 or its channel count changes;
* dilation (``replace_stride_with_dilation``): when a stage is dilated, its stride-2
  becomes stride 1 and the running dilation is multiplied by 2. The first block of
  that stage still uses the dilation that was in force *before* the stage, the
  following blocks use the new one. Output stride 8 dilates layer3 and layer4:
  layer3 block 0 dilation 1, blocks 1.. dilation 2; layer4 block 0 dilation 2, blocks
  1.. dilation 4. Output stride 16 dilates layer4 only (block 0 dilation 1, then 2).
  Padding of every 3x3 conv equals its dilation, so spatial size is kept.
* initialisation when no weights are loaded: convs of the trunk Kaiming-normal
  (fan_out, ReLU gain), BN weight 1 and bias 0. The 1x1 projection keeps PyTorch's
  default ``Conv2d`` initialisation, as in the reference.

Parameter names are those of torchvision (``conv1.weight``, ``bn1.running_mean``,
``layer1.0.conv1.weight``, ``layer2.0.downsample.0.weight``,
``layer2.0.downsample.1.weight`` ...), so :func:`load_pretrained` accepts a state
dict of ``deeplabv3_resnet101`` (``backbone.`` prefix; ``classifier.*`` and
``aux_classifier.*`` ignored) or of a plain ImageNet ``resnet50``/``resnet101``
(``fc.*`` ignored).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

from fsmis.errors import InputError

__all__ = ["Bottleneck", "ResNetTrunk", "load_pretrained", "LAYERS", "DILATE_FOR_STRIDE"]

#: blocks per stage for each supported depth
LAYERS: dict[int, tuple[int, int, int, int]] = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}

#: which of (layer2, layer3, layer4) trade their stride for dilation, per output stride
DILATE_FOR_STRIDE: dict[int, tuple[bool, bool, bool]] = {
    8: (False, True, True),
    16: (False, False, True),
    32: (False, False, False),
}

#: checkpoint key prefixes that belong to heads we never build
_IGNORED_PREFIXES = ("classifier.", "aux_classifier.", "fc.")
#: name of the new projection conv (always freshly initialised, never loaded)
_PROJECTION = "localconv"


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, dilation) -> 1x1 residual block with 4x channel expansion."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride,
                               padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + shortcut)


class ResNetTrunk(nn.Module):
    """ResNet trunk up to ``layer4`` plus a 1x1 projection ``localconv`` (no bias).

    ``forward(x[B,3,H,W]) -> [B, out_channels, ceil(H/stride), ceil(W/stride)]``
    (exactly ``H/stride`` when ``H`` is a multiple of 32). ``trunk_features(x)`` gives
    the 2048-channel ``layer4`` output before the projection.

    Args:
        depth: 50 or 101.
        output_stride: 8 (DeepLabV3, the papers'), 16 or 32 (plain ResNet).
        out_channels: channels of the 1x1 projection (the papers: 256).
        pretrained: optional path to a state-dict file, loaded with
            :func:`load_pretrained` (the projection stays random).
        strict_pretrained: passed to :func:`load_pretrained` as ``strict``.
    """

    def __init__(self, depth: int = 101, output_stride: int = 8, out_channels: int = 256,
                 pretrained: str | os.PathLike | None = None, strict_pretrained: bool = True):
        super().__init__()
        if depth not in LAYERS:
            raise ValueError(f"ResNet depth must be one of {sorted(LAYERS)}, got {depth!r}")
        if output_stride not in DILATE_FOR_STRIDE:
            raise ValueError(
                f"output_stride must be one of {sorted(DILATE_FOR_STRIDE)}, got {output_stride!r}")
        if int(out_channels) < 1:
            raise ValueError(f"out_channels must be positive, got {out_channels!r}")
        self.depth = depth
        self.stride = output_stride
        self.out_channels = int(out_channels)
        self.trunk_channels = 512 * Bottleneck.expansion

        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        self._in_ch = 64
        self._dilation = 1
        blocks = LAYERS[depth]
        dilate = (False,) + DILATE_FOR_STRIDE[output_stride]
        strides = (1, 2, 2, 2)
        for i, (width, n, s, d) in enumerate(zip((64, 128, 256, 512), blocks, strides, dilate)):
            self.add_module(f"layer{i + 1}", self._stage(width, n, s, d))
        del self._in_ch, self._dilation

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

        # created after the init loop: keeps PyTorch's default Conv2d initialisation
        self.localconv = nn.Conv2d(self.trunk_channels, self.out_channels, kernel_size=1,
                                   bias=False)

        if pretrained is not None:
            load_pretrained(self, pretrained, strict=strict_pretrained)

    def _stage(self, width: int, n_blocks: int, stride: int, dilate: bool) -> nn.Sequential:
        dilation_before = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        out_ch = width * Bottleneck.expansion
        downsample = None
        if stride != 1 or self._in_ch != out_ch:
            downsample = nn.Sequential(
                nn.Conv2d(self._in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )
        blocks = [Bottleneck(self._in_ch, width, stride, dilation_before, downsample)]
        self._in_ch = out_ch
        blocks += [Bottleneck(out_ch, width, 1, self._dilation) for _ in range(1, n_blocks)]
        return nn.Sequential(*blocks)

    def trunk_features(self, x: torch.Tensor) -> torch.Tensor:
        """``layer4`` output, ``[B, 2048, h, w]``."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected input [B,3,H,W], got {tuple(x.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.localconv(self.trunk_features(x))

    def trunk_state_keys(self) -> list[str]:
        """State-dict keys of the pretrained-loadable part (everything but ``localconv``)."""
        return [k for k in self.state_dict() if not k.startswith(_PROJECTION + ".")]


def _unwrap(obj, path) -> Mapping:
    """The tensor mapping inside a loaded checkpoint object."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise InputError(path, f"not a state dict (a {type(obj).__name__} was stored)")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise InputError(path, f"not a state dict: {len(bad)} entries are not named tensors "
                               f"(e.g. {bad[0]!r})")
    return obj


def _preview(keys, n: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_pretrained(trunk: ResNetTrunk, path: str | os.PathLike, strict: bool = True) -> list[str]:
    """Load ResNet trunk weights from a state-dict file into ``trunk``.

    The file is read with ``torch.load(map_location='cpu', weights_only=True)``. It may
    hold the state dict itself or a dict with it under ``state_dict`` or ``model``.
    Keys lose a leading ``module.`` and/or ``backbone.``; keys under ``classifier.``,
    ``aux_classifier.`` and ``fc.`` (heads we never build) and under ``localconv.``
    (the projection, always freshly initialised) are dropped. BatchNorm
    ``num_batches_tracked`` buffers may be absent (old torchvision checkpoints).

    With ``strict`` (default) every remaining trunk key must be present and no other
    key may remain; without it, missing keys keep their current values and unknown
    keys are ignored, but at least one key must load. Shape mismatches are always an
    error. Any problem raises :class:`~fsmis.errors.InputError` naming the file.

    Returns the sorted list of trunk keys that were loaded.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(path, "pretrained weights file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt archive, pickled objects refused, ...
        raise InputError(path, f"cannot read as a torch state dict ({type(err).__name__}: "
                               f"{str(err).strip().splitlines()[0] if str(err).strip() else ''})") from None
    raw = _unwrap(obj, path)

    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        name = key
        for prefix in ("module.", "backbone."):
            if name.startswith(prefix):
                name = name[len(prefix):]
        if name.startswith(_IGNORED_PREFIXES) or name.startswith(_PROJECTION + "."):
            continue
        if name in state:
            raise InputError(path, f"key {name!r} appears twice after prefix stripping")
        state[name] = value

    own = trunk.state_dict()
    expected = set(trunk.trunk_state_keys())
    optional = {k for k in expected if k.endswith(".num_batches_tracked")}
    missing = expected - optional - set(state)
    unexpected = set(state) - expected
    mismatched = [f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
                  for k in sorted(set(state) & expected) if state[k].shape != own[k].shape]
    arch = f"ResNet-{trunk.depth} trunk"
    if mismatched:
        raise InputError(path, f"{len(mismatched)} tensors have the wrong shape for a {arch}: "
                               + _preview(mismatched, 5))
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} {arch} keys: {_preview(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_preview(unexpected)}")
        raise InputError(path, "; ".join(parts))
    loadable = {k: v for k, v in state.items() if k in expected}
    if not loadable:
        raise InputError(path, f"no {arch} weights found in the file")

    trunk.load_state_dict(loadable, strict=False)
    return sorted(loadable)
