"""The common shape of a prototype few-shot segmenter.

A method splits its work into what depends on the support only (``support_state``,
computed once per support slice at evaluation) and what depends on the query
(``score``), so evaluation can encode each slice once and reuse support prototypes
across all query slices of a chunk. ``forward`` composes the pieces for training,
and adds the PANet prototype-alignment loss (query prediction -> prototypes ->
segment the support) that every method here uses.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fsmis.models import prototypes as P
from fsmis.models.params import MethodParams


class EmptyPrototypeSet(RuntimeError):
    """Raised by a method's ``support_state`` when a class gets no prototype (the
    SSL-ALPNet reference's "faulty batch"): the trainer skips the episode."""


class FewShotSegmenter(nn.Module):
    """Base class: subclasses implement ``support_state`` and ``score``.

    A method is one module with a subclass of this class, and one line in
    ``fsmis.models.registry.METHODS``. Its hyperparameters are its ``Params``, a frozen
    dataclass (``fsmis.models.params``); the constructor takes an instance
    (``self.params``), :meth:`from_keywords` builds one from keywords.

    Optional hooks, declared here with their defaults; callers read them from any method:

    - ``Params``: the hyperparameter dataclass; the config's ``method_params.<method>``
      and its schema are generated from it (``python -m fsmis.models.schema --write``).
      Default: :class:`~fsmis.models.params.MethodParams`, no hyperparameters.
    - ``takes_query_label``: ``forward`` accepts ``qry_label=[B,H,W]`` in training (for
      a method's own losses, e.g. IPLSL's self-learning loss); the trainer passes it only
      when this is true. Default false.
    - ``encode``: override for features other than the backbone's (e.g. several levels
      packed along the channels); evaluation caches what it returns per slice.
    - ``alignment_loss`` and ``forward``: override to change the alignment pass or to
      share work between the main and the alignment pass.
    - ``support_state`` may raise :class:`EmptyPrototypeSet` to have the episode skipped.
    - ``support_from_mask``: the support state from the features and the
      image-resolution mask; by default ``support_state`` of the mask resized to the
      feature grid. Override when the support side needs the full-resolution mask
      (DSPNet's ``seed_mask: strided``). ``prepare_support`` and ``forward`` call it.
    - ``build_backbone(model_cfg)`` (class method): the encoder the method runs on for
      the config's ``model`` section; by default ``fsmis.models.backbones.build``. A
      lineage whose reference uses its own trunk (the ADNet lineage's ResNet-101)
      overrides it.
    - ``query_loss_weights(train_cfg)``: the (background, foreground) class weights of
      the query cross-entropy; by default ``train.bg_weight``/``fg_weight`` (the
      SSL-ALPNet lineage's 0.05/1). A method whose reference weighs otherwise (the ADNet
      lineage's 0.1/1) overrides it.
    """

    Params: ClassVar[type[MethodParams]] = MethodParams
    takes_query_label: ClassVar[bool] = False

    def __init__(self, backbone: nn.Module, params: MethodParams | None = None, *, align: bool = True):
        super().__init__()
        if params is None:
            params = self.Params()
        elif not isinstance(params, self.Params):
            raise TypeError(f"{type(self).__name__} takes {self.Params.__name__}, got {type(params).__name__}")
        self.params = params
        self.backbone = backbone
        self.align = align

    @classmethod
    def from_keywords(cls, backbone: nn.Module, **keywords) -> FewShotSegmenter:
        """The method with ``Params`` built from keywords (config names and values,
        validated as the config's are)."""
        return cls(backbone, cls.Params.from_dict(keywords, cls.__name__))

    @classmethod
    def build_backbone(cls, model_cfg: dict) -> nn.Module:
        """The encoder for the config's ``model`` section (``backbone``, ``feature_dim``,
        ``pretrained``)."""
        from fsmis.models import backbones

        return backbones.build(model_cfg.get("backbone", "deeplabv3_resnet101"),
                               feature_dim=model_cfg.get("feature_dim", 256), pretrained=model_cfg.get("pretrained"))

    def query_loss_weights(self, train_cfg: dict) -> tuple[float, float]:
        """(background, foreground) weights of the query cross-entropy."""
        return float(train_cfg["bg_weight"]), float(train_cfg["fg_weight"])

    # -- pieces -----------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def support_state(self, feats: torch.Tensor, fg: torch.Tensor):
        """Support-only work. ``feats [1,C,h,w]``, ``fg [1,1,h,w]`` on the feature grid."""
        raise NotImplementedError

    def support_from_mask(self, feats: torch.Tensor, mask: torch.Tensor):
        """Support state from ``feats [1,C,h,w]`` and the image-resolution mask
        ``[1,H,W]``: ``support_state`` of the mask resized to the feature grid."""
        return self.support_state(feats, P.resize_mask(mask, feats.shape[-2:]))

    def score(self, query_feats: torch.Tensor, state) -> torch.Tensor:
        """``[B,C,h,w]`` query features -> ``[B,2,h,w]`` (background, foreground) scores."""
        raise NotImplementedError

    def predict(self, query_feats: torch.Tensor, state, size: tuple[int, int]) -> torch.Tensor:
        """Scores upsampled (bilinear) to the image size: ``[B,2,H,W]`` logits."""
        return F.interpolate(self.score(query_feats, state), size=size, mode="bilinear", align_corners=False)

    def prepare_support(self, sup_img: torch.Tensor, sup_fg: torch.Tensor):
        """Encode one support slice ``[1,3,H,W]`` with its mask ``[1,H,W]`` -> state."""
        return self.support_from_mask(self.encode(sup_img), sup_fg)

    # -- training ---------------------------------------------------------------
    def forward(self, sup_img: torch.Tensor, sup_fg: torch.Tensor, qry_img: torch.Tensor):
        """One 1-way 1-shot episode: returns ``(logits [B,2,H,W], {loss_name: tensor})``.

        Support and query go through the encoder as one batch, as the reference does
        (BatchNorm in training mode sees both).
        """
        size = qry_img.shape[-2:]
        feats = self.encode(torch.cat([sup_img, qry_img]))
        sup_f, qry_f = feats[:1], feats[1:]
        scores = self.score(qry_f, self.support_from_mask(sup_f, sup_fg))
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
