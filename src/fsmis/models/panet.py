"""PANet (Wang et al., ICCV 2019) as used in the FSMIS papers ("SSL-PANet"): one
masked-average prototype per class (foreground, background), 20 x cosine scores,
prototype alignment loss. The 1-way 1-shot case of the shared operators."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fsmis.models import prototypes as P
from fsmis.models.fewshot import FewShotSegmenter
from fsmis.models.params import MethodParams, cosine_scale


@dataclass(frozen=True)
class PANetParams(MethodParams):
    """PANet (Wang et al., ICCV 2019): one masked-average prototype per class."""

    scale: float = cosine_scale()


class PANet(FewShotSegmenter):
    Params = PANetParams

    def support_state(self, feats, fg):
        return {"bg": P.masked_average(feats, 1.0 - fg), "fg": P.masked_average(feats, fg)}

    def score(self, query_feats, state):
        scale = self.params.scale
        return torch.cat([P.cosine_scores(query_feats, state[k], scale) for k in ("bg", "fg")], dim=1)
