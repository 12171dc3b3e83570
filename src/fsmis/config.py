"""The workflow config: the checks its JSON schema cannot express, its hash, its cases.

The Snakefile validates the config against ``workflow/schemas/config.schema.yaml``
with :func:`validate` (types, enums, defaults; one line per problem), then calls
:func:`check` while it parses, before any job, so an impossible experiment stops within
seconds with one line that names the key and, where there is one, what would work.
Standard library, PyYAML and jsonschema only (and fsmis modules that are): dry-runs
must not import torch.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from fsmis import envvars
from fsmis.data import adapters
from fsmis.data.lineage_folds import lineage_infeasible


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
    split_cfg = cfg.get("splits") or {}
    problem = lineage_infeasible(split_cfg.get("lineage", "ssl_alpnet"), len(case_ids(dataset)), n_folds,
                                 split_cfg.get("supp_idx", 2))
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


# --- schema validation, one line per problem ------------------------------------------

# What a JSON type is called in the messages: the config is written in YAML.
_TYPE_NAMES = {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "true or false",
               "null": "null", "array": "a list", "object": "a mapping"}
_SHOWN = 60  # characters of a bad value shown


def validate(config: dict, schema_path: str | os.PathLike) -> None:
    """Check ``config`` against the JSON schema (YAML or JSON) at ``schema_path`` and fill
    every missing key that has a ``default`` in place, nested objects included: the
    filled config is the one ``snakemake.utils.validate(config, schema_path)`` gives (the
    same Draft 2020-12 validator, extended the same way). Raise :class:`ConfigError`
    whose message has one line per problem, sorted by key path (:func:`error_lines`)."""
    import yaml
    from jsonschema import Draft202012Validator, validators
    from referencing import Registry, Resource

    schema_file = Path(schema_path).resolve()
    schema = yaml.safe_load(schema_file.read_text(encoding="utf-8"))
    # as Snakemake: relative $refs resolve against the schema file, never a remote $id
    schema["$id"] = schema_file.as_uri()

    def retrieve(uri: str) -> Resource:
        from urllib.parse import urlparse
        from urllib.request import url2pathname

        text = Path(url2pathname(urlparse(uri).path)).read_text(encoding="utf-8")
        return Resource.from_contents(yaml.safe_load(text))

    registry = Registry(retrieve=retrieve).with_resource(uri=str(schema_file),
                                                         resource=Resource.from_contents(schema))
    check_properties = Draft202012Validator.VALIDATORS["properties"]

    def fill_defaults(validator, properties, instance, subschema):
        # the jsonschema FAQ's recipe that Snakemake uses; the type guard only matters
        # when the instance is already wrong (Snakemake stops at the first error, this
        # collects them all and must not crash on `train: 5`)
        if validator.is_type(instance, "object"):
            for name, prop in properties.items():
                if "default" in prop:
                    instance.setdefault(name, prop["default"])
        yield from check_properties(validator, properties, instance, subschema)

    filling = validators.extend(Draft202012Validator, {"properties": fill_defaults})
    errors = list(filling(schema, registry=registry).iter_errors(config))
    if errors:
        lines = error_lines(errors, schema) or [" ".join(error.message.split()) for error in errors]
        raise ConfigError("\n".join(lines))


def error_lines(errors: Iterable, schema: Mapping[str, Any], detail: bool | None = None) -> list[str]:
    """One ``config: `key.path`: ...`` line per problem of jsonschema ``errors``: the
    bad value, what is allowed, and for an unknown key the nearest known one; sorted by
    key path, duplicates dropped. ``detail`` (default: the environment variable
    ``FSMIS_CONFIG_DETAIL`` set to 1) appends jsonschema's own message and the schema
    keyword that failed."""
    if detail is None:
        detail = os.environ.get(envvars.FSMIS_CONFIG_DETAIL, "").strip().lower() in ("1", "true", "yes", "on")
    explained = [(error, path, text) for error in errors for path, text in _explain(error, schema)]
    # `experimnt: x` is also a missing `experiment`: the misspelling's line says both
    suggested = " ".join(text for _, _, text in explained if "did you mean" in text)
    found: dict[str, tuple[tuple, str]] = {}
    for error, path, text in explained:
        if error.validator == "required" and f"`{_dotted(path)}`" in suggested:
            continue
        line = f"config: `{_dotted(path)}`: {text}"
        if detail:
            where = "/".join(str(part) for part in error.absolute_schema_path)
            message = " ".join(error.message.split())
            line += f" [jsonschema: {message}; schema: {where}]"
        found.setdefault(line, (_sort_key(path), line))
    return [line for _, line in sorted(found.values())]


def _sort_key(path) -> tuple:
    return tuple((0, part, "") if isinstance(part, int) else (1, 0, str(part)) for part in path)


def _dotted(path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _show(value) -> str:
    """``value`` as the config's YAML would read (null, true, 'text'), cut to 60 characters."""
    text = _render(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN - 3] + "..."


def _render(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{key}: {_render(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_render(item) for item in value) + "]"
    return repr(value)


def _allowed(schema) -> str:
    """What a (sub)schema accepts, in a few words: "an integer >= 1", "one of 'a', 'b'"."""
    if not isinstance(schema, Mapping):
        return "nothing" if schema is False else "anything"
    if "const" in schema:
        return _render(schema["const"])
    if "enum" in schema:
        values = [_render(value) for value in schema["enum"]]
        return values[0] if len(values) == 1 else "one of " + ", ".join(values)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " or ".join(_allowed(sub) for sub in schema[key])
    numeric = [f"{sign} {schema[key]}" for key, sign in (("minimum", ">="), ("exclusiveMinimum", ">"),
                                                          ("maximum", "<="), ("exclusiveMaximum", "<"))
               if key in schema]
    text = [f"matching {schema['pattern']}"] if "pattern" in schema else []
    listed = []
    low, high = schema.get("minItems"), schema.get("maxItems")
    if low is not None and low == high:
        listed.append(f"of {low} item{'s' * (low != 1)}")
    else:
        listed += [f"of at least {low} item{'s' * (low != 1)}"] if low else []
        listed += [f"of at most {high} item{'s' * (high != 1)}"] if high is not None else []
    if schema.get("uniqueItems"):
        listed.append("without repeats")
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    qualifiers = {"integer": numeric, "number": numeric, "string": text, "array": listed}
    if not types:
        return " ".join(["a value", *numeric, *text, *listed]) if numeric or text or listed else "anything"
    return " or ".join(" ".join([_TYPE_NAMES.get(t, t), *qualifiers.get(t, [])]) for t in types)


def _explain(error, schema) -> list[tuple[tuple, str]]:
    """(key path, text) for each problem one jsonschema error stands for."""
    path = tuple(error.absolute_path)
    keyword, value = error.validator, error.instance
    extra = _extra_keys(value, error.schema) if keyword == "additionalProperties" and isinstance(value, Mapping) else []
    if extra:
        return [(path + (key,), _unknown_key(path, key, error.schema, schema)) for key in extra]
    if keyword == "required" and isinstance(value, Mapping):
        return [(path + (key,), "missing; this key is required") for key in error.validator_value if key not in value]
    if keyword in ("anyOf", "oneOf") and error.context:
        branches: dict[int, list] = {}
        for sub in error.context:
            branches.setdefault(sub.schema_path[0], []).append(sub)
        # a branch that got past the value itself (failed only inside it: an item, a
        # key) is the one the user meant; its own problems say more than the list
        deep = [subs for subs in branches.values() if all(sub.relative_path for sub in subs)]
        if deep:
            return [item for sub in deep[0] for item in _explain(sub, schema)]
    if keyword in ("type", "enum", "const", "anyOf", "oneOf", "pattern", "minimum", "maximum", "exclusiveMinimum",
                   "exclusiveMaximum", "minItems", "maxItems", "uniqueItems"):
        if keyword == "oneOf" and not error.context:
            return [(path, f"got {_show(value)}, which fits more than one of: {_allowed(error.schema)}")]
        text = f"got {_show(value)}; expected {_allowed(error.schema)}"
        if keyword == "enum" and isinstance(value, str):
            close = difflib.get_close_matches(value, [v for v in error.validator_value if isinstance(v, str)], n=1)
            text += f" (did you mean {close[0]!r}?)" if close else ""
        return [(path, text)]
    message = " ".join(error.message.split())
    return [(path, f"got {_show(value)}; {message[:120]}")]


def _extra_keys(instance: Mapping, schema: Mapping) -> list:
    """Keys of ``instance`` that neither ``properties`` nor ``patternProperties`` allow."""
    known, patterns = schema.get("properties", {}), schema.get("patternProperties", {})
    return [key for key in instance
            if key not in known and not any(re.search(pattern, str(key)) for pattern in patterns)]


def _unknown_key(path: tuple, key, where: Mapping, schema: Mapping) -> str:
    # the right name at the wrong level first (`steps` at the top, not under `train`),
    # then the nearest spelling among the keys allowed here
    elsewhere = sorted((other for other in _key_paths(schema) if other[-1] == key), key=len)
    if elsewhere:
        return "unknown key here; did you mean " + " or ".join(f"`{_dotted(other)}`" for other in elsewhere[:3]) + "?"
    known = list(where.get("properties", {}))
    close = difflib.get_close_matches(str(key), known, n=1)
    if close:
        return f"unknown key; did you mean `{_dotted(path + (close[0],))}`?"
    patterns = list(where.get("patternProperties", {}))
    allowed = ([", ".join(f"`{name}`" for name in known)] if known else []) + [
        f"a key matching {pattern}" for pattern in patterns]
    return "unknown key; allowed: " + (", ".join(allowed) if allowed else "none")


def _key_paths(schema: Mapping, prefix: tuple = ()) -> list[tuple]:
    """Every key path the schema names under ``properties``, nested ones included."""
    paths = []
    for name, sub in (schema.get("properties") or {}).items():
        paths.append(prefix + (name,))
        if isinstance(sub, Mapping):
            paths += _key_paths(sub, prefix + (name,))
    return paths
