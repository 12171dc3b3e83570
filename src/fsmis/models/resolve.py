"""Which architecture and hyperparameters a method name of the config stands for.

Standard library only: the workflow calls :func:`resolve` while it builds the job graph
(the rules' params), and ``fsmis.models.registry`` re-exports it for the jobs.
"""

from __future__ import annotations

# The code lineage of each method (absent: SSL-ALPNet's). A lineage fixes what its
# reference code trains on: the ADNet lineage (ADNet, Q-Net, CAT-Net, RPT, GMRD) on 3D
# supervoxels with per-scan z-scored intensities, the SSL-ALPNet lineage on 2D
# superpixels with CT z-scored by the fold's training statistics.
LINEAGE = {"adnet": "adnet", "qnet": "adnet", "catnet": "adnet", "rpt": "adnet", "gmrd": "adnet"}
PSEUDO_LABELS = {"ssl_alpnet": "superpixels2d", "adnet": "supervoxels3d"}
NORMALISATION = {"ssl_alpnet": "ssl_alpnet", "adnet": "per_scan"}


def lineage(architecture: str) -> str:
    """``"ssl_alpnet"`` or ``"adnet"``: the code lineage of a registered method."""
    return LINEAGE.get(architecture, "ssl_alpnet")


def training_data(name: str, config: dict) -> dict[str, str]:
    """``{"pseudo_labels": superpixels2d | supervoxels3d, "normalisation": ssl_alpnet |
    per_scan}`` of a method name: ``train.pseudo_labels`` and ``train.normalisation``,
    where ``auto`` (the default) takes the method's lineage's."""
    arch, _ = resolve(name, config)
    train = config.get("train", {})
    out = {}
    for key, by_lineage in (("pseudo_labels", PSEUDO_LABELS), ("normalisation", NORMALISATION)):
        value = train.get(key, "auto")
        out[key] = by_lineage[lineage(arch)] if value == "auto" else value
    return out


def resolve(name: str, config: dict, setting: str | None = None) -> tuple[str, dict]:
    """``(architecture, hyperparameters)`` of a method name in a workflow config (the
    mapping the architecture's ``Params`` is built from): a registered method, a named
    variant (``config['variants']``: its ``params`` override the method's
    ``method_params``), or the ``untrained`` baseline (SSL-ALPNet's network). With
    ``setting``, the entries of ``config['method_params_by_setting'][setting][architecture]``
    override both (the papers tune some values per setting, e.g. DSPNet's alpha and BCMA
    taps)."""
    variant = config.get("variants", {}).get(name)
    if variant:
        arch = variant["method"]
    else:
        arch = "ssl_alpnet" if name == "untrained" else name
    params = dict(config.get("method_params", {}).get(arch, {}))
    if setting is not None:
        params.update(config.get("method_params_by_setting", {}).get(str(setting), {}).get(arch, {}))
    if variant:
        params.update(variant.get("params", {}))
    return arch, params
