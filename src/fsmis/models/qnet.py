"""Q-Net (Shen et al., 2022, "Q-Net: Query-Informed Few-Shot Medical Image
Segmentation"; code: github.com/ZJLAB-AMMI/Q-Net, ``models/fewshot.py``).

ADNet's anomaly-detection head (one foreground prototype, ``p = 1 - sigmoid(0.5 (sim -
t))``, ``sim = -20 cos``; ``fsmis.models.lineage``) with two query-informed modules and
a second feature path. What the reference code computes, and so ours:

- Dual path: layer3 ('down2', ``reduce1``, 64 x 64 at 256 px) and layer4 ('down3',
  ``reduce2``, 32 x 32) features; each path has its own prototype and prediction; the
  two probabilities are upsampled to the image (bilinear, ``align_corners=True``) and
  averaged with weights ``(alpha, 1 - alpha)`` (``alpha`` 0.9; the README: 0.9 for
  setting 1, 0.6 for setting 2).
- Prototype: masked average of the support features upsampled (bilinear,
  ``align_corners=False``) to the image-resolution mask
  (``lineage.upsampled_masked_average``).
- Query-informed threshold adaptation: ``t`` comes from the *query* image (layer4 ->
  avgpool -> fc -> ``reduce1d``), the same ``t`` for both paths; the support's own
  ``t`` is never used, also not in the alignment pass, which predicts the support with
  the query's ``t``.
- Query-informed prototype refinement, at test time only (``refine_iters`` = the
  config's ``n_iters`` 7; off in training, as ``train=True`` there): per path and per
  query, the prototype is a free variable optimised by Adam (lr ``refine_lr`` 0.01,
  default betas) for ``refine_iters`` steps. Each step: the path's current prediction
  (foreground where ``p > 1 - p``) marks the query cells whose features are replaced by
  the prototype; both the original and the replaced features are min-max normalised
  over the whole ``C x h x w`` tensor of that query and passed through a sigmoid; the
  loss is ``BCELoss(input=original, target=replaced)``, then the prediction is
  recomputed with the updated prototype. The final prediction uses the refined
  prototype. As written, the gradient reaches the prototype through BCE's *target*
  argument, where the loss is linear (``-mean(z_orig * sigmoid(z_new))`` plus a
  constant, ``z`` the min-max normalised features): the steps raise the normalised
  replaced features where the original ones are large, rather than reconstruct them.
  Kept as the code does it (the paper's text was not available to us).
- Losses: query NLL on ``log(clamp((1-p, p)))`` weighted (0.1, 1) (the trainer's
  weighted cross-entropy of :func:`lineage.probability_logits`, ``bg_weight``); the
  alignment loss (weight 1 in the reference, ``train.align_weight``): the query's
  combined prediction at image resolution, thresholded ``p > 1 - p``, gives a
  query prototype per path (masked average at image resolution); it predicts the
  support (query ``t``), paths combined as above, unweighted NLL against the support
  mask; a query with no predicted foreground contributes 0 (the reference's
  ``skip_ways``); the loss is averaged over the queries (the reference: over its batch).

Where ours differs without changing results where the reference runs:

- the refinement and the prediction run per query with that query's ``t``, batched
  (Adam is elementwise, so refining B prototypes with the sum of their per-query
  losses is B independent runs); the reference's loops take the whole batch's ``t``
  for every episode, which only works with one query (its training and test batch);
- no hard-coded ``cuda`` device; the refinement detaches the query features (the
  reference runs it under ``torch.no_grad`` at test time; evaluated with gradients
  enabled it would back-propagate into the encoder);
- the masked average is computed on the feature grid with the mask pulled back
  through the bilinear upsampling (the same sum in another order, see ``lineage``).

Evaluation caches ``encode`` per slice: both paths and ``t`` are packed in one
tensor on the fine grid (the coarse path repeated 2 x 2 and cropped; ``[::2, ::2]``
recovers it exactly since its grid is ``ceil(h/2)``). ``support_state`` holds the two
support prototypes; ``score``/``predict`` do everything query-dependent (threshold,
refinement). ``predict`` combines the paths at image resolution as the reference;
``score`` (the base API's feature-grid logits) combines them on the fine grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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


@dataclass(frozen=True)
class QNetParams(LineageParams):
    """Q-Net (Shen et al., 2022): ADNet's thresholded one-prototype head with a query-derived threshold, a layer3 +
    layer4 dual path and test-time prototype refinement on the query."""

    alpha: float = param(0.9, """Weight of the layer3 (fine) path's probability; the layer4 path gets 1 - alpha
        (reference README: 0.9 for setting 1, 0.6 for setting 2).""", ge=0, le=1)
    scale: float = cosine_scale("Multiplier of the negative cosine similarity (ADNet's scaler).")
    refine_iters: int = param(7, """Adam steps of the test-time prototype refinement on each query (the
        reference's n_iters); 0 disables it. Never applied in training, as the reference.""", ge=0)
    refine_lr: float = param(0.01, "Adam learning rate of the prototype refinement.", gt=0)


class QNet(LineageSegmenter):
    Params = QNetParams

    # -- features ---------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 2C+1, h, w]``: fine path, coarse path repeated 2 x 2 (cropped), ``t``."""
        fine, coarse, t = self.backbone.levels(images)
        h, w = fine.shape[-2:]
        if coarse.shape[-2:] != ((h + 1) // 2, (w + 1) // 2):
            raise ValueError(f"coarse path {tuple(coarse.shape[-2:])} is not half the fine grid {(h, w)}")
        up = coarse.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)[..., :h, :w]
        return self.pack(torch.cat([fine, up], dim=1), t)

    def paths(self, packed: torch.Tensor):
        """Packed features -> ``([fine [B,C,h,w], coarse [B,C,h',w']], t [B,1])``."""
        feats, t = self.split(packed)
        c = feats.shape[1] // 2
        return [feats[:, :c], feats[:, c:, ::2, ::2]], t

    # -- support ----------------------------------------------------------------------
    def support_state(self, feats, fg):
        """Prototypes of both paths from ``fg`` at any resolution (``[1,H,W]`` or
        ``[1,1,H,W]``); the features are upsampled to it, as the reference does with
        the image-resolution mask."""
        levels, _ = self.paths(feats)
        return {"protos": [upsampled_masked_average(f, fg) for f in levels]}

    def support_from_mask(self, feats, mask):
        return self.support_state(feats, mask)

    # -- query --------------------------------------------------------------------------
    def _path_probability(self, feats, proto, t):
        return lineage_prediction(similarity(feats, proto, self.params.scale), t)

    def probability(self, query_feats: torch.Tensor, state, size) -> torch.Tensor:
        """Foreground probability ``[B,1,*size]``: each path's prediction (refined at
        test time), upsampled to ``size`` and combined with ``(alpha, 1 - alpha)``."""
        levels, t = self.paths(query_feats)
        refine = not self.training and self.params.refine_iters > 0
        preds = []
        for feats, proto in zip(levels, state["protos"]):
            pred = self._path_probability(feats, proto, t)
            if refine:
                pred = self._path_probability(feats, self.refine(feats, proto, pred, t), t)
            preds.append(upsample_probability(pred[:, None], size))
        return self._combine(preds)

    def _combine(self, preds):
        # as the reference: weighted sum over the paths divided by the weights' sum (1 up to rounding)
        alpha = torch.tensor([self.params.alpha, 1.0 - self.params.alpha], dtype=preds[0].dtype,
                             device=preds[0].device)
        return torch.stack([a * p for a, p in zip(alpha, preds)]).sum(0) / alpha.sum()

    def refine(self, feats, proto, pred, t) -> torch.Tensor:
        """Test-time prototype refinement (see the module docstring;
        :func:`fsmis.models.lineage.refine_prototype`): ``feats [B,C,h,w]``, ``proto [1,C]``
        or ``[B,C]``, ``pred [B,h,w]`` the path's first prediction -> refined ``[B,C]``,
        one per query."""
        t = t.detach()
        return refine_prototype(feats, proto, pred, lambda f, p: self._path_probability(f, p, t),
                                self.params.refine_iters, self.params.refine_lr)

    def score(self, query_feats, state):
        """Logits on the fine feature grid (the coarse path upsampled to it)."""
        return probability_logits(self.probability(query_feats, state, query_feats.shape[-2:]))

    def predict(self, query_feats, state, size):
        """Logits at ``size``, the paths combined at that resolution as the reference."""
        return probability_logits(self.probability(query_feats, state, size))

    # -- training -----------------------------------------------------------------------
    def forward(self, sup_img: torch.Tensor, sup_fg: torch.Tensor, qry_img: torch.Tensor):
        """One episode, support ``[1,3,H,W]`` + mask ``[1,H,W]``, queries ``[B,3,H,W]``
        (encoded in one batch) -> ``(logits [B,2,H,W], {"align": ...})``."""
        feats = self.encode(torch.cat([sup_img, qry_img]))
        sup_f, qry_f = feats[:1], feats[1:]
        p = self.probability(qry_f, self.support_from_mask(sup_f, sup_fg), qry_img.shape[-2:])
        losses = {}
        if self.training and self.align:
            losses["align"] = self.alignment_loss(p, qry_f, sup_f, sup_fg)
        return probability_logits(p), losses

    def alignment_loss(self, p, qry_f, sup_f, sup_fg) -> torch.Tensor:
        """``p [B,1,H,W]`` the query prediction at image resolution: each query's
        predicted foreground -> query prototypes -> predict the support (with that
        query's ``t``) -> NLL against ``sup_fg [1,H,W]``; mean over the queries, a
        query without predicted foreground counting 0."""
        fg = (p > 1.0 - p).to(p.dtype)  # argmax of (1-p, p), no gradient through the mask
        keep = fg.flatten(1).amax(1) > 0
        if not bool(keep.any()):
            return p.new_zeros(())
        q_levels, t = self.paths(qry_f[keep])
        s_levels, _ = self.paths(sup_f)
        n = int(keep.sum())
        preds = []
        for q, s in zip(q_levels, s_levels):
            proto = upsampled_masked_average(q, fg[keep])
            pred = self._path_probability(s.expand(n, -1, -1, -1), proto, t)
            preds.append(upsample_probability(pred[:, None], sup_fg.shape[-2:]))
        target = sup_fg.reshape(1, *sup_fg.shape[-2:]).expand(n, -1, -1)
        # the mean over the kept queries' pixels = the mean of their per-query NLLs (same size)
        return lineage_nll(self._combine(preds), target) * (n / p.shape[0])
