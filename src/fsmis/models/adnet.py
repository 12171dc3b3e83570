"""ADNet (Hansen et al., "Anomaly detection-inspired few-shot medical image
segmentation through self-supervision with supervoxels", Medical Image Analysis 2022;
code: github.com/sha168/ADNet, ``models/fewshot_anom.py`` and ``main_train.py``).

ADNet models the foreground only: one prototype, and every query position whose
features are far from it is an anomaly, i.e. background. Operators, as the reference
code computes them (the paper says the same where it says anything):

- prototype: masked average pooling of the support features. The reference first
  upsamples the features (bilinear, ``align_corners=False``) to the mask's size and
  pools there (``getFeatures``). Pooling upsampled features ``U f`` with the
  image-resolution mask ``m`` is pooling ``f`` on the feature grid with the mask
  ``U^T m`` (the adjoint of the upsampling; its weights sum to one per image pixel,
  so ``sum U^T m = sum m``): ``lineage.upsampled_masked_average`` computes that with
  two small matrix products, equal to the reference up to float rounding and without
  the ``C x H x W`` upsampled feature map. It is *not* the project's usual pooling
  (``prototypes.resize_mask``, the mask bilinearly downsampled): at stride 8 that mask
  samples each cell at its centre (values in {0, .5, 1} along an edge), while ``U^T m``
  is the mask's average under a tent of 16 x 16 pixels, fractional on every cell an
  edge passes near. The difference is small (``benchmarks/parity/adnet.py``, random
  ResNet-101 weights, an organ-sized ellipse at 256 x 256: prototype cosine 0.99994,
  0.3 % of the predicted pixels change). ``prototype_pooling="grid"`` uses the
  downsampled mask instead.
- anomaly score ``S = -scale * cos(q, p)`` (``negSim``, ``F.cosine_similarity``,
  scale 20);
- foreground probability ``p = 1 - sigmoid(0.5 * (S - T))`` (``getPred``) with one
  learned scalar threshold ``T``, a parameter initialised at -10 (``threshold_init``);
- ``p`` is upsampled to the image size (bilinear, ``align_corners=True``, as the
  reference; the other methods here upsample with ``align_corners=False``);
- threshold loss ``t_loss_scaler * T / scale`` (``t_loss``, the same ``scaler`` 20
  divides it; ``--t_loss_scaler`` 1): returned as the ``"threshold"`` loss;
- alignment loss (``alignLoss``): the query's prediction on the feature grid
  (``argmax`` of ``(1 - p, p)``, a tie is background) masks the query features into
  a query prototype (pooled on the feature grid, no upsampling, over every query of
  the batch); the same ``T`` segments the support with it; ``p`` upsampled
  (``align_corners=True``) and NLL against the support mask (log of ``(1-p, p)``
  clamped to ``[eps, 1 - eps]``, eps = float32 eps, unweighted mean). An empty query
  prediction skips the loss (0, no gradient), as the reference;
- query loss: NLL of the clamped ``log(1 - p), log(p)`` weighted background 0.1,
  foreground 1 (``--bg_wt`` 0.1, which no script of the reference overrides):
  :meth:`ADNet.query_loss_weights` returns ``(bg_weight, 1)`` for the trainer's
  cross-entropy.

Logits: the method returns ``log(clamp(1-p)), log(clamp(p))`` with the reference's
clamp to ``[eps, 1 - eps]`` (``lineage.probability_logits``). Their soft-max is ``(1-p, p)``
renormalised by ``clamp(1-p) + clamp(p) = 1`` up to float rounding (both sides clamp
together: ``p < eps`` iff ``1 - p > 1 - eps``), so the trainer's cross-entropy equals
the reference's ``NLLLoss`` (values within ~1e-7, the same gradients). The evaluation
takes the foreground where ``logits[1] > logits[0]``, i.e. ``p > 1 - p`` after the
upsampling, which is the reference's test-time prediction (``main_inference.py``:
``argmax`` of the upsampled ``(1 - p, p)``, ties to background).

The head operators are the lineage's shared ones (``fsmis.models.lineage``: ADNet's
head is the one Q-Net, CAT-Net, RPT and GMRD inherit); ADNet differs from the lineage
segmenter in its trunk (SSL-ALPNet's ``deeplabv3_resnet101``: layer4 at output stride
8, 1x1 conv 2048 -> 256, the default ``build_backbone``) and its learned scalar
threshold (the lineage predicts ``t`` per image from layer4).

Reference defects, none of which changes a 1-way 1-shot episode (the only kind this
project runs), so none needs an option:

- ``torch.device('cuda')`` hard-coded for the loss accumulators (fails on a CPU): ours
  computes on the input's device;
- one threshold ``T`` is shared by every way (``thresh_pred = [self.t for _ in
  range(n_ways)]``); with one way it is the method's threshold;
- ``qry_fts[epi]`` indexes the query dimension with the episode index (the
  alignment pass uses ``qry_fts[:, epi]``): wrong only for batches of several episodes;
- the alignment's support labels other than 0/1 become 255, which its ``NLLLoss``
  (default ``ignore_index`` -100) does not ignore: it fails on such masks; ours are
  binary.

Parity with the reference (``benchmarks/parity/adnet.py``, same weights and inputs,
ResNet-101 at 256 x 256): outputs, losses and gradients within 1.3e-5 relative (float
rounding), identical test-time predictions.

Evaluation: ``support_from_mask`` pools the prototype once per support slice from the
image-resolution mask; ``predict`` scores the query features, upsamples ``p`` and
returns the logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from fsmis.models import prototypes as P
from fsmis.models.fewshot import FewShotSegmenter
from fsmis.models.lineage import (
    lineage_nll,
    lineage_prediction,
    probability_logits,
    similarity,
    upsample_probability,
    upsampled_masked_average,
)
from fsmis.models.params import MethodParams, cosine_scale, param


@dataclass(frozen=True)
class ADNetParams(MethodParams):
    """ADNet (Hansen et al., MedIA 2022): one foreground prototype, anomaly score -20 cos, a learned threshold."""

    scale: float = cosine_scale("Anomaly score S = -scale x cosine(query, prototype); also divides the threshold "
                                "loss (the reference's one `scaler`, 20).")
    threshold_init: float = param(-10.0, "Initial value of the learned threshold T (reference -10).")
    t_loss_scaler: float = param(1.0, "Weight of the threshold loss T / scale (the reference's --t_loss_scaler, 1).",
                                 ge=0)
    bg_weight: float = param(0.1, "Background weight of the query loss, foreground 1 (the reference's --bg_wt, 0.1).",
                             ge=0)
    prototype_pooling: Literal["upsampled", "grid"] = param("upsampled", """Support prototype: "upsampled" pools
        the features upsampled to the mask's size, as the reference (computed exactly on the feature grid);
        "grid" pools on the feature grid with the bilinearly downsampled mask, as the project's other methods.""")


class ADNet(FewShotSegmenter):
    """ADNet on the SSL-ALPNet trunk (the default backbone). State: the prototype ``[1,C]``."""

    Params = ADNetParams

    def __init__(self, backbone: nn.Module, params: ADNetParams | None = None, *, align: bool = True):
        super().__init__(backbone, params, align=align)
        # shape [1] and name ``t``, as the reference's parameter
        self.t = nn.Parameter(torch.tensor([self.params.threshold_init]))

    def query_loss_weights(self, train_cfg: dict) -> tuple[float, float]:
        return self.params.bg_weight, 1.0

    # -- pieces -----------------------------------------------------------------------
    def support_state(self, feats, fg):
        """The prototype ``[1,C]``: masked average of ``feats`` under the grid mask ``fg``."""
        return P.masked_average(feats, fg)

    def support_from_mask(self, feats, mask):
        if self.params.prototype_pooling == "upsampled":
            return upsampled_masked_average(feats, mask)
        return super().support_from_mask(feats, mask)

    def probability(self, feats: torch.Tensor, prototype: torch.Tensor) -> torch.Tensor:
        """Foreground probability ``[B,1,h,w]`` of ``feats [B,C,h,w]`` for ``prototype [1,C]``."""
        return lineage_prediction(similarity(feats, prototype, self.params.scale)[:, None], self.t)

    def score(self, query_feats, state):
        """Logits on the feature grid (no upsampling)."""
        return probability_logits(self.probability(query_feats, state))

    def predict(self, query_feats, state, size):
        """``p`` upsampled (``align_corners=True``), then the logits, as the reference orders it."""
        return probability_logits(upsample_probability(self.probability(query_feats, state), size))

    # -- training -----------------------------------------------------------------------
    def forward(self, sup_img, sup_fg, qry_img):
        """As ``FewShotSegmenter.forward``, plus the ``"threshold"`` loss in training."""
        feats = self.encode(torch.cat([sup_img, qry_img]))
        sup_f, qry_f = feats[:1], feats[1:]
        p = self.probability(qry_f, self.support_from_mask(sup_f, sup_fg))
        logits = probability_logits(upsample_probability(p, qry_img.shape[-2:]))
        losses = {}
        if self.training:
            losses["threshold"] = self.params.t_loss_scaler * self.t[0] / self.params.scale
            if self.align:
                losses["align"] = self.alignment_loss(probability_logits(p), qry_f, sup_f, sup_fg)
        return logits, losses

    def alignment_loss(self, scores, qry_f, sup_f, sup_fg):
        """The reference's ``alignLoss``: ``scores`` are the query's grid logits; the
        query prototype is pooled on the feature grid over all queries; NLL of the
        support's upsampled ``(1-p, p)``. 0 (no gradient) when nothing is predicted."""
        fg = P.foreground(scores).to(qry_f.dtype)
        if not bool(fg.any()):
            return qry_f.new_zeros(())
        prototype = (qry_f * fg).sum(dim=(0, 2, 3)) / (fg.sum() + P.MAP_EPS)
        return lineage_nll(upsample_probability(self.probability(sup_f, prototype[None]), sup_fg.shape[-2:]), sup_fg)
