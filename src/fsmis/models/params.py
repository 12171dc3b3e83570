"""Hyperparameters of a method: one typed, frozen dataclass, and the one validator.

A method declares its hyperparameters as a ``@dataclass(frozen=True)`` subclass of
:class:`MethodParams` and names it as its ``Params`` (``fsmis.models.fewshot``). Each
field is made by :func:`param`, which keeps together what used to be written twice
(constructor signature and schema): the default, the allowed values (the annotation:
``bool``, ``int``, ``float``, ``str``, ``Literal[...]``, ``X | None``,
``tuple[float, ...]``; bounds ``ge``/``gt``/``le``/``lt``) and the description. The
config's ``method_params.<method>`` entry, the JSON schema of it
(``fsmis.models.schema``) and the validation of a variant's ``params`` all come from
that one declaration.

Groups of fields repeated across methods are a nested frozen dataclass placed with
:func:`group` (e.g. :class:`LocalPooling`). They stay flat in the config (a method's
``threshold`` is ``method_params.<method>.threshold``, as before) and appear at the
group's place in the schema: the key order of the filled-in config, which Snakemake
compares by ``repr`` to decide reruns, is the declaration order.

Standard library only.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

# bound keyword -> (JSON schema keyword, test the value must pass, its wording)
BOUNDS = {
    "ge": ("minimum", lambda v, b: v >= b, ">="),
    "gt": ("exclusiveMinimum", lambda v, b: v > b, ">"),
    "le": ("maximum", lambda v, b: v <= b, "<="),
    "lt": ("exclusiveMaximum", lambda v, b: v < b, "<"),
}


def param(default: Any, description: str, *, ge=None, gt=None, le=None, lt=None, min_items: int | None = None):
    """A hyperparameter: its default, bounds (numbers) or smallest length (tuples), and
    the description the schema shows. Allowed values otherwise come from the annotation."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("a frozen parameter's default must be immutable (a tuple, not a list)")
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    meta = {"description": " ".join(description.split()), "bounds": bounds}
    if min_items is not None:
        meta["min_items"] = min_items
    return dataclasses.field(default=default, metadata=meta)


def group(cls: type[MethodParams], *, note: str | None = None, notes: Mapping[str, str] | None = None):
    """A shared group of fields nested in a method's parameters (flat in the config).
    ``note`` prefixes the description of every field of the group for this method,
    ``notes`` the one of single fields (``{field: text}``)."""
    return dataclasses.field(default_factory=cls, metadata={"group": cls, "note": note, "notes": dict(notes or {})})


@dataclasses.dataclass(frozen=True)
class Spec:
    """One flat key of a method's parameters and what it accepts."""

    key: str
    kind: Any  # the resolved annotation
    default: Any
    description: str
    bounds: dict
    min_items: int | None


def specs(cls: type[MethodParams]) -> list[Spec]:
    """The flat keys of ``cls`` in declaration order, groups expanded in place."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        sub = f.metadata.get("group")
        if sub is None:
            out.append(Spec(f.name, hints[f.name], f.default, f.metadata.get("description", ""),
                            f.metadata.get("bounds", {}), f.metadata.get("min_items")))
            continue
        for s in specs(sub):
            note = " ".join(n for n in (f.metadata["note"], f.metadata["notes"].get(s.key)) if n)
            out.append(dataclasses.replace(s, description=f"{note} {s.description}" if note else s.description))
    keys = [s.key for s in out]
    if len(set(keys)) != len(keys):
        raise TypeError(f"{cls.__name__}: a key is declared twice (a group repeats a field): {keys}")
    return out


def check(spec: Spec, value: Any, label: str) -> Any:
    """``value`` of ``spec`` in its canonical type (``int`` for an integral float of an
    ``int`` key, ``float`` for a number of a ``float`` key, a tuple for a sequence), or
    ValueError naming ``label`` (the method) and the key."""
    try:
        value = _coerce(spec.kind, value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{label}: {spec.key}: {err}") from None
    if value is not None:
        for name, bound in spec.bounds.items():
            _, ok, words = BOUNDS[name]
            if not ok(value, bound):
                raise ValueError(f"{label}: {spec.key}: must be {words} {bound}, got {value!r}")
        if spec.min_items is not None and len(value) < spec.min_items:
            raise ValueError(f"{label}: {spec.key}: needs at least {spec.min_items} values, got {list(value)!r}")
    return value


def _coerce(kind: Any, value: Any) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]  # only `X | None` is used
        return _coerce(inner, value)
    if origin is Literal:
        # compared with their type: 1 == True must not pass for a "1" or True choice
        if not any(type(value) is type(a) and value == a for a in args):
            raise ValueError(f"must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list, got {value!r}")
        return tuple(_coerce(args[0], v) for v in value)
    if kind is bool:
        if not isinstance(value, bool):
            raise TypeError(f"expected true or false, got {value!r}")
        return value
    if kind is int:  # JSON schema's integer: 4.0 is one, True is not
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"expected an integer, got {value!r}")
        return value
    if kind is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TypeError(f"expected a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported parameter type {kind!r}")


@dataclasses.dataclass(frozen=True)
class MethodParams:
    """Base of every method's (and group's) parameter dataclass: no fields itself, so a
    method without hyperparameters can use it as its ``Params``.

    Instances are validated on creation (types, allowed values, bounds); build one from a
    config mapping with :meth:`from_dict`, which also refuses unknown keys."""

    def __post_init__(self):
        label = type(self).__name__
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            sub = f.metadata.get("group")
            if sub is not None:
                if not isinstance(value, sub):
                    raise ValueError(f"{label}: {f.name}: expected a {sub.__name__}, got {value!r}")
                continue
            spec = Spec(f.name, hints[f.name], f.default, "", f.metadata.get("bounds", {}),
                        f.metadata.get("min_items"))
            # frozen: the canonical value replaces the given one through object.__setattr__
            object.__setattr__(self, f.name, check(spec, value, label))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None, method: str | None = None):
        """An instance from a flat config mapping (missing keys keep their defaults);
        ValueError naming ``method`` and the key for an unknown key or a bad value."""
        label = f"method_params of {method!r}" if method else cls.__name__
        values = dict(values or {})
        known = specs(cls)
        unknown = sorted(set(values) - {s.key for s in known})
        if unknown:
            raise ValueError(f"{label}: unknown parameter(s) {', '.join(map(repr, unknown))}; "
                             f"known: {', '.join(s.key for s in known)}")
        return cls._build(values, label)

    @classmethod
    def _build(cls, values: dict, label: str):
        kwargs = {}
        by_key = {s.key: s for s in specs(cls)}
        for f in dataclasses.fields(cls):
            sub = f.metadata.get("group")
            if sub is not None:
                kwargs[f.name] = sub._build({k: values[k] for k in (s.key for s in specs(sub)) if k in values}, label)
            elif f.name in values:
                # checked here, with the method's name, before __post_init__ checks again
                kwargs[f.name] = check(by_key[f.name], values[f.name], label)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The flat config mapping of these values, in declaration order (tuples as lists)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("group") is not None:
                out.update(value.to_dict())
            else:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def describe(cls) -> str:
        """The class docstring, if written (the schema's description of the method)."""
        doc = cls.__doc__ or ""
        # dataclass() makes up a docstring from the signature when none is written
        return "" if doc.startswith(f"{cls.__name__}(") else " ".join(inspect.cleandoc(doc).split())


# --- fields and groups shared by several methods --------------------------------------

EmptyBg = Literal["global", "raise"]


def cosine_scale(description: str = "Temperature multiplying the cosine similarity."):
    """The cosine head's temperature (20 in every paper here)."""
    return param(20.0, description, gt=0)


def empty_bg():
    """What a method with local background prototypes does when none passes the threshold."""
    return param("global", """When no background window passes the threshold: "global" uses the global background
                 prototype (ours); "raise" skips the episode as the reference's "faulty batch" handler does.""")


@dataclasses.dataclass(frozen=True)
class LocalPooling(MethodParams):
    """SSL-ALPNet's adaptive local prototype pooling (also in DSPNet and IPLSL)."""

    threshold: float = param(0.95, "Fraction of a pooling window the mask must cover for the window to become a "
                                   "local prototype.")
    train_window: int = param(4, "Local prototype pooling window (feature pixels) in training.", ge=1)
    test_window: int = param(2, "Local prototype pooling window (feature pixels) at test time.", ge=1)
    fg_switch_window: int = param(4, "Foreground local prototypes are used (beside the global prototype) only if a "
                                     "window of this size is covered by the foreground at least `threshold`; "
                                     "otherwise the global prototype alone (4 also at test time, as the "
                                     "reference).", ge=1)

    def window(self, training: bool) -> int:
        """The pooling window of the current mode."""
        return self.train_window if training else self.test_window
