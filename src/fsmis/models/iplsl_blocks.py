"""Building blocks of the IPLSL reconstruction (``fsmis.models.iplsl``).

Method-agnostic operators, each a reading of one phrase of the published abstract
(the model's docstring says which parts are reconstructions):

- :func:`peak_prototype`: the "peak prototype" -- per channel, the maximum of the
  feature over the masked cells (or the mean of the ``k`` largest values);
- :class:`EncoderDecoder`: the "deep encoding-decoding" path, a small U-shaped
  convolutional head on top of the backbone feature that yields high-level features
  upsampled to the same grid;
- :func:`low_level_tap`: the output of a named backbone layer captured by a forward
  hook while the backbone runs (the backbones themselves are not changed), brought to
  the feature grid;
- :func:`self_masks`: the query's own foreground/background cells from a first
  prediction (the self-learning pass);
- :func:`boundary_band`: the cells within ``radius`` of a predicted boundary
  (morphological dilation minus erosion), where the boundary complement acts, and
  :class:`BoundaryHead`, its learned form.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from fsmis.models.prototypes import MAP_EPS


def masked_averages(flat: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Masked average pooling with several masks at once: ``flat [B,C,n]``, ``masks
    [B,n,M]`` -> ``[B,M,C]``; column ``j`` equals ``prototypes.masked_average`` with
    mask ``j`` (one matrix product instead of a product and a sum per mask)."""
    return (torch.matmul(flat, masks) / (masks.sum(1, keepdim=True) + MAP_EPS)).transpose(1, 2)


def peak_prototype(feats: torch.Tensor, mask: torch.Tensor, level: float = 0.5, topk: int = 1) -> torch.Tensor:
    """Masked channel maximum: ``feats [B,C,h,w]``, ``mask [B|1,1,h,w]`` -> ``[B,C]``
    (or flattened: ``[B,C,n]``, ``[B|1,1,n]``).

    For each channel, the largest value over the cells whose mask is ``>= level``;
    with ``topk > 1`` the mean of the ``topk`` largest values (fewer if fewer cells
    are masked). A mask with no cell at the level gives a zero vector (whose cosine
    score is 0, see ``prototypes.cosine_scores``).
    """
    b = feats.shape[0]
    keep = (mask >= level).flatten(2).expand(b, 1, -1)  # [B,1,n]
    flat = feats.flatten(2).masked_fill(~keep, float("-inf"))
    k = min(int(topk), flat.shape[-1])
    top = flat.topk(k, dim=-1).values if k > 1 else flat.amax(dim=-1, keepdim=True)
    count = keep.sum(-1).clamp(max=k)  # [B,1] cells that entered the mean
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    return top.sum(-1) / count.clamp(min=1).to(feats.dtype)


class EncoderDecoder(nn.Module):
    """U-shaped head on the backbone feature ``[B,C,h,w]``: ``depth`` stride-2 3x3 conv
    stages (BN, ReLU) down to ``h / 2^depth``; back up to ``h / 2`` stage by stage
    (bilinear upsampling, concatenation with the encoder feature of that scale, 1x1
    conv, BN, ReLU); a 1x1 conv (no bias, no activation: signed features, as the
    backbones' projections) and bilinear upsampling to the grid give
    ``[B,channels,h,w]``. Nothing runs at the full grid but the last upsampling
    (on a CPU, full-grid convolutions would cost as much as the rest of the head)."""

    def __init__(self, in_channels: int, channels: int, depth: int):
        super().__init__()
        if depth < 1:
            raise ValueError(f"decoder_depth must be at least 1, got {depth}")
        self.down = nn.ModuleList()
        self.up = nn.ModuleList()
        cin = in_channels
        for _ in range(depth):
            self.down.append(nn.Sequential(nn.Conv2d(cin, channels, 3, stride=2, padding=1, bias=False),
                                           nn.BatchNorm2d(channels), nn.ReLU(inplace=True)))
            cin = channels
        for _ in range(depth - 1):  # encoder features at h/2 ... h/2^(depth-1)
            self.up.append(nn.Sequential(nn.Conv2d(2 * channels, channels, 1, bias=False),
                                         nn.BatchNorm2d(channels), nn.ReLU(inplace=True)))
        self.out = nn.Conv2d(channels, channels, 1, bias=False)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        skips = []
        for stage in self.down:
            x = stage(x)
            skips.append(x)
        for stage, skip in zip(self.up, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = stage(torch.cat([x, skip], 1))
        return F.interpolate(self.out(x), size=size, mode="bilinear", align_corners=False)


class BoundaryHead(nn.Module):
    """Learned boundary complement: the low-level feature and the current class
    probabilities ``[B, C_low + 2, h, w]`` -> 3x3 conv (``hidden``, ReLU) -> 1x1 conv ->
    a two-class residual ``[B,2,h,w]``. The last convolution starts at zero, so a new
    head leaves the prediction as it is."""

    def __init__(self, low_channels: int, hidden: int):
        super().__init__()
        self.conv = nn.Conv2d(low_channels + 2, hidden, 3, padding=1)
        self.out = nn.Conv2d(hidden, 2, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, low: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.conv(torch.cat([low, torch.softmax(scores, 1)], 1))))


def layer_channels(module: nn.Module) -> int:
    """Output channels of a layer: those of its last convolution or normalisation."""
    channels = None
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase):
            channels = m.num_features
        elif isinstance(m, nn.Conv2d):
            channels = m.out_channels
    if channels is None:
        raise ValueError(f"cannot tell the output channels of {type(module).__name__}")
    return channels


def default_low_level_layer(backbone: nn.Module) -> str:
    """The earliest stage of the known backbones: ``stem`` (small_cnn, stride 4) or
    ``layer1`` (ResNet trunks, stride 4 before the stride-8 output)."""
    for name in ("stem", "layer1"):
        if isinstance(getattr(backbone, name, None), nn.Module):
            return name
    raise ValueError(f"no low-level layer known for {type(backbone).__name__}; set low_level_layer")


@contextmanager
def low_level_tap(backbone: nn.Module, layer: str):
    """While active, every forward of ``backbone`` stores the output of its submodule
    ``layer`` in the yielded list (a forward hook, removed on exit)."""
    store: list[torch.Tensor] = []
    handle = backbone.get_submodule(layer).register_forward_hook(lambda _m, _i, out: store.append(out))
    try:
        yield store
    finally:
        handle.remove()


def to_grid(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A finer map average-pooled to the feature grid (coarser: bilinear)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def self_masks(scores: torch.Tensor, fg_threshold: float, bg_threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The query's own cells from a first prediction ``[B,2,h,w]``: foreground where
    the soft-max foreground probability exceeds ``fg_threshold``, background where the
    background probability exceeds ``bg_threshold``; ``[B,1,h,w]`` each, no gradient."""
    prob = torch.softmax(scores.detach(), dim=1)
    return (prob[:, 1:] > fg_threshold).to(scores.dtype), (prob[:, :1] > bg_threshold).to(scores.dtype)


def boundary_band(fg: torch.Tensor, radius: int) -> torch.Tensor:
    """``[B,1,h,w]`` binary foreground -> ``[B,1,h,w]`` band: 1 where the dilation and
    the erosion by a ``(2 radius + 1)`` square differ (cells within ``radius`` of the
    boundary, on both sides), 0 elsewhere."""
    k = 2 * int(radius) + 1
    dilated = F.max_pool2d(fg, k, stride=1, padding=radius)
    eroded = -F.max_pool2d(-fg, k, stride=1, padding=radius)
    return dilated - eroded
