"""The common shape of a prototype few-shot segmenter.

A method splits its work into what depends on the support only (``support_state``,
computed once per support slice at evaluation) and what depends on the query
(``score``), so evaluation can encode each slice once and reuse support prototypes
across all query slices of a chunk. ``forward`` composes the pieces for training,
and adds the PANet prototype-alignment loss (query prediction -> prototypes ->
segment the support) that every method here uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fsmis.models import prototypes as P


class FewShotSegmenter(nn.Module):
    """Base class: subclasses implement ``support_state`` and ``score``."""

    def __init__(self, backbone: nn.Module, align: bool = True):
        super().__init__()
        self.backbone = backbone
        self.align = align

    # -- pieces -----------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def support_state(self, feats: torch.Tensor, fg: torch.Tensor):
        """Support-only work. ``feats [1,C,h,w]``, ``fg [1,1,h,w]`` on the feature grid."""
        raise NotImplementedError

    def score(self, query_feats: torch.Tensor, state) -> torch.Tensor:
        """``[B,C,h,w]`` query features -> ``[B,2,h,w]`` (background, foreground) scores."""
        raise NotImplementedError

    def predict(self, query_feats: torch.Tensor, state, size: tuple[int, int]) -> torch.Tensor:
        """Scores upsampled (bilinear) to the image size: ``[B,2,H,W]`` logits."""
        return F.interpolate(self.score(query_feats, state), size=size, mode="bilinear", align_corners=False)

    def prepare_support(self, sup_img: torch.Tensor, sup_fg: torch.Tensor):
        """Encode one support slice ``[1,3,H,W]`` with its mask ``[1,H,W]`` -> state."""
        feats = self.encode(sup_img)
        return self.support_state(feats, P.resize_mask(sup_fg, feats.shape[-2:]))

    # -- training ---------------------------------------------------------------
    def forward(self, sup_img: torch.Tensor, sup_fg: torch.Tensor, qry_img: torch.Tensor):
        """One 1-way 1-shot episode: returns ``(logits [B,2,H,W], {loss_name: tensor})``.

        Support and query go through the encoder as one batch, as the reference does
        (BatchNorm in training mode sees both).
        """
        size = qry_img.shape[-2:]
        feats = self.encode(torch.cat([sup_img, qry_img]))
        sup_f, qry_f = feats[:1], feats[1:]
        sup_m = P.resize_mask(sup_fg, feats.shape[-2:])
        scores = self.score(qry_f, self.support_state(sup_f, sup_m))
        logits = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
        losses = {}
        if self.training and self.align:
            losses["align"] = self.alignment_loss(scores, qry_f, sup_f, sup_fg)
        return logits, losses

    def alignment_loss(self, scores, qry_f, sup_f, sup_fg) -> torch.Tensor:
        """PANet prototype alignment: the query's own prediction (argmax on the
        feature grid, no gradient through the mask) builds prototypes that must
        segment the support; plain cross-entropy against the support mask."""
        pred_fg = P.foreground(scores[:1]).float()
        back = self.score(sup_f, self.support_state(qry_f[:1], pred_fg))
        back = F.interpolate(back, size=sup_fg.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(back, sup_fg.long())
