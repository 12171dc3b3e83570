"""The ADNet lineage's shared trunk and head operators (Q-Net, CAT-Net, RPT, GMRD).

Q-Net (ZJLAB-AMMI/Q-Net ``models/encoder.py``), RPT and GMRD use one encoder,
``Res101Encoder``; this module writes it with our ResNet blocks
(``fsmis.models.resnet.Bottleneck``). (CAT-Net's code uses ADNet's encoder instead:
the DeepLabV3 trunk at output stride 8 with a 2048 -> 256 projection, and one learned
scalar threshold.)

- torchvision's ResNet-101 with ``replace_stride_with_dilation=[True, True, False]``:
  layer2 and layer3 keep stride 1 and dilate (layer2: block 0 dilation 1, then 2;
  layer3: block 0 dilation 2, then 4), layer4 keeps its stride 2 at dilation 4. At
  256 x 256 input, layer3 is 64 x 64 (stride 4) and layer4 32 x 32 (stride 8).
- ``reduce1`` (1x1 conv 1024 -> 512, no bias) on layer3: the features every lineage
  method uses ('down2'); ``reduce2`` (1x1 conv 2048 -> 512, no bias) on layer4: Q-Net's
  second path ('down3'); every reference builds it, of these methods only Q-Net uses it
  (:meth:`LineageEncoder.levels`; ``forward`` skips it).
- the threshold ``t = reduce1d(fc(avgpool(layer4)))``: global average pool,
  torchvision's ``fc`` (2048 -> 1000), ``reduce1d`` (1000 -> 1); one number per image,
  no nonlinearity.
- initialisation: every conv (the reduce convs too) Kaiming-normal (fan_out, ReLU
  gain), BatchNorm weight 1 and bias 0, the two linear layers PyTorch's default.
- weights: the reference copies a checkpoint into the module by key ('deeplabv3':
  torchvision's ``deeplabv3_resnet101`` COCO state dict, whose ``backbone.*`` keys are
  this module's; ``fc``, the reduce convs and ``reduce1d`` stay random since the
  DeepLab file has none). Ours loads the same file with
  :func:`fsmis.models.resnet.load_pretrained` (``torch.load(weights_only=True)``;
  every trunk key must be present, so a wrong file fails instead of being silently
  ignored). Reference defect: its 'resnet101' option (an ImageNet file, keys without
  ``backbone.``) matches no key and loads nothing; ours loads that file's trunk too.
- the parameter names are the reference encoder's (``backbone.layer1.0.conv1.weight``,
  ``reduce1.weight``, ``reduce1d.bias`` ...): a reference checkpoint's ``encoder.*``
  keys map to ours by replacing that prefix with the segmenter's ``backbone.``.

Other backbones (``small_cnn``, ``resnet50``; ours, no reference): the backbone's
features and a threshold head, global average pool -> linear (C -> 1), the same
``(features, t)`` contract; its coarse path (:meth:`ThresholdHead.levels`) is the
features average-pooled 2 x 2 (ceil mode), half the grid as layer4 is for the
ResNet-101 trunk.

Head operators of the lineage (ADNet's anomaly-detection head, the same code in all
four references): ``sim = -cos(feature, prototype) * 20`` (``F.cosine_similarity``),
foreground probability ``p = 1 - sigmoid(0.5 (sim - t))``; probabilities are
upsampled bilinearly with ``align_corners=True``; losses are NLL on
``log(clamp((1-p, p), eps, 1-eps))`` (eps = float32 eps), the query's weighted
(background :attr:`LineageParams.bg_weight` = 0.1, foreground 1).
:func:`probability_logits` turns ``p`` into the ``[B,2,...]`` logits the trainer
expects: their softmax is ``(1-p, p)`` and their cross-entropy the reference's NLL.
Masked average pooling upsamples the features to the mask's size (bilinear,
``align_corners=False``) first: :func:`upsampled_masked_average` computes that
without building the upsampled tensor.

Shared operators defined here (new, not in ``prototypes``): ``similarity``,
``upsampled_masked_average``, ``upsample_probability``, ``probability_logits``,
``lineage_prediction``, ``lineage_nll``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fsmis.models import prototypes as P
from fsmis.models.fewshot import FewShotSegmenter
from fsmis.models.params import MethodParams, param
from fsmis.models.resnet import Bottleneck, load_pretrained

__all__ = ["LineageEncoder", "ThresholdHead", "LineageParams", "LineageSegmenter", "similarity",
           "upsampled_masked_average", "upsample_probability", "probability_logits", "lineage_prediction",
           "lineage_nll", "LINEAGE_CHANNELS", "LINEAGE_SCALE", "PROB_EPS"]

LINEAGE_CHANNELS = 512  # reduce1 / reduce2 output channels
LINEAGE_SCALE = 20.0  # the head's cosine multiplier ("scaler")
PROB_EPS = float(torch.finfo(torch.float32).eps)  # the references' clamp of probabilities


# -- trunk ----------------------------------------------------------------------------------------------------------

class _ResNet101(nn.Module):
    """torchvision's ``resnet101(replace_stride_with_dilation=[True, True, False])``,
    module names included (``conv1`` ... ``layer4``, ``avgpool``, ``fc``)."""

    depth = 101

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_ch, dilation = 64, 1
        for i, (width, blocks, dilate) in enumerate(zip((64, 128, 256, 512), (3, 4, 23, 3),
                                                        (False, True, True, False))):
            stride = 1 if i == 0 else 2
            before = dilation  # torchvision: block 0 keeps the dilation in force before the stage
            if dilate:
                dilation, stride = dilation * stride, 1
            out_ch = width * Bottleneck.expansion
            down = None
            if stride != 1 or in_ch != out_ch:
                down = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))
            layer = [Bottleneck(in_ch, width, stride, before, down)]
            layer += [Bottleneck(out_ch, width, 1, dilation) for _ in range(1, blocks)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
            in_ch = out_ch
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, 1000)

    def trunk_state_keys(self) -> list[str]:
        """What a pretrained file must provide (``load_pretrained``): all but ``fc``."""
        return [k for k in self.state_dict() if not k.startswith("fc.")]


class LineageEncoder(nn.Module):
    """The lineage's ``Res101Encoder``: ``forward(x) -> (features [B,512,h,w], t [B,1])``
    with ``h = ceil(H/4)``; :meth:`levels` adds the layer4 path ('down3', ``ceil(h/2)``).

    ``pretrained``: path of a torchvision DeepLabV3-ResNet101 (or plain ResNet-101)
    state dict; its trunk weights are loaded, the rest stays as initialised.
    """

    stride = 4
    out_channels = LINEAGE_CHANNELS

    def __init__(self, pretrained: str | os.PathLike | None = None):
        super().__init__()
        self.backbone = _ResNet101()
        self.reduce1 = nn.Conv2d(1024, LINEAGE_CHANNELS, kernel_size=1, bias=False)
        self.reduce2 = nn.Conv2d(2048, LINEAGE_CHANNELS, kernel_size=1, bias=False)
        self.reduce1d = nn.Linear(1000, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if pretrained is not None:
            load_pretrained(self.backbone, pretrained, strict=True)

    def _run(self, x: torch.Tensor, coarse: bool):
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected input [B,3,H,W], got {tuple(x.shape)}")
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        x = b.layer3(b.layer2(b.layer1(x)))
        fine = self.reduce1(x)
        x = b.layer4(x)
        t = self.reduce1d(b.fc(torch.flatten(b.avgpool(x), 1)))
        return fine, (self.reduce2(x) if coarse else None), t

    def forward(self, x: torch.Tensor):
        fine, _, t = self._run(x, coarse=False)
        return fine, t

    def levels(self, x: torch.Tensor):
        """``(down2 [B,512,h,w], down3 [B,512,ceil(h/2),ceil(w/2)], t [B,1])``."""
        return self._run(x, coarse=True)


class ThresholdHead(nn.Module):
    """Any ``fsmis`` backbone plus a threshold head: ``forward(x) -> (features, t)``,
    ``t = linear(global average pool(features))`` (ours: the lineage's contract on
    backbones the references do not have)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.features = backbone
        self.out_channels = backbone.out_channels
        self.stride = backbone.stride
        self.threshold = nn.Linear(backbone.out_channels, 1)

    def forward(self, x: torch.Tensor):
        f = self.features(x)
        return f, self.threshold(f.mean(dim=(2, 3)))

    def levels(self, x: torch.Tensor):
        """``(features, features average-pooled 2x2 with ceil mode, t)``."""
        f, t = self(x)
        return f, F.avg_pool2d(f, 2, ceil_mode=True), t


# -- head operators -------------------------------------------------------------------------------------------------

def similarity(feats: torch.Tensor, prototype: torch.Tensor, scale: float = LINEAGE_SCALE) -> torch.Tensor:
    """ADNet's anomaly score ``-cos(feature, prototype) * scale``: ``feats [B,C,h,w]``,
    ``prototype [B,C]`` (one per image) or ``[1,C]`` -> ``[B,h,w]``."""
    return -F.cosine_similarity(feats, prototype[..., None, None], dim=1) * scale


def lineage_prediction(sim: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Foreground probability ``1 - sigmoid(0.5 (sim - t))``; ``t [B,1]`` (or ``[1,1]``)
    applies to batch element ``b`` of ``sim [B,...]``."""
    return 1.0 - torch.sigmoid(0.5 * (sim - t.reshape(t.shape[0], *[1] * (sim.dim() - 1))))


def probability_logits(p: torch.Tensor) -> torch.Tensor:
    """``p [B,1,...]`` -> ``[B,2,...]`` = ``log(clamp(1-p)), log(clamp(p))`` (clamped to
    ``[eps, 1-eps]``, as the references): softmax gives ``(1-p, p)`` (up to rounding),
    and ``nll_loss`` of it is the references' NLL of the clamped log-probabilities."""
    return torch.log(torch.clamp(torch.cat([1.0 - p, p], dim=1), PROB_EPS, 1.0 - PROB_EPS))


def lineage_nll(p: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """The references' loss: ``NLLLoss(log(clamp((1-p, p))), target)``, ``p [B,1,H,W]``,
    ``target [B,H,W]`` in {0, 1} (255 ignored)."""
    return F.nll_loss(probability_logits(p), target.long(), weight=weight, ignore_index=255)


def upsample_probability(p: torch.Tensor, size) -> torch.Tensor:
    """Bilinear, ``align_corners=True``, as the references upsample predictions."""
    return F.interpolate(p, size=tuple(size), mode="bilinear", align_corners=True)


def _interp_rows(n: int, size: int, like: torch.Tensor) -> torch.Tensor:
    """``[n, size]``: row ``i`` = the weights bilinear upsampling (``align_corners=False``)
    gives input row ``i`` at every output row."""
    eye = torch.eye(n, dtype=like.dtype, device=like.device)[None]
    return F.interpolate(eye, size=size, mode="linear", align_corners=False)[0]


def upsampled_masked_average(feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The references' ``getFeatures``: masked average pooling of ``feats [B,C,h,w]``
    upsampled (bilinear, ``align_corners=False``) to the size of ``mask [B,H,W]`` or
    ``[B,1,H,W]`` -> ``[B,C]``.

    Upsampling is linear and separable, ``up(f) = R_h^T f R_w``, so
    ``sum(m * up(f)) = sum(f * (R_h m R_w^T))``: the mask is pulled back to the feature
    grid instead of upsampling C channels (the same value, summed in another order).
    """
    if mask.dim() == 3:
        mask = mask[:, None]
    mask = mask.to(feats.dtype)
    (h, w), (hh, ww) = feats.shape[-2:], mask.shape[-2:]
    pulled = _interp_rows(h, hh, feats) @ mask @ _interp_rows(w, ww, feats).t()
    return (feats * pulled).sum(dim=(2, 3)) / (mask.sum(dim=(2, 3)) + P.MAP_EPS)


# -- the segmenter base ---------------------------------------------------------------------------------------------

def refine_prototype(feats: torch.Tensor, proto: torch.Tensor, pred: torch.Tensor, predict, iters: int,
                     lr: float) -> torch.Tensor:
    """Q-Net's test-time prototype refinement (``updatePrototype``; CAT-Net's is the
    same code): ``feats [B,C,h,w]``, ``proto [1|B,C]``, ``pred [B,h,w]`` the first
    prediction, ``predict(feats, proto [B,C]) -> [B,h,w]`` -> refined ``[B,C]`` (one per
    query, detached). Adam (lr, default betas) on the prototype; each step: where
    ``pred > 1 - pred`` the features are replaced by the prototype; both tensors are
    min-max normalised over each query's ``C x h x w`` and passed through a sigmoid;
    loss ``BCE(input = original, target = replaced)``; then ``pred = predict(...)``.
    Adam is elementwise, so B prototypes refined with the sum of the per-query losses
    are B independent runs."""
    feats = feats.detach()
    proto = proto.detach().expand(feats.shape[0], -1).clone().requires_grad_(True)
    opt = torch.optim.Adam([proto], lr=lr)
    dims = (1, 2, 3)

    def normalised(x):
        lo, hi = x.amin(dims, keepdim=True), x.amax(dims, keepdim=True)
        return torch.sigmoid((x - lo) / (hi - lo))

    original = normalised(feats)
    for _ in range(iters):
        with torch.enable_grad():
            fg = (pred > 1.0 - pred)[:, None].to(feats.dtype)  # argmax of (1-p, p), a tie is background
            replaced = feats * (1.0 - fg) + proto[:, :, None, None] * fg
            loss = F.binary_cross_entropy(original, normalised(replaced), reduction="none").mean(dims).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            pred = predict(feats, proto)
    return proto.detach()


@dataclass(frozen=True)
class LineageParams(MethodParams):
    """Fields every ADNet-lineage method has."""

    bg_weight: float = param(0.1, "Background weight of the query loss (foreground 1), as the lineage's reference "
                                  "NLLLoss weight [0.1, 1.0]; replaces train.bg_weight/fg_weight.", ge=0)


class LineageSegmenter(FewShotSegmenter):
    """Base of the ADNet-lineage methods: the lineage trunk (or another backbone with a
    threshold head), ``t`` packed with the features, the lineage's class weights.

    ``encode(images) -> [B, C+1, h, w]``: features and ``t`` broadcast as the last
    channel (evaluation caches it per slice); :meth:`split` undoes it.
    """

    Params = LineageParams

    @classmethod
    def build_backbone(cls, model_cfg: dict) -> nn.Module:
        """``deeplabv3_resnet101`` -> :class:`LineageEncoder` (512 channels whatever
        ``feature_dim`` says: the reference's ``reduce1``); others ->
        ``backbones.build`` wrapped in a :class:`ThresholdHead`."""
        from fsmis.models import backbones

        name = model_cfg.get("backbone", "deeplabv3_resnet101")
        if name == "deeplabv3_resnet101":
            return LineageEncoder(pretrained=model_cfg.get("pretrained"))
        return ThresholdHead(backbones.build(name, feature_dim=model_cfg.get("feature_dim", 256),
                                             pretrained=model_cfg.get("pretrained")))

    def query_loss_weights(self, train_cfg: dict) -> tuple[float, float]:
        return float(self.params.bg_weight), 1.0

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        feats, t = self.backbone(images)
        return self.pack(feats, t)

    @staticmethod
    def pack(feats: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``feats [B,C,h,w]``, ``t [B,1]`` -> ``[B,C+1,h,w]``."""
        b, _, h, w = feats.shape
        return torch.cat([feats, t.reshape(b, 1, 1, 1).to(feats.dtype).expand(b, 1, h, w)], dim=1)

    @staticmethod
    def split(packed: torch.Tensor):
        """``[B,C+1,h,w]`` -> ``(feats [B,C,h,w], t [B,1])``."""
        return packed[:, :-1], packed[:, -1:, 0, 0]

    lineage_prediction = staticmethod(lineage_prediction)
    probability_logits = staticmethod(probability_logits)
