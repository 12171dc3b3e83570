"""CAT-Net (Lin, Chen, Cheng, Chen, MICCAI 2023, "Few Shot Medical Image Segmentation
with Cross Attention Transformer"; code: github.com/hust-linyi/CAT-Net at eddb04b,
``models/fewshot.py``, ``models/torchvision_backbones.py``, ``train_main.py``,
``test_main.py``, ``config.py``).

ADNet's anomaly-detection head (one foreground prototype, ``sim = -20 cos``,
``p = 1 - sigmoid(0.5 (sim - t))``, ``fsmis.models.lineage``) behind a query
self-attention, a PFENet-style prior and a support/query cross-attention, with Q-Net's
test-time prototype refinement. What the reference code computes, operator by
operator (the paper's text was not available to us; where we cite the paper it is its
abstract):

- Trunk: ``TVDeeplabRes101Encoder`` -- torchvision's ``deeplabv3_resnet101`` trunk
  (output stride 8) and ``localconv`` 2048 -> 256, i.e. SSL-ALPNet's and ADNet's trunk,
  our ``deeplabv3_resnet101`` backbone: 256 channels, 32 x 32 at 256 px. Not the
  lineage's ``Res101Encoder`` (``models/encoder.py`` is in the repository but
  ``fewshot.py`` no longer imports it), so :meth:`CATNet.build_backbone` is the
  project's default and the threshold is not the encoder's: ``t`` is one learned
  scalar initialised at -10 (``threshold_init``), as ADNet.
- Self-attention (``SelfAttention``), query only: 1x1 convs ``query``, ``key``
  (C -> C/8), ``value`` (C -> C); logits ``(q * (C/8)^-1/2) k^T`` over the ``h w``
  positions; ``out_i = sum_j a_ij v_j``; then an MLP over channels (Linear, ReLU,
  Linear) and a ``LayerNorm`` over ``[C, 32, 32]`` (one affine weight per channel and
  position, so the grid is fixed: ``grid``). No residual. The reference also runs the
  support through it and discards the result (``#supp_fts = ...``): the support stays
  the encoder's features everywhere; we do not compute the discarded pass.
- Prior (``generate_prior``, PFENet's prior mask): the support mask ``(m == 1)``
  bilinearly resized (``align_corners=True``) to the grid masks the support features;
  for every query position the largest cosine similarity (``x.y / (|x||y| + 1e-7)``) to
  any support position, min-max normalised over the query's positions (``+1e-7``);
  one channel. Reference issue #3: ``high_avg_pool`` was missing; at eddb04b it is
  ``AdaptiveAvgPool1d(256)`` over the channels, the identity at 256 channels (and, for
  cosine, at any C dividing 256), an average of neighbouring channels above 256.
  ``prior_pool`` (default ``None``: no pooling) = 256 reproduces it.
- Fusion: ``conv_fusion``, 1x1 conv (C + 1) -> C on ``[self-attended query, prior]``.
- Cross-attention (``CrossAttention``): the same layer as the self-attention (its own
  weights); the query direction takes queries from the fused query features and keys
  and values from the support's encoder features, softmax over the support positions;
  MLP, LayerNorm. The reference computes both directions and uses neither (below). Not
  masked in the code; ``cross_mask=True`` (ours, after the paper's abstract: attention
  "limited to the useful foreground information") lets the query attend to the support
  foreground cells only.
- Prediction: the prototype is the masked average of the support's *encoder* features
  upsampled (bilinear, ``align_corners=False``) to the image mask
  (``lineage.upsampled_masked_average``); ``p = lineage_prediction(-20 cos(f, proto),
  t)``, upsampled to the image with ``align_corners=True``.
- Test-time refinement (``test_main.py``: ``n_iters`` 7, ``refine_iters``): Q-Net's
  ``updatePrototype`` on the cross-attended query features (:func:`refine_prototype`:
  Adam, lr 0.01, on a copy of the prototype; each step the current prediction
  ``p > 1 - p`` replaces those query cells by the prototype, BCE(input = sigmoid of the
  min-max normalised features, target = the same of the replaced ones); the
  prediction is recomputed with the refined prototype). Never in training.
- Losses (``train_main.py``): query NLL of ``log(clamp((1-p, p)))`` weighted
  (0.1, 1) (``bg_weight``; the trainer's weighted cross-entropy of
  :func:`lineage.probability_logits`), plus ADNet's alignment loss at weight 1
  (``train.align_weight``): the fused query features pooled under the fused
  prediction ``p > 1 - p`` on the feature grid (over every query of the batch), that
  prototype and ``t`` segment the support's encoder features, NLL (unweighted) of the
  upsampled prediction against the support mask; 0 when nothing is predicted. The
  threshold loss ``t / 20`` is computed and not returned (``#(t_loss_scaler *
  self.t_loss)``; ``t_loss_scaler`` is 0 in ``config.py``): none here.
- Optimiser etc.: the trainer's (SGD lr 1e-3, momentum 0.9, weight decay 5e-4, as
  ``config.py``).

Reference defects, each fixed behind a named option (default = the fix, the other
value = the reference):

- ``output``: the reference computes the prediction from the cross-attended query
  (``qry_prediction``, refined at test time), upsamples it, then overwrites it with
  ``pred_ups = F.interpolate(pred, ...)``, the prediction from the *fused* features
  (before the cross-attention). So it returns the fused prediction in training and at
  test time, its cross-attention never gets a gradient and its refinement never
  changes a pixel. ``"cross"`` (ours) returns ``qry_prediction`` as the code computes
  it (prototype from the support's encoder features, as in the code); ``"fused"``
  returns the reference's output (then neither the cross-attention nor the refinement
  runs: they cannot change it). The alignment loss uses the fused features and
  prediction in both, as the code.
- ``self_attention_softmax``: ``SelfAttention`` normalises its weights over the
  *query* positions (``nn.Softmax(dim=-2)`` on ``[B, queries, keys]``), so an output
  position's weights do not sum to one; its template (SAGAN) and the reference's own
  ``CrossAttention`` normalise over the keys. ``"keys"`` (ours) or ``"queries"``
  (reference).

Reference defects that change nothing here (no option): the code does not run as
published -- ``nn.LayerNorm([256, 32, 32]])`` is a syntax error and
``nn.LayerNorm([[256, 32, 32]])`` a type error (both repaired as ``[256, 32, 32]``
for the parity check), and ``test_main.py`` passes ``alpha=`` to a constructor without
it; hard-coded ``cuda`` devices (ours: the tensors' device);
``qry_fts1[n][epi]`` indexes the query dimension with the episode index and
``supp_fts.view(batch_size, -1, ...)`` folds shots into channels (both right only for
one query and one shot per episode, the only kind the reference and this project run);
the support side of the cross-attention (``supp_fts1``) is computed and never used
(not computed here).

Not in the code and not implemented: the paper's iterative refinement of the query
*mask* through repeated cross masked attention (the abstract: it "refines the query
image segmentation iteratively and promotes the support feature in turn"); the code's
iterative refinement is Q-Net's prototype update above. Issue #15 of the repository
says the same.

What to expect with ``output="cross"``: the cross-attention's values are the
support's features, so the query's own features reach the prediction only through the
attention weights (no residual, as the code). Untrained, the weights are nearly
uniform and the cross-attended features nearly the same at every query position (in
the parity check at 256 px, ``p`` spans 1e-6 at the median threshold); training sharpens
them. On a toy task (small_cnn, 64 px, 600 steps) it trained at the reference's learning
rate 1e-3 (final loss 0.07, ``"fused"`` 0.11; Dice 0.83 vs 0.84) and diverged at 1e-2
(``"fused"`` trained at both).

Evaluation: ``support_state`` (= ``support_from_mask``) holds the prototype, the
masked support features and their norms for the prior, and the cross-attention's keys
and values (support-only work); ``score`` does the query's self-attention, prior,
fusion, cross-attention and refinement. ``predict`` upsamples ``p`` before the logits,
as the reference.

Shared operator, with Q-Net: :func:`fsmis.models.lineage.refine_prototype`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fsmis.models.fewshot import FewShotSegmenter
from fsmis.models.lineage import (
    LineageParams,
    LineageSegmenter,
    lineage_nll,
    lineage_prediction,
    probability_logits,
    refine_prototype,
    similarity,
    upsample_probability,
    upsampled_masked_average,
)
from fsmis.models.params import cosine_scale, param

PRIOR_EPS = 1e-7  # generate_prior's cosine_eps


# -- operators --------------------------------------------------------------------------------------------------------

def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_over: str = "keys",
              key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Dot-product attention as the reference writes it: ``q [B,n,d]`` (already
    scaled), ``k [B|1,d,m]``, ``v [B|1,C,m]`` -> ``[B,C,n]`` with
    ``out[:, :, i] = sum_j a_ij v[:, :, j]``, ``a = softmax(q k)`` over the keys ``j``
    (``softmax_over="keys"``) or over the queries ``i`` (``"queries"``, the reference's
    ``SelfAttention``). ``key_mask [B|1,m]`` (bool, keys only): false keys get weight 0."""
    logits = torch.matmul(q, k)  # [B, n, m]
    if key_mask is not None:
        if softmax_over != "keys":
            raise ValueError("a key mask needs the softmax over the keys")
        logits = logits.masked_fill(~key_mask[:, None, :], float("-inf"))
    weights = torch.softmax(logits, dim=-1 if softmax_over == "keys" else -2)
    return torch.matmul(v, weights.transpose(1, 2))


class AttentionLayer(nn.Module):
    """The reference's ``SelfAttention``/``CrossAttention`` layer (parameter names
    included): 1x1 convs ``query``, ``key`` (C -> C/8) and ``value`` (C -> C),
    :func:`attention`, ``mlp`` (Linear, ReLU, Linear over channels) and ``norm``, a
    LayerNorm over ``[C, grid, grid]``. No residual."""

    def __init__(self, channels: int, grid: int, softmax_over: str = "keys"):
        super().__init__()
        if channels < 8:
            raise ValueError(f"the attention layers need at least 8 feature channels, got {channels}")
        self.query = nn.Conv2d(channels, channels // 8, 1)
        self.key = nn.Conv2d(channels, channels // 8, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.mlp = nn.Sequential(nn.Linear(channels, channels), nn.ReLU(), nn.Linear(channels, channels))
        self.norm = nn.LayerNorm([channels, grid, grid])
        self.scale = (channels // 8) ** -0.5
        self.softmax_over = softmax_over

    def keys_values(self, x: torch.Tensor):
        """``x [B,C,h,w]`` -> keys ``[B,C/8,hw]``, values ``[B,C,hw]``."""
        return self.key(x).flatten(2), self.value(x).flatten(2)

    def forward(self, x: torch.Tensor, keys_values=None, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Queries from ``x [B,C,h,w]``; keys and values from ``keys_values`` (default:
        ``x``'s own, self-attention) -> ``[B,C,h,w]``."""
        b, c, h, w = x.shape
        if tuple(self.norm.normalized_shape) != (c, h, w):
            raise ValueError(f"CAT-Net's attention LayerNorm is built for {tuple(self.norm.normalized_shape)} "
                             f"features (the reference's 32 x 32 grid), got {(c, h, w)}: set the method's grid")
        k, v = self.keys_values(x) if keys_values is None else keys_values
        q = self.query(x).flatten(2).transpose(1, 2) * self.scale
        out = attention(q, k, v, self.softmax_over, key_mask).reshape(b, c, h, w)
        out = self.mlp(out.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.norm(out)


def prior_support(feats: torch.Tensor, mask: torch.Tensor, pool: int | None = None):
    """The support side of :func:`correlation_prior`: ``feats [1,C,h,w]`` masked by
    ``mask [1,1,h,w]`` -> (support vectors ``[1,m,C']``, their norms ``[1,m,1]``)."""
    s = (feats * mask).flatten(2).transpose(1, 2)
    if pool is not None:
        s = F.adaptive_avg_pool1d(s, pool)
    return s, torch.norm(s, 2, 2, True)


def correlation_prior(query: torch.Tensor, support, pool: int | None = None, eps: float = PRIOR_EPS) -> torch.Tensor:
    """PFENet's prior (the reference's ``generate_prior``): ``query [B,C,h,w]``,
    ``support`` from :func:`prior_support` -> ``[B,1,h,w]``: per query position the
    largest ``x.y / (|x||y| + eps)`` over the support positions, min-max normalised
    over the query's positions (``+ eps``). ``pool``: the reference's
    ``AdaptiveAvgPool1d(pool)`` over the channels of both sides."""
    b, _, h, w = query.shape
    q = query.flatten(2).transpose(1, 2)  # [B, n, C]
    if pool is not None:
        q = F.adaptive_avg_pool1d(q, pool)
    q = q.transpose(1, 2)  # [B, C', n]
    s, s_norm = support
    sim = torch.matmul(s, q) / (torch.matmul(s_norm, torch.norm(q, 2, 1, True)) + eps)  # [B, m, n]
    sim = sim.max(1)[0]
    lo, hi = sim.min(1, keepdim=True)[0], sim.max(1, keepdim=True)[0]
    return ((sim - lo) / (hi - lo + eps)).reshape(b, 1, h, w)


# -- the method -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CATNetParams(LineageParams):
    """CAT-Net (Lin et al., MICCAI 2023): ADNet's thresholded one-prototype head behind a query self-attention, a
    PFENet prior and a support/query cross-attention, with Q-Net's test-time prototype refinement; fsmis.models.catnet
    says where the code and its defects lead."""

    output: Literal["cross", "fused"] = param("cross", """Prediction returned: "cross" (ours), from the
        cross-attended query features, the reference's qry_prediction (refined at test time); "fused", the
        reference's output, from the query features before the cross-attention (its cross-attention never trains
        and its refinement changes nothing).""")
    self_attention_softmax: Literal["keys", "queries"] = param("keys", """Softmax of the query self-attention:
        over the keys (ours, as its cross-attention and SAGAN) or over the query positions (the reference's
        Softmax(dim=-2)).""")
    cross_mask: bool = param(False, """Query -> support cross-attention restricted to the support foreground cells
        (ours, after the paper's 'cross masked attention'; the code attends to every support cell).""")
    prior_pool: int | None = param(None, """Channels the prior's features are average-pooled to (the reference's
        high_avg_pool, AdaptiveAvgPool1d(256): the identity at 256 channels); null: no pooling.""", ge=1)
    grid: int = param(32, """Feature grid side the attention LayerNorms are built for (their affine weights are
        C x grid x grid; the reference hard-codes 32: 256 px at stride 8).""", ge=1)
    scale: float = cosine_scale("Multiplier of the negative cosine similarity (ADNet's scaler).")
    threshold_init: float = param(-10.0, "Initial value of the learned threshold t (reference -10).")
    refine_iters: int = param(7, """Adam steps of the test-time prototype refinement on each query (the reference's
        n_iters, 7); 0 disables it. Never in training; only with output "cross".""", ge=0)
    refine_lr: float = param(0.01, "Adam learning rate of the prototype refinement.", gt=0)


class CATNet(LineageSegmenter):
    """State: the prototype, the prior's support side, the cross-attention's keys and values."""

    Params = CATNetParams

    def __init__(self, backbone: nn.Module, params: CATNetParams | None = None, *, align: bool = True):
        super().__init__(backbone, params, align=align)
        p, c = self.params, backbone.out_channels
        # names and shapes of the reference's (fewshot.py), for checkpoints and the parity check
        self.t = nn.Parameter(torch.tensor([p.threshold_init]))
        self.self_attention = AttentionLayer(c, p.grid, p.self_attention_softmax)
        self.cross_attention = AttentionLayer(c, p.grid, "keys")
        self.conv_fusion = nn.Conv2d(c + 1, c, kernel_size=1)

    @classmethod
    def build_backbone(cls, model_cfg: dict) -> nn.Module:
        """The project's backbones (``deeplabv3_resnet101`` = the reference's
        ``TVDeeplabRes101Encoder``), not the lineage's ``Res101Encoder``."""
        return FewShotSegmenter.build_backbone.__func__(cls, model_cfg)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    # -- support ----------------------------------------------------------------------
    def support_state(self, feats, fg):
        """``feats [1,C,h,w]``, the support mask ``fg`` at any resolution (``[1,H,W]`` or
        ``[1,1,H,W]``; the image's in the reference)."""
        if fg.dim() == 3:
            fg = fg[:, None]
        grid_mask = F.interpolate((fg == 1).to(feats.dtype), size=feats.shape[-2:], mode="bilinear",
                                  align_corners=True)
        state = {"feats": feats, "prototype": upsampled_masked_average(feats, fg),
                 "prior": prior_support(feats, grid_mask, self.params.prior_pool)}
        if self.params.output == "cross":
            state["keys_values"] = self.cross_attention.keys_values(feats)
            state["key_mask"] = self._key_mask(grid_mask)
        return state

    def support_from_mask(self, feats, mask):
        return self.support_state(feats, mask)

    def _key_mask(self, grid_mask):
        """Support cells the query may attend to (``cross_mask``), or ``None`` (all)."""
        if not self.params.cross_mask:
            return None
        keep = grid_mask.flatten(1) >= 0.5
        return keep if bool(keep.any()) else None  # no foreground cell: attend to all

    # -- query --------------------------------------------------------------------------
    def _predict(self, feats, proto):
        """``p [B,h,w]`` of ``feats [B,C,h,w]`` for ``proto [1|B,C]``."""
        return lineage_prediction(similarity(feats, proto, self.params.scale), self.t.reshape(1, 1))

    def query_pass(self, query_feats, state) -> dict:
        """``{"fused": features, "fused_p": p}`` and, with ``output="cross"``,
        ``{"cross": features, "cross_p": p}`` (refined at test time); ``p [B,1,h,w]``."""
        out = {}
        attended = self.self_attention(query_feats)
        prior = correlation_prior(attended, state["prior"], self.params.prior_pool)
        out["fused"] = self.conv_fusion(torch.cat([attended, prior], dim=1))
        if self.params.output == "fused" or self.training:
            out["fused_p"] = self._predict(out["fused"], state["prototype"])[:, None]
        if self.params.output == "cross":
            cross = self.cross_attention(out["fused"], state["keys_values"], state["key_mask"])
            proto = state["prototype"]
            pred = self._predict(cross, proto)
            if not self.training and self.params.refine_iters > 0:
                proto = refine_prototype(cross, proto, pred, self._predict, self.params.refine_iters,
                                         self.params.refine_lr)
                pred = self._predict(cross, proto)
            out["cross"], out["cross_p"] = cross, pred[:, None]
        return out

    def probability(self, query_feats, state) -> torch.Tensor:
        """Foreground probability ``[B,1,h,w]`` on the feature grid (``output``'s)."""
        return self.query_pass(query_feats, state)[self.params.output + "_p"]

    def score(self, query_feats, state):
        return probability_logits(self.probability(query_feats, state))

    def predict(self, query_feats, state, size):
        """``p`` upsampled (``align_corners=True``), then the logits, as the reference."""
        return probability_logits(upsample_probability(self.probability(query_feats, state), size))

    # -- training -----------------------------------------------------------------------
    def forward(self, sup_img: torch.Tensor, sup_fg: torch.Tensor, qry_img: torch.Tensor):
        """One episode, support ``[1,3,H,W]`` + mask ``[1,H,W]``, queries ``[B,3,H,W]``
        (encoded in one batch) -> ``(logits [B,2,H,W], {"align": ...})``."""
        feats = self.encode(torch.cat([sup_img, qry_img]))
        sup_f, qry_f = feats[:1], feats[1:]
        out = self.query_pass(qry_f, self.support_from_mask(sup_f, sup_fg))
        logits = probability_logits(upsample_probability(out[self.params.output + "_p"], qry_img.shape[-2:]))
        losses = {}
        if self.training and self.align:
            losses["align"] = self.alignment_loss(out["fused_p"], out["fused"], sup_f, sup_fg)
        return logits, losses

    def alignment_loss(self, p, qry_f, sup_f, sup_fg) -> torch.Tensor:
        """ADNet's ``alignLoss`` as CAT-Net calls it: ``p [B,1,h,w]`` the fused
        prediction, ``qry_f`` the fused features; their predicted foreground
        (``p > 1 - p``, no gradient through the mask) pooled on the feature grid over
        every query -> a prototype that segments the support's encoder features (the
        same ``t``); NLL against ``sup_fg [1,H,W]``. 0 when nothing is predicted."""
        fg = (p > 1.0 - p).to(qry_f.dtype)
        if not bool(fg.any()):
            return qry_f.new_zeros(())
        proto = (qry_f * fg).sum(dim=(0, 2, 3)) / (fg.sum() + 1e-5)
        back = upsample_probability(self._predict(sup_f, proto[None])[:, None], sup_fg.shape[-2:])
        return lineage_nll(back, sup_fg.reshape(1, *sup_fg.shape[-2:]))
