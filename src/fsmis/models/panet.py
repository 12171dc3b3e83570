"""PANet (Wang et al., ICCV 2019) as used in the FSMIS papers ("SSL-PANet"): one
masked-average prototype per class (foreground, background), 20 x cosine scores,
prototype alignment loss. The 1-way 1-shot case of the shared operators."""

from __future__ import annotations

import torch

from fsmis.models import prototypes as P
from fsmis.models.fewshot import FewShotSegmenter


class PANet(FewShotSegmenter):
    def __init__(self, backbone, scale=20.0, align=True):
        super().__init__(backbone, align=align)
        self.scale = scale

    def support_state(self, feats, fg):
        return {"bg": P.masked_average(feats, 1.0 - fg), "fg": P.masked_average(feats, fg)}

    def score(self, query_feats, state):
        return torch.cat([P.cosine_scores(query_feats, state[k], self.scale) for k in ("bg", "fg")], dim=1)
