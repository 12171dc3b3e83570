"""IPLSL: "Interactive prototype learning and self-learning for few-shot medical image
segmentation" (Song et al., Artificial Intelligence in Medicine 167:103183, 2025).

**This is a reconstruction.** Only the abstract is public: no full text, code,
losses or hyper-parameters (``docs/methods.md``, 'IPLSL: what is public'). What the abstract
states, and is implemented as stated:

1. a deep encoding-decoding module learns high-level features of support and query
   and builds *peak prototypes* (the prototypes "with the greatest semantic
   information") that guide the segmentation;
2. an interactive prototype learning module with two interactions between support
   and query: *mid-level-feature mean-prototype* and *high-level-feature
   peak-prototype*;
3. a query-features-guided self-learning module that separates foreground and
   background with the query's own features,
4. and combines low-level feature maps to complement boundary information.

Every concrete operator below is **our reading** (each a field of ``IPLSLParams``, the
default being the reading described):

* levels: *mid-level* = the backbone's output feature (the map every method here
  uses); *high-level* = :class:`~fsmis.models.iplsl_blocks.EncoderDecoder`, a U-shaped
  head on it (``decoder_depth`` stride-2 stages, ``decoder_channels`` wide, by default
  half the backbone's channels; its output is upsampled to the grid); *low-level* =
  the output of an early backbone layer (``low_level_layer``: "auto" is ``stem`` for
  small_cnn, ``layer1`` for the ResNets) captured with a forward hook and
  average-pooled to the feature grid. The backbones are not modified.
* mean prototype = masked average pooling (PANet). Prototype sets
  (``prototype_sets="local"``, default): the support also gives SSL-ALPNet's local
  prototypes (``threshold``, ``train_window``, ``test_window``, ``fg_switch_window``
  as there) at the mid level, and (``high_local``) local background prototypes at the
  high level; several prototypes of a class are merged by soft-max pooling, and the
  support-only pass is SSL-ALPNet's head. ``"mean"``: one mean prototype per class,
  the abstract taken literally (PANet's head; on the phantom it scores far lower, as
  PANet does against SSL-ALPNet).
* peak prototype = per channel, the maximum of the high-level feature over the cells
  whose mask is >= ``peak_level`` (``peak_topk`` > 1: the mean of the k largest). The
  background's high-level mean prototype is its masked average (``high_bg="mean"``; a
  maximum over a heterogeneous background mixes unrelated structures) or its peak
  (``"peak"``).
* scores = ``scale`` x cosine; the levels are blended as ``(1 - high_weight) x mid +
  high_weight x high``.
* interaction (Q-Net-like): the support prototypes segment the query; the soft
  foreground probability weights the query's mean prototypes (both classes) and its
  cells >= ``peak_level`` give the query's peak prototype; each support mean/peak
  prototype becomes ``(1 - interact_mix) x support + interact_mix x query`` and the
  query is segmented again (the "first prediction"; local sets: the interacted
  background mean prototypes join the local ones).
* self-learning (SSP-like, Fan et al. ECCV 2022): cells of the first prediction with
  foreground probability > ``self_fg_threshold`` and background probability >
  ``self_bg_threshold`` (SSP's 0.7 / 0.6) give the query's own mean and peak
  prototypes (no gradient through the mask; a class with no such cell keeps the
  first pass's prototype), which segment the query again, beside the support's local
  prototypes (the "self-learned prediction"); output ``(1 - self_mix) x first +
  self_mix x self-learned``.
* boundary complement: acts only in the band of cells within ``boundary_radius`` of
  the current predicted boundary (dilation minus erosion of the argmax mask); outside
  it the logits are unchanged. ``boundary_mode="prototype"`` (default, no
  parameters): low-level mean prototypes of the query's own confident cells
  (thresholds as above; the support's for a class with no such cell) give low-level
  scores, and the band becomes ``(1 - boundary_weight) x scores + boundary_weight x
  low-level scores``. ``"learned"``: a residual from
  :class:`~fsmis.models.iplsl_blocks.BoundaryHead` (3x3 conv of the low-level feature
  and the class probabilities, ``boundary_hidden`` wide, zero-initialised output).
  On the phantom either form lowers the test Dice (support and query from different
  scans; see the README's ablation).
* losses: query cross-entropy on the returned logits (the trainer's, weighted by
  ``train.bg_weight``/``fg_weight``); PANet's support alignment loss as ``"align"``
  (weighted by ``train.align_weight``): the query's prediction gives prototypes that
  segment the support through the prototype head (``full_align``: through every
  pass, about 0.2x an SSL-ALPNet step dearer); and, when ``forward`` receives the
  query label in training, the weighted cross-entropy of the self-learned prediction
  (``self_bg_weight``, ``self_fg_weight``) x ``self_loss_weight`` as ``"self"``.

Switches: ``deep_path`` (off: no decoder, no peak prototypes, mid level only),
``interaction`` (off: support prototypes only), ``self_learning`` (off: the first
prediction is the output, no "self" loss), ``boundary`` (off: no low-level tap). With
all four off the model is SSL-ALPNet (``prototype_sets="local"``) or PANet
(``"mean"``).

Evaluation: ``encode`` returns the mid-level, high-level and low-level maps
concatenated along the channels (one tensor on the feature grid, so the evaluator's
feature cache and per-slice support states work unchanged); ``support_state`` pools
every support prototype once per support slice; ``score`` does the query-dependent
interaction, self-learning and boundary passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from fsmis.models import prototypes as P
from fsmis.models.fewshot import FewShotSegmenter
from fsmis.models.iplsl_blocks import (
    BoundaryHead,
    EncoderDecoder,
    boundary_band,
    default_low_level_layer,
    layer_channels,
    low_level_tap,
    masked_averages,
    peak_prototype,
    self_masks,
    to_grid,
)
from fsmis.models.params import LocalPooling, MethodParams, cosine_scale, group, param


@dataclass(frozen=True)
class IPLSLParams(MethodParams):
    """IPLSL, reconstructed from its published abstract (fsmis.models.iplsl says which operators are ours). The
    four switches remove one component each."""

    deep_path: bool = param(True, "Deep encoding-decoding head giving high-level features and peak prototypes "
                                  "(off, mid level only, no decoder parameters).")
    interaction: bool = param(True, "Interactive prototype learning, support prototypes mixed with the query's own "
                                    "mean (mid level) and peak (high level) prototypes (off, support prototypes "
                                    "only).")
    self_learning: bool = param(True, "Query-guided self-learning, a second pass with prototypes from the query's "
                                      "confident cells (off, no second pass and no \"self\" loss).")
    boundary: bool = param(True, "Boundary complement from low-level backbone features inside the predicted "
                                 "boundary band (off, no low-level tap).")
    scale: float = cosine_scale("Temperature multiplying the cosine similarity at every level.")
    prototype_sets: Literal["local", "mean"] = param("local", """"local" (ours): SSL-ALPNet's local prototypes
        (threshold and windows below) beside the mean prototypes, so the support-only pass is SSL-ALPNet's head;
        "mean": one masked-average prototype per class, the abstract taken literally (PANet's head).""")
    pooling: LocalPooling = group(LocalPooling, note="Local mode only.")
    decoder_channels: int | None = param(None, "Width of the encoding-decoding head; null is half the backbone's "
                                               "feature channels.", ge=1)
    decoder_depth: int = param(2, "Stride-2 stages of the encoding-decoding head.", ge=1)
    high_weight: float = param(0.5, "Share of the high-level (peak prototype) scores in each prediction; the rest "
                                    "is the mid-level (mean prototype) scores.", ge=0, le=1)
    peak_level: float = param(0.5, "Mask value (or query foreground probability) from which a cell enters the "
                                   "peak prototype.", gt=0, le=1)
    peak_topk: int = param(1, "Peak prototype = mean of the k largest masked values per channel (1, the masked "
                              "channel maximum).", ge=1)
    high_bg: Literal["mean", "peak"] = param("mean", "High-level background prototype, \"mean\" (masked average) or "
                                                     "\"peak\" (masked channel maximum).")
    high_local: bool = param(True, "Local sets only; the high level's background also gets local prototypes.")
    interact_mix: float = param(0.5, "Interaction; each prototype becomes (1 - mix) x support + mix x query "
                                     "prototype.", ge=0, le=1)
    self_mix: float = param(0.5, "Self-learning; output = (1 - mix) x first prediction + mix x self-learned "
                                 "prediction.", ge=0, le=1)
    self_fg_threshold: float = param(0.7, "Foreground probability above which a query cell is the query's own "
                                          "foreground (SSP's 0.7).", ge=0, le=1)
    self_bg_threshold: float = param(0.6, "Background probability above which a query cell is the query's own "
                                          "background (SSP's 0.6).", ge=0, le=1)
    boundary_mode: Literal["prototype", "learned"] = param("prototype", """"prototype": inside the boundary band,
        a share of the scores is replaced by low-level scores against the query's own low-level mean prototypes (no
        parameters); "learned": a residual from a small conv head on the low-level feature and the class
        probabilities.""")
    boundary_weight: float = param(0.25, "Prototype mode; share of the low-level scores in the output inside the "
                                         "boundary band (outside it, 0).", ge=0, le=1)
    boundary_radius: int = param(1, "Half-width of the boundary band in feature cells (dilation minus erosion of "
                                    "the predicted mask).", ge=0)
    boundary_hidden: int = param(16, "Learned mode; channels of the boundary head's 3x3 convolution.", ge=1)
    low_level_layer: str = param("auto", "Backbone submodule whose output is the low-level feature; \"auto\" is "
                                         "stem (small_cnn) or layer1 (ResNets).")
    self_loss_weight: float = param(1.0, "Weight of the cross-entropy of the self-learned prediction against the "
                                         "query label (loss \"self\").", ge=0)
    self_bg_weight: float = param(0.05, "Background class weight of the self-learning loss (as train.bg_weight).",
                                  ge=0)
    self_fg_weight: float = param(1.0, "Foreground class weight of the self-learning loss (as train.fg_weight).",
                                  ge=0)
    full_align: bool = param(False, """Alignment pass (query prediction -> prototypes -> segment the support)
        through every pass; false (ours), through the prototype head only, about 0.2x SSL-ALPNet's step cheaper.""")


class IPLSL(FewShotSegmenter):
    Params = IPLSLParams
    #: ``forward`` accepts ``qry_label=`` (for the loss on the self-learned prediction)
    takes_query_label = True

    def __init__(self, backbone, params: IPLSLParams | None = None, *, align=True):
        super().__init__(backbone, params, align=align)
        p = self.params
        channels = [backbone.out_channels, 0, 0]  # mid, high, low: the packed encoding
        if p.deep_path:
            width = max(1, backbone.out_channels // 2) if p.decoder_channels is None else p.decoder_channels
            self.decoder = EncoderDecoder(backbone.out_channels, width, p.decoder_depth)
            channels[1] = self.decoder.out_channels
        if p.boundary:
            self.low_level_layer = default_low_level_layer(backbone) if p.low_level_layer == "auto" \
                else p.low_level_layer
            channels[2] = layer_channels(backbone.get_submodule(self.low_level_layer))
            if p.boundary_mode == "learned":
                self.boundary_head = BoundaryHead(channels[2], p.boundary_hidden)
        self.channels = tuple(channels)

    @property
    def window(self) -> int:
        return self.params.pooling.window(self.training)

    # -- features -------------------------------------------------------------------------
    def encode(self, images):
        """``[B,3,H,W]`` -> mid, high and low-level maps concatenated: ``[B, sum(channels), h, w]``."""
        if self.params.boundary:
            with low_level_tap(self.backbone, self.low_level_layer) as store:
                mid = self.backbone(images)
            parts = [mid, to_grid(store[-1], mid.shape[-2:])]
        else:
            mid = self.backbone(images)
            parts = [mid]
        if self.params.deep_path:
            parts.insert(1, self.decoder(mid))
        return torch.cat(parts, 1) if len(parts) > 1 else mid

    def levels(self, feats):
        """The packed encoding split into ``(mid, high | None, low | None)``."""
        mid, high, low = torch.split(feats, self.channels, dim=1)
        return mid, (high if self.params.deep_path else None), (low if self.params.boundary else None)

    def _high_proto(self, high, mask, background):
        """High-level prototype ``[B,C]`` of ``high [B,C,n]`` under ``mask [B|1,1,n]``."""
        if background and self.params.high_bg == "mean":
            return masked_averages(high, mask.transpose(1, 2))[:, 0]
        return peak_prototype(high, mask, self.params.peak_level, self.params.peak_topk)

    def _pool(self, flat, fg, bg):
        """Mean prototypes ``(fg, bg)`` ``[B,C]`` of ``flat [B,C,n]`` under ``[B,1,n]`` weights."""
        both = masked_averages(flat, torch.cat([fg, bg], 1).transpose(1, 2))
        return both[:, 0], both[:, 1]

    # -- support-only work ----------------------------------------------------------------
    def support_state(self, feats, fg):
        p = self.params
        threshold = p.pooling.threshold
        mid, high, low = self.levels(feats)
        bg = 1.0 - fg
        fg_flat, bg_flat = fg.flatten(2), bg.flatten(2)
        st = dict(zip(("mid_fg", "mid_bg"), self._pool(mid.flatten(2), fg_flat, bg_flat)))  # [1, C] each
        if p.prototype_sets == "local":
            local_bg = P.local_prototypes(mid, bg, self.window, threshold)
            st["local_bg"] = local_bg if local_bg.shape[0] else st["mid_bg"]
            covered = P.max_window_coverage(fg, p.pooling.fg_switch_window) >= threshold
            st["local_fg"] = (P.local_prototypes(mid, fg, self.window, threshold) if covered
                              else mid.new_zeros(0, mid.shape[1]))
        if high is not None:
            st["high_fg"] = self._high_proto(high.flatten(2), fg_flat, background=False)
            st["high_bg"] = self._high_proto(high.flatten(2), bg_flat, background=True)
            if p.prototype_sets == "local" and p.high_local:
                local_bg = P.local_prototypes(high, bg, self.window, threshold)
                st["high_local_bg"] = local_bg if local_bg.shape[0] else st["high_bg"]
        if low is not None:
            st["low_fg"], st["low_bg"] = self._pool(low.flatten(2), fg_flat, bg_flat)
        return st

    # -- query-dependent work -------------------------------------------------------------
    def _pair(self, normed, bg, fg):
        """``[B,2,n]`` scores of L2-normalised features ``normed [B,C,n]`` against
        background and foreground prototype sets ``[B,K,C]``: ``scale`` x cosine, several
        prototypes of a class merged by soft-max pooling (one product for both sets)."""
        protos = P.safe_normalize(torch.cat([bg, fg], 1), dim=-1)
        sims = torch.matmul(protos, normed) * self.params.scale  # [B, Kbg + Kfg, n]
        kb = bg.shape[1]
        if sims.shape[1] == 2:
            return sims
        return torch.cat([P.softmax_pool(sims[:, :kb]), P.softmax_pool(sims[:, kb:])], 1)

    def _head(self, q, protos, st, informed):
        """Blend of the mid-level and high-level scores ``[B,2,n]`` for prototypes
        ``protos`` (``[B,C]`` each). Local sets: the support's local prototypes join them;
        the background's mean prototypes only when ``informed`` by the query (interaction
        and self-learning passes), so that the support-only pass is SSL-ALPNet's."""
        fg, bg = protos["mid_fg"][:, None], protos["mid_bg"][:, None]
        high_bg = protos.get("high_bg")
        high_bg = None if high_bg is None else high_bg[:, None]
        if self.params.prototype_sets == "local":
            b = fg.shape[0]
            fg = torch.cat([st["local_fg"].expand(b, -1, -1), fg], 1)
            local_bg = st["local_bg"].expand(b, -1, -1)
            bg = torch.cat([local_bg, bg], 1) if informed else local_bg
            if high_bg is not None and self.params.high_local:
                local_bg = st["high_local_bg"].expand(b, -1, -1)
                high_bg = torch.cat([local_bg, high_bg], 1) if informed else local_bg
        scores = self._pair(q["mid_n"], bg, fg)
        if q["high"] is None:
            return scores
        high = self._pair(q["high_n"], high_bg, protos["high_fg"][:, None])
        return (1.0 - self.params.high_weight) * scores + self.params.high_weight * high

    def query_prototypes(self, q, fg, bg, peak_fg=None):
        """The query's own prototypes from weights ``fg``, ``bg`` ``[B,1,n]``: mean
        prototypes of the mid level, and of the high level the peak over ``peak_fg``
        (default ``fg``) and the background prototype of ``high_bg``. ``{name: [B,C]}``."""
        out = dict(zip(("mid_fg", "mid_bg"), self._pool(q["mid"], fg, bg)))
        if q["high"] is not None:
            out["high_fg"] = self._high_proto(q["high"], fg if peak_fg is None else peak_fg, background=False)
            out["high_bg"] = self._high_proto(q["high"], bg, background=True)
        return out

    def self_prototypes(self, q, first):
        """Self-learning: the query's own prototypes from its first prediction
        ``first [B,2,n]``, ``{name: [B,C]}``, and the masks ``(fg, bg)`` they were pooled on."""
        fg, bg = self_masks(first, self.params.self_fg_threshold, self.params.self_bg_threshold)
        return self.query_prototypes(q, fg, bg), (fg, bg)

    @staticmethod
    def _keep_where_empty(new, old, masks):
        """Per query, a class whose mask has no cell keeps its previous prototype."""
        present = {"fg": masks[0].sum(-1) > 0, "bg": masks[1].sum(-1) > 0}  # [B, 1]
        return {k: torch.where(present[k[-2:]], v, old[k]) for k, v in new.items()}

    def query_levels(self, query_feats):
        """The query's levels flattened to ``[B,C,n]``, and L2-normalised once for every pass."""
        mid, high, low = (x if x is None else x.flatten(2) for x in self.levels(query_feats))
        q = {"mid": mid, "high": high, "low": low, "mid_n": P.safe_normalize(mid, 1)}
        if high is not None:
            q["high_n"] = P.safe_normalize(high, 1)
        return q

    def _score(self, query_feats, st):
        """Every pass on ``query_feats [B, sum(channels), h, w]``: ``{"scores", "first",
        "self"?}``, each ``[B,2,h,w]``."""
        grid = query_feats.shape[-2:]
        q = self.query_levels(query_feats)
        b = q["mid"].shape[0]
        protos = {k: st[k].expand(b, -1) for k in ("mid_fg", "mid_bg", "high_fg", "high_bg") if k in st}
        first = self._head(q, protos, st, informed=False)
        if self.params.interaction:
            prob = torch.softmax(first, dim=1)[:, 1:]
            hard = (prob >= self.params.peak_level).to(prob.dtype)
            query = self.query_prototypes(q, prob, 1.0 - prob, peak_fg=hard)
            if q["high"] is not None:  # no query cell at the peak level: the support's peak alone
                query["high_fg"] = torch.where(hard.sum(-1) > 0, query["high_fg"], protos["high_fg"])
            m = self.params.interact_mix
            protos = {k: (1.0 - m) * v + m * query[k] for k, v in protos.items()}
            first = self._head(q, protos, st, informed=True)
        out = {"first": first}
        scores = first
        if self.params.self_learning:
            own, masks = self.self_prototypes(q, first)
            second = self._head(q, self._keep_where_empty(own, protos, masks), st, informed=True)
            out["self"] = second
            scores = (1.0 - self.params.self_mix) * first + self.params.self_mix * second
        if q["low"] is not None:
            scores = self.complement_boundary(scores, q["low"], st, grid)
        out["scores"] = scores
        return {k: v.unflatten(2, grid) for k, v in out.items()}

    def complement_boundary(self, scores, low, st, grid):
        """Change ``scores [B,2,n]`` inside the boundary band of their argmax prediction
        only, from the low-level map ``low [B,C,n]`` on the grid ``grid``: a learned
        residual (``"learned"``) or a ``boundary_weight`` share of low-level prototype
        scores (``"prototype"``)."""
        pred = P.foreground(scores).to(scores.dtype).unflatten(2, grid)
        band = boundary_band(pred.detach(), self.params.boundary_radius).flatten(2)
        if self.params.boundary_mode == "learned":
            return scores + band * self.boundary_head(low.unflatten(2, grid), scores.unflatten(2, grid)).flatten(2)
        masks = self_masks(scores, self.params.self_fg_threshold, self.params.self_bg_threshold)
        b = low.shape[0]
        own = self._keep_where_empty(dict(zip(("low_fg", "low_bg"), self._pool(low, *masks))),
                                     {k: st[k].expand(b, -1) for k in ("low_fg", "low_bg")}, masks)
        low_scores = self._pair(P.safe_normalize(low, 1), own["low_bg"][:, None], own["low_fg"][:, None])
        return scores + (self.params.boundary_weight * band) * (low_scores - scores)

    def score(self, query_feats, state):
        return self._score(query_feats, state)["scores"]

    # -- training -------------------------------------------------------------------------
    def forward(self, sup_img, sup_fg, qry_img, qry_label=None):
        """One episode: ``(logits [B,2,H,W], losses)``; in training ``losses["align"]``
        (unweighted, the trainer applies ``align_weight``) and, given ``qry_label``
        ``[B,H,W]``, ``losses["self"]`` (already multiplied by ``self_loss_weight``)."""
        size = qry_img.shape[-2:]
        feats = self.encode(torch.cat([sup_img, qry_img]))
        sup_f, qry_f = feats[:1], feats[1:]
        out = self._score(qry_f, self.support_state(sup_f, P.resize_mask(sup_fg, feats.shape[-2:])))
        logits = F.interpolate(out["scores"], size=size, mode="bilinear", align_corners=False)
        losses = {}
        if self.training and self.align:
            losses["align"] = self.alignment_loss(out["scores"], qry_f, sup_f, sup_fg)
        p = self.params
        if self.training and "self" in out and qry_label is not None and p.self_loss_weight:
            second = F.interpolate(out["self"], size=size, mode="bilinear", align_corners=False)
            losses["self"] = p.self_loss_weight * P.segmentation_loss(second, qry_label, p.self_bg_weight,
                                                                      p.self_fg_weight)
        return logits, losses

    def alignment_loss(self, scores, qry_f, sup_f, sup_fg):
        """PANet alignment: the query's prediction (argmax on the grid, no gradient
        through the mask) gives prototypes that must segment the support (plain
        cross-entropy). ``full_align``: through every pass, as the query; default: the
        prototype head alone (no interaction, self-learning or boundary pass), which
        halves the alignment's cost."""
        if self.params.full_align:
            return super().alignment_loss(scores, qry_f, sup_f, sup_fg)
        pred_fg = P.foreground(scores[:1]).to(scores.dtype)
        st = self.support_state(qry_f[:1], pred_fg)
        protos = {k: st[k] for k in ("mid_fg", "mid_bg", "high_fg", "high_bg") if k in st}
        back = self._head(self.query_levels(sup_f), protos, st, informed=False).unflatten(2, sup_f.shape[-2:])
        back = F.interpolate(back, size=sup_fg.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(back, sup_fg.long())
