"""Which architecture and hyperparameters a method name of the config stands for.

Standard library only: the workflow calls :func:`resolve` while it builds the job graph
(the rules' params), and ``fsmis.models.registry`` re-exports it for the jobs.
"""

from __future__ import annotations


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
