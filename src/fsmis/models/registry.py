"""Method registry: adding a method = one module + one line in ``METHODS``.

``build(method, model_cfg, method_params)`` returns an ``nn.Module`` following
``fsmis.models.fewshot.FewShotSegmenter``. ``model_cfg`` holds the backbone choice
(``backbone``, ``feature_dim``, ``pretrained``); ``method_params`` the method's own
constructor keywords from the config.
"""

from __future__ import annotations

from fsmis.models import backbones
from fsmis.models.dspnet import DSPNet
from fsmis.models.iplsl import IPLSL
from fsmis.models.panet import PANet
from fsmis.models.resolve import resolve  # noqa: F401 (part of the registry's API)
from fsmis.models.ssl_alpnet import SSLALPNet

METHODS = {
    "ssl_alpnet": SSLALPNet,
    "panet": PANet,
    "dspnet": DSPNet,
    "iplsl": IPLSL,
}


def build(method: str, model_cfg: dict, method_params: dict | None = None):
    try:
        cls = METHODS[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}; registered: {', '.join(sorted(METHODS))}") from None
    backbone = backbones.build(model_cfg.get("backbone", "deeplabv3_resnet101"),
                               feature_dim=model_cfg.get("feature_dim", 256),
                               pretrained=model_cfg.get("pretrained"))
    return cls(backbone, **(method_params or {}))
