"""The workflow config: the checks its JSON schema cannot express, its hash, its cases.

The Snakefile validates the config against ``workflow/schemas/config.schema.yaml``
(types, enums, defaults), then calls :func:`check` while it parses, before any job, so
an impossible experiment stops within seconds with one line that names the key and,
where there is one, what would work. Standard library only (and fsmis modules that
are): dry-runs must not import torch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from fsmis.data import adapters
from fsmis.data.splits import infeasible


class ConfigError(ValueError):
    """A config the workflow cannot run; ``str()`` is the one line to show."""


def config_hash(config: Mapping[str, Any]) -> str:
    """First 12 hex digits of the sha256 of the canonical JSON of ``config`` (keys sorted,
    ASCII, no spaces): what MLflow runs and resumable checkpoints are tagged with."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def case_ids(dataset: Mapping[str, Any]) -> list[str]:
    """The requested case ids of a dataset, from the config alone (the job graph is
    static; an adapter may read a local folder's listing)."""
    try:
        return adapters.get(dataset["name"]).case_ids(dataset)
    except (ValueError, OSError) as err:
        raise ConfigError(f"config: dataset {dataset['name']!r}: {err}") from None


def _digits_to_int(value):
    # `--config folds=[0]` and `dataset.cases=[3]` arrive as text; YAML files give ints
    return int(value) if isinstance(value, str) and value.isdigit() else value


def normalise(cfg: dict) -> dict:
    """Bring the spellings the schema accepts to one: settings as strings, folds and case
    numbers as integers; ``folds`` absent = every fold of ``n_folds``, ``seeds`` absent =
    ``[seed]``. In place."""
    cfg["settings"] = [str(s) for s in cfg["settings"]]
    cfg["folds"] = [int(f) for f in cfg.get("folds") or range(cfg["n_folds"])]
    # `seeds` absent = the one `seed`; every training seed is a wildcard of the tree
    seeds = cfg.get("seeds") or ([cfg["seed"]] if "seed" in cfg else [])
    if seeds:
        cfg["seeds"] = [int(s) for s in seeds]
    dataset = cfg["dataset"]
    if "cases" in dataset and not isinstance(dataset["cases"], list):
        dataset["cases"] = _digits_to_int(dataset["cases"])
    for key in ("cases", "exclude"):
        if isinstance(dataset.get(key), list):
            dataset[key] = [_digits_to_int(c) for c in dataset[key]]
    if "subtask" in dataset:
        dataset["subtask"] = int(dataset["subtask"])
    return cfg


def check(cfg: dict, registered: Iterable[str]) -> dict:
    """:func:`normalise` ``cfg``, then raise :class:`ConfigError` for what the schema
    cannot say: an unknown dataset or method, a fold listed twice or beyond
    ``n_folds``, a dataset too small for its folds (``fsmis.data.splits.infeasible``, the
    same check the splits step runs), an empty ``model.pretrained``."""
    normalise(cfg)
    dataset = cfg["dataset"]
    if dataset["name"] not in adapters.DATASETS:  # the adapters' registry is the one list
        raise ConfigError(f"config: dataset.name {dataset['name']!r} is not a registered dataset; "
                          f"known: {', '.join(adapters.DATASETS)}")
    for key in ("settings", "folds", "seeds"):
        if len(set(cfg.get(key, []))) != len(cfg.get(key, [])):
            raise ConfigError(f"config: {key} lists an entry twice: {cfg[key]}")
    n_folds = cfg["n_folds"]
    beyond = [f for f in cfg["folds"] if f >= n_folds]
    if beyond:
        raise ConfigError(f"config: folds {beyond} do not exist with n_folds={n_folds} "
                          f"(folds are numbered 0..{n_folds - 1})")
    registered = list(registered)
    unknown = [m for m in cfg["methods"] if m not in registered and m not in cfg.get("variants", {})]
    if unknown:
        raise ConfigError(f"config: methods {unknown} are neither registered ({', '.join(registered)}) "
                          "nor defined under `variants`")
    problem = infeasible(len(case_ids(dataset)), n_folds)
    if problem:
        raise ConfigError(f"config: dataset {dataset['name']!r}, n_folds={n_folds}: {problem}")
    problem = support_choices_problem((cfg.get("evaluate") or {}).get("supports", 1), len(case_ids(dataset)), n_folds)
    if problem:
        raise ConfigError(f"config: evaluate.supports: {problem}")
    if cfg["model"].get("pretrained") is not None and not cfg["model"]["pretrained"]:
        raise ConfigError("config: model.pretrained is empty; use null for random init")
    return cfg


def support_choices_problem(supports, n_cases: int, n_folds: int) -> str | None:
    """Why ``evaluate.supports`` cannot be met by every fold (the scans outside the
    largest test block of ``fsmis.data.splits``), or None."""
    from fsmis.data.splits import largest_test_block

    if supports == "all":
        return None
    eligible = n_cases - largest_test_block(n_cases, n_folds)
    if int(supports) > eligible:
        return (f"{supports} support scans asked, but with {n_cases} cases in {n_folds} folds a fold has only "
                f"{eligible} scans outside its test block; use at most {eligible} or \"all\"")
    return None


def source_grid_predictions(cfg: Mapping[str, Any], source_kind: str) -> bool:
    """Whether predictions are also written on the raw files' grids:
    ``evaluate.source_grid_predictions`` true/false, or "auto" (absent) = on for a
    user's local folder, whose raw images the predictions will be overlaid on."""
    value = cfg["evaluate"].get("source_grid_predictions", "auto")
    return source_kind == "local" if value == "auto" else value is True
