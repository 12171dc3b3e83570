"""Method registry: adding a method = one module + one line in ``METHODS``.

A line maps the method's config name to ``"module:Class"``, a subclass of
``fsmis.models.fewshot.FewShotSegmenter`` whose ``Params`` dataclass holds its
hyperparameters. Classes are imported on use, so this module needs only the standard
library: the workflow reads the method names from it while it builds the job graph.

``build(method, model_cfg, method_params)`` returns the ``nn.Module``; ``model_cfg``
holds the backbone choice (``backbone``, ``feature_dim``, ``pretrained``),
``method_params`` the method's own hyperparameters from the config (validated into
its ``Params``: unknown keys, wrong types, values outside their range or choices
raise ValueError naming the method and the key).

Methods outside this package: ``register(name, "module:Class")`` in the running
process, or ``FSMIS_EXTRA_METHODS="name=module:Class[,name2=module2:Class2]"`` in the
environment (read at every call, and inherited by the workflow's jobs: one line in a
profile or a shell makes an out-of-tree method usable in ``methods:``). Their
``method_params`` entries are validated by their ``Params`` when the job builds them,
not by the schema, which only knows the methods listed here.
"""

from __future__ import annotations

import importlib
import os
import re

from fsmis import envvars
from fsmis.models.resolve import resolve  # noqa: F401 (part of the registry's API)

METHODS = {
    "ssl_alpnet": "fsmis.models.ssl_alpnet:SSLALPNet",
    "panet": "fsmis.models.panet:PANet",
    "dspnet": "fsmis.models.dspnet:DSPNet",
    "iplsl": "fsmis.models.iplsl:IPLSL",
    "adnet": "fsmis.models.adnet:ADNet",
    "qnet": "fsmis.models.qnet:QNet",
    "catnet": "fsmis.models.catnet:CATNet",
    "rpt": "fsmis.models.rpt:RPT",
    "gmrd": "fsmis.models.gmrd:GMRD",
}

# names the workflow gives other meanings (baselines), and the shape of a path wildcard
RESERVED = frozenset({"untrained", "mask_transfer"})
_NAME = re.compile(r"[A-Za-z0-9_]+")
_TARGET = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")

_registered: dict[str, str] = {}


def _checked(name: str, target: str, where: str) -> tuple[str, str]:
    if not _NAME.fullmatch(name) or name in RESERVED:
        raise ValueError(f"{where}: method name {name!r} must be letters, digits and _ and not one of "
                         f"{sorted(RESERVED)}")
    if not _TARGET.fullmatch(target):
        raise ValueError(f"{where}: {name!r} must point to 'module:Class', got {target!r}")
    return name, target


def register(name: str, target: str) -> None:
    """Add a method from outside this package for this process: ``target`` is
    ``"module:Class"``. Registering a name again with the same target is a no-op."""
    name, target = _checked(name, target, "register")
    if methods().get(name, target) != target:
        raise ValueError(f"register: method {name!r} is already registered as {methods()[name]!r}")
    _registered[name] = target


def _from_environment() -> dict[str, str]:
    out = {}
    for entry in re.split(r"[,\s]+", os.environ.get(envvars.FSMIS_EXTRA_METHODS, "").strip()):
        if not entry:
            continue
        name, sep, target = entry.partition("=")
        if not sep:
            raise ValueError(f"{envvars.FSMIS_EXTRA_METHODS}: expected name=module:Class, got {entry!r}")
        name, target = _checked(name.strip(), target.strip(), envvars.FSMIS_EXTRA_METHODS)
        if out.get(name, target) != target:
            raise ValueError(f"{envvars.FSMIS_EXTRA_METHODS}: method {name!r} is given twice")
        out[name] = target
    return out


def methods() -> dict[str, str]:
    """Every registered method, ``{name: "module:Class"}``: ``METHODS``, then those of
    ``FSMIS_EXTRA_METHODS`` and of :func:`register`. An extra may not replace a method
    of ``METHODS`` (a config would silently change meaning)."""
    out = dict(METHODS)
    for name, target in (*_from_environment().items(), *_registered.items()):
        if out.get(name, target) != target:
            raise ValueError(f"method {name!r} is registered twice: {out[name]!r} and {target!r}")
        out[name] = target
    return out


def names() -> list[str]:
    """The registered method names (what ``methods:`` and ``variants`` may use)."""
    return list(methods())


def method_class(method: str):
    """The class of a registered method, imported now."""
    from fsmis.models.fewshot import FewShotSegmenter
    from fsmis.models.params import MethodParams

    registered = methods()
    try:
        module, _, cls_name = registered[method].partition(":")
    except KeyError:
        raise ValueError(f"unknown method {method!r}; registered: {', '.join(sorted(registered))}") from None
    cls = getattr(importlib.import_module(module), cls_name)
    if not (isinstance(cls, type) and issubclass(cls, FewShotSegmenter)):
        raise TypeError(f"method {method!r}: {registered[method]} is not a FewShotSegmenter")
    if not (isinstance(cls.Params, type) and issubclass(cls.Params, MethodParams)):
        raise TypeError(f"method {method!r}: {cls.__name__}.Params is not a MethodParams dataclass")
    return cls


def params_class(method: str):
    """The hyperparameter dataclass of a registered method."""
    return method_class(method).Params


def build(method: str, model_cfg: dict, method_params: dict | None = None):
    cls = method_class(method)
    # validated before the backbone exists: a typo fails at once, not after its weights load
    params = cls.Params.from_dict(method_params or {}, method)
    return cls(cls.build_backbone(model_cfg), params)
