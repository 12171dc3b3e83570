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

import torch

from fsmis.models import prototypes as P
from fsmis.models.fewshot import FewShotSegmenter


class EmptyPrototypeSet(RuntimeError):
    """No window passed the threshold (the reference's "faulty batch")."""


class SSLALPNet(FewShotSegmenter):
    def __init__(self, backbone, threshold=0.95, train_window=4, test_window=2, fg_switch_window=4,
                 scale=20.0, empty_bg="global", align=True):
        super().__init__(backbone, align=align)
        if empty_bg not in ("global", "raise"):
            raise ValueError(f"empty_bg must be 'global' or 'raise', got {empty_bg!r}")
        self.threshold = threshold
        self.train_window = train_window
        self.test_window = test_window
        self.fg_switch_window = fg_switch_window
        self.scale = scale
        self.empty_bg = empty_bg

    @property
    def window(self) -> int:
        return self.train_window if self.training else self.test_window

    def support_state(self, feats, fg):
        bg = 1.0 - fg
        bg_protos = P.local_prototypes(feats, bg, self.window, self.threshold)
        if bg_protos.shape[0] == 0:
            if self.empty_bg == "raise":
                raise EmptyPrototypeSet("no background window above threshold")
            bg_protos = P.masked_average(feats, bg)
        fg_global = P.masked_average(feats, fg)
        if P.max_window_coverage(fg, self.fg_switch_window) >= self.threshold:
            fg_protos = torch.cat([P.local_prototypes(feats, fg, self.window, self.threshold), fg_global])
        else:
            fg_protos = fg_global
        return {"bg": bg_protos, "fg": fg_protos}

    def score(self, query_feats, state):
        bg = P.softmax_pool(P.cosine_scores(query_feats, state["bg"], self.scale))
        fg = P.softmax_pool(P.cosine_scores(query_feats, state["fg"], self.scale))
        return torch.cat([bg, fg], dim=1)
