"""The files between workflow stages as typed objects: ``splits.json``,
``classmap.json``, ``metrics.json`` and the ``meta`` entry of ``model.pt``.

Each class reads its file (``read(path)``), checks it, and writes it (``write(path)``,
atomic, through ``fsmis.io``) in the JSON layout docs/contracts.md describes: the same
keys in the same order as the stages wrote before these classes existed, so files on
disk stay byte-identical. A file that breaks its contract raises
``fsmis.errors.InputError(path, problem)`` with the offending field named in
``problem`` (e.g. ``folds[2].support``), so a failing job says what to fix.

Standard library only at import: ``fsmis.io`` (SimpleITK) and ``fsmis.checkpoint``
(torch) are imported where a file is read or written.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from fsmis.errors import InputError

_DOCS = "see docs/contracts.md"


def _read_json(path):
    from fsmis.io import read_json  # InputError for a missing file or invalid JSON

    return read_json(path)


def _write_json(obj, path) -> None:
    from fsmis.io import write_json

    write_json(obj, path)


class _Checker:
    """Validation against one file: every failure is an InputError naming the file and
    the field."""

    def __init__(self, path):
        self.path = os.fspath(path) if path is not None else "<in memory>"

    def fail(self, where: str, problem: str):
        raise InputError(self.path, f"{where}: {problem}" if where else problem)

    def obj(self, value, where: str, what: str = "a JSON object") -> Mapping:
        if not isinstance(value, Mapping):
            self.fail(where, f"must be {what}, got {type(value).__name__}")
        return value

    def keys(self, data: Mapping, required, name: str) -> None:
        missing = [k for k in required if k not in data]
        if missing:
            # the wording callers and tests match on: "missing key(s) a, b"
            raise InputError(self.path, f"missing key(s) {', '.join(missing)} ({_DOCS}, {name})")

    def string(self, value, where: str) -> str:
        if not isinstance(value, str) or not value:
            self.fail(where, f"must be a non-empty string, got {value!r}")
        return value

    def strings(self, value, where: str, non_empty: bool = False) -> tuple[str, ...]:
        if not isinstance(value, (list, tuple)) or any(not isinstance(v, str) or not v for v in value):
            self.fail(where, f"must be a list of names, got {value!r}")
        if non_empty and not value:
            self.fail(where, "must not be empty")
        return tuple(value)

    def integer(self, value, where: str, minimum: int | None = None) -> int:
        # JSON has one number type: 3.0 is accepted as 3, True (a bool) is not
        ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and float(value).is_integer()
        if not ok:
            self.fail(where, f"must be an integer, got {value!r}")
        if minimum is not None and int(value) < minimum:
            self.fail(where, f"must be >= {minimum}, got {value!r}")
        return int(value)

    def fraction(self, value, where: str) -> float:
        """A Dice fraction 0..1, NaN (or null) where undefined."""
        if value is None:
            return math.nan
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            self.fail(where, f"must be a number, got {value!r}")
        value = float(value)
        if not math.isnan(value) and not 0.0 <= value <= 1.0:
            self.fail(where, f"{value} is not a Dice fraction in 0..1 (percent written by mistake?)")
        return value


# --------------------------------------------------------------------------- splits.json


@dataclass(frozen=True)
class Fold:
    """One fold: its test cases, the support case (labelled, never tested in this fold)
    and the training cases (unlabelled for the self-supervised methods)."""

    fold: int
    test: tuple[str, ...]
    support: str
    train: tuple[str, ...]

    def to_json(self) -> dict:
        return {"fold": self.fold, "test": list(self.test), "support": self.support, "train": list(self.train)}

    @classmethod
    def from_json(cls, data, path=None, where: str = "fold") -> Fold:
        check = _Checker(path)
        check.obj(data, where)
        missing = [k for k in ("fold", "test", "support", "train") if k not in data]
        if missing:
            check.fail(where, f"missing key(s) {', '.join(missing)}")
        fold = cls(
            fold=check.integer(data["fold"], f"{where}.fold", minimum=0),
            test=check.strings(data["test"], f"{where}.test", non_empty=True),
            support=check.string(data["support"], f"{where}.support"),
            train=check.strings(data["train"], f"{where}.train"),
        )
        if fold.support in fold.test:
            check.fail(f"{where}.support", f"{fold.support!r} is also a test case of the fold")
        overlap = sorted(set(fold.train) & {*fold.test, fold.support})
        if overlap:
            check.fail(f"{where}.train", f"holds test or support case(s) {overlap}")
        return fold


@dataclass(frozen=True)
class Splits:
    """``splits.json``: ``{"n_folds": n, "folds": [Fold, ...]}``, fold k at index k
    (``fsmis.data.splits.make_folds``), and, for folds of another code lineage
    (``splits.lineage``, ``fsmis.data.lineage_folds``), ``lineage`` and ``supp_idx``
    (absent for SSL-ALPNet's partition, so those files stay as they were)."""

    n_folds: int
    folds: tuple[Fold, ...]
    lineage: str = "ssl_alpnet"
    supp_idx: int | None = None

    def fold(self, k: int) -> Fold:
        if not 0 <= int(k) < len(self.folds):
            raise ValueError(f"no fold {k}: splits.json has folds 0..{len(self.folds) - 1}")
        return self.folds[int(k)]

    def to_json(self) -> dict:
        out = {"n_folds": self.n_folds}
        if self.lineage != "ssl_alpnet":
            out.update(lineage=self.lineage, supp_idx=self.supp_idx)
        return {**out, "folds": [f.to_json() for f in self.folds]}

    @classmethod
    def from_json(cls, data, path=None) -> Splits:
        check = _Checker(path)
        check.obj(data, "", "a JSON object (splits.json)")
        check.keys(data, ("n_folds", "folds"), "splits.json")
        n_folds = check.integer(data["n_folds"], "n_folds", minimum=1)
        if not isinstance(data["folds"], list):
            check.fail("folds", f"must be a list, got {type(data['folds']).__name__}")
        folds = tuple(Fold.from_json(f, path, f"folds[{i}]") for i, f in enumerate(data["folds"]))
        if len(folds) != n_folds:
            check.fail("folds", f"{len(folds)} folds listed, n_folds is {n_folds}")
        for i, f in enumerate(folds):
            if f.fold != i:
                check.fail(f"folds[{i}].fold", f"is {f.fold}; folds are listed in order 0..{n_folds - 1}")
        lineage = check.string(data.get("lineage", "ssl_alpnet"), "lineage")
        supp_idx = data.get("supp_idx")
        if supp_idx is not None:
            supp_idx = check.integer(supp_idx, "supp_idx")
        return cls(n_folds, folds, lineage, supp_idx)

    @classmethod
    def read(cls, path) -> Splits:
        return cls.from_json(_read_json(path), path)

    def write(self, path) -> None:
        _write_json(self.to_json(), path)


# --------------------------------------------------------------------------- classmap.json


@dataclass(frozen=True)
class ClassMap:
    """``classmap.json``: per class, per case, the axial slices holding the class
    (``{class: {case: [z, ...]}}``, every case listed, ``[]`` where absent;
    ``fsmis.data.preprocess.slice_index``). ``slices`` is that mapping."""

    slices: Mapping[str, Mapping[str, tuple[int, ...]]]

    def of(self, name: str, case: str) -> tuple[int, ...]:
        """Slices of class ``name`` in ``case`` (empty where it is absent or unlisted)."""
        return tuple(self.slices.get(name, {}).get(case, ()))

    def to_json(self) -> dict:
        return {name: {case: list(zs) for case, zs in by_case.items()} for name, by_case in self.slices.items()}

    @classmethod
    def from_json(cls, data, path=None) -> ClassMap:
        check = _Checker(path)
        check.obj(data, "", "a JSON object {class: {case: [z, ...]}} (classmap.json)")
        slices = {}
        for name, by_case in data.items():
            check.obj(by_case, name, "an object {case: [z, ...]}")
            slices[name] = {}
            for case, zs in by_case.items():
                if not isinstance(zs, list):
                    check.fail(f"{name}.{case}", f"must be a list of slice indices, got {zs!r}")
                slices[name][case] = tuple(check.integer(z, f"{name}.{case}", minimum=0) for z in zs)
        return cls(slices)

    @classmethod
    def read(cls, path) -> ClassMap:
        return cls.from_json(_read_json(path), path)

    def write(self, path) -> None:
        _write_json(self.to_json(), path)


# --------------------------------------------------------------------------- metrics.json


@dataclass(frozen=True)
class ProtocolResult:
    """One protocol's results in ``metrics.json``: per class the mean Dice over the
    fold's test scans (fraction; NaN where no scan has a value), their ``mean_dice``,
    ``n_cases`` scanned and the classes not evaluated for lack of support."""

    dice: Mapping[str, float]
    mean_dice: float = math.nan
    n_cases: int | None = None
    support_missing: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {"dice": dict(self.dice), "mean_dice": self.mean_dice, "n_cases": self.n_cases,
                "support_missing": list(self.support_missing)}

    @classmethod
    def from_json(cls, data, path=None, where: str = "protocol") -> ProtocolResult:
        check = _Checker(path)
        dice = data.get("dice") if isinstance(data, Mapping) else None
        if not isinstance(dice, Mapping) or not dice:
            check.fail(f"{where}.dice", "must map class names to Dice values")
        n_cases = data.get("n_cases")
        return cls(
            dice={str(k): check.fraction(v, f"{where}.dice.{k}") for k, v in dice.items()},
            mean_dice=check.fraction(data.get("mean_dice"), f"{where}.mean_dice"),
            n_cases=None if n_cases is None else check.integer(n_cases, f"{where}.n_cases", minimum=0),
            support_missing=check.strings(data.get("support_missing") or [], f"{where}.support_missing"),
        )


@dataclass(frozen=True)
class Metrics:
    """``metrics.json`` of one method, setting and fold (``fsmis.stages.evaluation.evaluate``).
    ``method``, ``setting``, ``fold`` and ``protocols`` are required; the others were
    added over time and default to empty when an older file lacks them."""

    method: str
    setting: str
    fold: int
    protocols: Mapping[str, ProtocolResult]
    dataset: str = ""
    support: str | None = None  # the fold's support scan
    support_by_class: Mapping[str, str] = field(default_factory=dict)  # differs under missing_support: next_scan
    support_missing: tuple[str, ...] = ()  # classes no scan could support: not evaluated
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # label group -> its classes
    seed: int = 0  # the training seed of the evaluated model (config `seeds`)
    # the support scans evaluated, in order of choice (evaluate.supports); the first is
    # `support`, the published protocol's, which the protocol summaries are from
    supports: tuple[str, ...] = ()

    def to_json(self) -> dict:
        # the order the evaluate stage has always written, then the later fields
        return {"method": self.method, "setting": self.setting, "fold": self.fold, "seed": self.seed,
                "dataset": self.dataset, "supports": list(self.supports), "support": self.support,
                "support_by_class": dict(self.support_by_class),
                "support_missing": list(self.support_missing),
                "groups": {g: list(classes) for g, classes in self.groups.items()},
                "protocols": {p: r.to_json() for p, r in self.protocols.items()}}

    @classmethod
    def from_json(cls, data, path=None) -> Metrics:
        check = _Checker(path)
        check.obj(data, "", "a JSON object (metrics.json)")
        check.keys(data, ("method", "setting", "fold", "protocols"), "metrics.json")
        try:
            fold = check.integer(data["fold"], "fold")
        except InputError:  # the wording report callers have always seen
            raise InputError(check.path, f"fold must be an integer, got {data['fold']!r}") from None
        protocols = data["protocols"]
        if not isinstance(protocols, Mapping) or not protocols:
            check.fail("protocols", "must be a non-empty object {protocol: {dice: {...}}}")
        groups = check.obj(data.get("groups") or {}, "groups")
        by_class = check.obj(data.get("support_by_class") or {}, "support_by_class")
        support = data.get("support")
        return cls(
            method=str(data["method"]),
            setting=str(data["setting"]),
            fold=fold,
            protocols={str(p): ProtocolResult.from_json(r, path, f"protocols.{p}") for p, r in protocols.items()},
            dataset=str(data.get("dataset") or ""),
            support=None if support is None else check.string(support, "support"),
            support_by_class={str(k): check.string(v, f"support_by_class.{k}") for k, v in by_class.items()},
            support_missing=check.strings(data.get("support_missing") or [], "support_missing"),
            groups={str(g): check.strings(c, f"groups.{g}") for g, c in groups.items()},
            seed=check.integer(data.get("seed", 0), "seed", minimum=0),
            supports=check.strings(data.get("supports") or ([] if support is None else [support]), "supports"),
        )

    @classmethod
    def read(cls, path) -> Metrics:
        return cls.from_json(_read_json(path), path)

    def write(self, path) -> None:
        _write_json(self.to_json(), path)


# --------------------------------------------------------------------------- model.pt


@dataclass(frozen=True)
class ModelMeta:
    """The ``meta`` entry of ``model.pt`` (and of the resume file ``checkpoint.pt``):
    what ``fsmis.stages.evaluation.evaluate`` rebuilds the network from and normalises scans
    with. ``config_hash`` covers everything the model depends on; a resume file with
    another hash is set aside (``fsmis.train.train``)."""

    method: str
    architecture: str  # fsmis.models.registry name the method resolved to
    setting: str
    fold: int
    group: str  # label group the model is tested on ("all" unless setting 2)
    model: Mapping[str, Any]  # the config's `model` section (backbone, feature_dim, ...)
    method_params: Mapping[str, Any]  # constructor keywords of the architecture
    config_hash: str
    test_classes: tuple[str, ...]
    # CT {"mean", "std"} of the fold's training scans; {"scheme": "per_scan"}: every scan by
    # its own (the ADNet lineage); None: MR only
    norm: Mapping[str, float] | None
    modality: str

    def to_json(self) -> dict:
        # builtins only (torch.load(weights_only=True)), in the order train wrote them
        return {"method": self.method, "architecture": self.architecture, "setting": self.setting,
                "fold": self.fold, "group": self.group, "model": self.model, "method_params": self.method_params,
                "config_hash": self.config_hash, "test_classes": list(self.test_classes), "norm": self.norm,
                "modality": self.modality}

    @classmethod
    def from_json(cls, data, path=None) -> ModelMeta:
        check = _Checker(path)
        check.obj(data, "meta")
        check.keys(data, [f.name for f in fields(cls)], "model.pt meta")
        norm = data["norm"]
        if norm is not None and norm != {"scheme": "per_scan"}:
            check.obj(norm, "meta.norm")
            for key in ("mean", "std"):
                value = norm.get(key)
                if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                    check.fail(f"meta.norm.{key}", f"must be a finite number, got {value!r}")
        return cls(
            method=check.string(data["method"], "meta.method"),
            architecture=check.string(data["architecture"], "meta.architecture"),
            setting=check.string(str(data["setting"]), "meta.setting"),
            fold=check.integer(data["fold"], "meta.fold", minimum=0),
            group=check.string(data["group"], "meta.group"),
            model=check.obj(data["model"], "meta.model"),
            method_params=check.obj(data["method_params"], "meta.method_params"),
            config_hash=check.string(data["config_hash"], "meta.config_hash"),
            test_classes=check.strings(data["test_classes"], "meta.test_classes"),
            norm=norm,
            modality=check.string(data["modality"], "meta.modality"),
        )

    @classmethod
    def load(cls, path, map_location="cpu") -> tuple[ModelMeta, dict]:
        """``(meta, state_dict)`` of a model file."""
        from fsmis import checkpoint

        state = checkpoint.load(path, map_location=map_location)
        if "meta" not in state:
            raise InputError(path, f"no 'meta' entry ({_DOCS}, model.pt)")
        return cls.from_json(state["meta"], path), state["state_dict"]

    @classmethod
    def read(cls, path) -> ModelMeta:
        return cls.load(path)[0]

    def write(self, path, state_dict: Mapping, step: int = 0) -> None:
        """A model file: ``{"state_dict", "step", "meta"}`` (what ``fsmis.train.train``
        writes at its end), atomically."""
        from fsmis import checkpoint

        checkpoint.save({"state_dict": state_dict, "step": int(step), "meta": self.to_json()}, path)
