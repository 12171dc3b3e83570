"""Feature encoders. Every backbone maps ``[B,3,H,W]`` to ``[B,C,H/s,W/s]`` and has
``out_channels`` (C) and ``stride`` (s) attributes.

- ``deeplabv3_resnet101``: the papers' trunk (dilated ResNet-101, output stride 8,
  1x1 conv 2048->C), optional pretrained state dict (``fsmis.models.resnet``).
- ``resnet50``: the same design on ResNet-50.
- ``small_cnn``: a CPU-sized encoder for the embedded demo (output stride 4, so a
  128x128 slice gives the same 32x32 feature grid the papers get from 256x256).
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class _DilatedResidual(nn.Module):
    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.conv(x))


class SmallCNN(nn.Module):
    """Stride-4 encoder with a dilated context stack.

    The dilated residual blocks (dilations 1, 2, 4, 8 on the 1/4 grid) give a
    receptive field of about 130 input pixels, so a feature knows where in the body
    it sits: that context, not intensity alone, separates liver from spleen.
    Width 32 rather than 48 halves a CPU training step (31 vs 61 ms at 128x128,
    measured) at a similar Dice on the demo.
    """

    def __init__(self, out_channels: int = 64, width: int = 32):
        super().__init__()
        self.stem = nn.Sequential(
            _conv_bn(3, width // 2, stride=2),
            _conv_bn(width // 2, width, stride=2),
        )
        self.context = nn.Sequential(*[_DilatedResidual(width, d) for d in (1, 2, 4, 8)])
        self.head = nn.Conv2d(width, out_channels, 1, bias=False)
        self.out_channels = out_channels
        self.stride = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.context(self.stem(x)))


def build(name: str, feature_dim: int = 256, pretrained: str | None = None) -> nn.Module:
    if name == "small_cnn":
        if pretrained:
            raise ValueError("small_cnn has no pretrained weights; set model.pretrained to null")
        return SmallCNN(out_channels=feature_dim)
    if name in ("deeplabv3_resnet101", "resnet50"):
        from fsmis.models.resnet import ResNetTrunk

        depth = 101 if name == "deeplabv3_resnet101" else 50
        return ResNetTrunk(depth=depth, output_stride=8, out_channels=feature_dim, pretrained=pretrained)
    raise ValueError(f"unknown backbone {name!r}; known: small_cnn, deeplabv3_resnet101, resnet50")
