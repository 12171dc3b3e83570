"""SSL-ALPNet (Ouyang et al., ECCV 2020): adaptive local prototype pooling.

Faithful to the reference ``models/grid_proto_fewshot.py`` + ``alpmodule.py``:

- background: local prototypes only (``window x window`` average pooling of support
  features, kept where the pooled mask exceeds ``threshold`` = 0.95);
- foreground: local prototypes plus the global masked-average prototype, if some
  ``fg_switch_window`` cell (4x4, also at test time, as the reference) is covered
  >= ``threshold``; otherwise the global prototype alone;
- window = ``train_window`` (4) in training, ``test_window`` (2) at evaluation;
- scores = 20 x cosine, merged over prototypes by soft-max pooling.

Deviation, behind ``empty_bg``: when no background cell passes the threshold (a
query predicted almost entirely foreground, which the alignment loss can produce),
the reference raises and its training loop skips the batch ("faulty batch").
``empty_bg="global"`` (default) uses the global background prototype instead;
``empty_bg="raise"`` reproduces the reference (the trainer then skips the episode).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fsmis.models import prototypes as P
from fsmis.models.fewshot import EmptyPrototypeSet, FewShotSegmenter
from fsmis.models.params import EmptyBg, LocalPooling, MethodParams, cosine_scale, empty_bg, group


@dataclass(frozen=True)
class SSLALPNetParams(MethodParams):
    """SSL-ALPNet (Ouyang et al., ECCV 2020): adaptive local prototype pooling."""

    pooling: LocalPooling = group(LocalPooling)
    scale: float = cosine_scale()
    empty_bg: EmptyBg = empty_bg()


class SSLALPNet(FewShotSegmenter):
    Params = SSLALPNetParams

    @property
    def window(self) -> int:
        return self.params.pooling.window(self.training)

    def support_state(self, feats, fg):
        p = self.params
        bg = 1.0 - fg
        bg_protos = P.local_prototypes(feats, bg, self.window, p.pooling.threshold)
        if bg_protos.shape[0] == 0:
            if p.empty_bg == "raise":
                raise EmptyPrototypeSet("no background window above threshold")
            bg_protos = P.masked_average(feats, bg)
        fg_global = P.masked_average(feats, fg)
        if P.max_window_coverage(fg, p.pooling.fg_switch_window) >= p.pooling.threshold:
            fg_protos = torch.cat([P.local_prototypes(feats, fg, self.window, p.pooling.threshold), fg_global])
        else:
            fg_protos = fg_global
        return {"bg": bg_protos, "fg": fg_protos}

    def score(self, query_feats, state):
        bg = P.pooled_cosine(query_feats, state["bg"], self.params.scale)
        fg = P.pooled_cosine(query_feats, state["fg"], self.params.scale)
        return torch.cat([bg, fg], dim=1)
