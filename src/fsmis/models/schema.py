"""The methods' part of the workflow's config schema, generated from their ``Params``.

    python -m fsmis.models.schema --write   # rewrite the generated parts
    python -m fsmis.models.schema --check   # exit 1 (and say where) if they differ

The generated parts of ``workflow/schemas/config.schema.yaml`` lie between marker
comments (``# BEGIN GENERATED <part>`` ... ``# END GENERATED <part>``), each at the
indentation of its marker: ``method_params`` (one entry per method of
``registry.METHODS``, its fields in declaration order, so that the key order of the
filled-in config, which Snakemake compares by ``repr``, stays the declaration order)
and ``variants-method`` (the methods a variant may name). Everything else in the file is
written by hand. Methods added through ``FSMIS_EXTRA_METHODS`` or ``register`` are
not part of it (the committed schema must not depend on the environment).
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
import typing
from pathlib import Path
from typing import Any, Literal

from fsmis.models import registry
from fsmis.models.params import BOUNDS, MethodParams, specs

SCHEMA = Path(__file__).resolve().parents[3] / "workflow" / "schemas" / "config.schema.yaml"
COMMAND = "python -m fsmis.models.schema --write"
WIDTH = 100  # longest line written, as the hand-written rest of the file


# --- schema objects ---------------------------------------------------------------------

def field_schema(kind: Any) -> dict:
    """JSON schema of an annotation (the kinds ``fsmis.models.params`` accepts)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is Literal:
        return {"enum": list(args)}
    if origin is tuple:
        return {"type": "array", "items": field_schema(args[0])}
    if type(None) in args:  # X | None
        (inner,) = [a for a in args if a is not type(None)]
        return {"type": [field_schema(inner)["type"], "null"]}
    return {"type": {bool: "boolean", int: "integer", float: "number", str: "string"}[kind]}


def params_schema(cls: type[MethodParams]) -> dict:
    """The schema of one method's ``method_params`` entry."""
    props = {}
    for s in specs(cls):
        entry = {"description": s.description, **field_schema(s.kind)}
        entry.update({BOUNDS[name][0]: bound for name, bound in s.bounds.items()})
        if s.min_items is not None:
            entry["minItems"] = s.min_items
        entry["default"] = list(s.default) if isinstance(s.default, tuple) else s.default
        props[s.key] = entry
    out = {"description": cls.describe()} if cls.describe() else {}
    out.update({"type": "object", "default": {}, "additionalProperties": False, "properties": props})
    return out


def method_params_schema() -> dict:
    return {
        "description": "Per-method hyperparameters (only the running method's entry is used). Generated from "
                       f"each method's Params ({COMMAND}).",
        "type": "object",
        "default": {},
        # other names: methods registered outside this package, validated by their Params
        "additionalProperties": {"type": "object"},
        "properties": {name: params_schema(registry.params_class(name)) for name in registry.METHODS},
    }


# --- YAML text ----------------------------------------------------------------------------

def _plain_ok(text: str) -> bool:
    import yaml

    try:
        return yaml.safe_load(f"k: {text}") == {"k": text} and "\n" not in text
    except yaml.YAMLError:
        return False


def scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        mantissa, e, exponent = text.partition("e")
        # PyYAML (YAML 1.1) reads 1e-05 as a string: its floats need a point
        return f"{mantissa}.0e{exponent}" if e and "." not in mantissa else text
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value if _plain_ok(value) else '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(f"no YAML form for {value!r}")


def _is_scalar(value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def render(obj: dict, indent: int) -> list[str]:
    """Block-style YAML of a schema mapping; short leaves in flow style (``[a, b]``,
    ``{type: number}``), long descriptions folded."""
    pad = " " * indent
    lines = []
    for key, value in obj.items():
        head = f"{pad}{key}:"
        if key == "description" and isinstance(value, str):
            if len(head) + 1 + len(value) <= WIDTH and _plain_ok(value):
                lines.append(f"{head} {value}")
            else:  # folded: read back as the same words joined by spaces
                lines.append(f"{head} >")
                lines += textwrap.wrap(value, WIDTH, initial_indent=pad + "  ", subsequent_indent=pad + "  ",
                                       break_long_words=False, break_on_hyphens=False)
        elif isinstance(value, list) and all(_is_scalar(v) for v in value):
            lines.append(f"{head} [{', '.join(scalar(v) for v in value)}]")
        elif isinstance(value, dict) and not value:
            lines.append(f"{head} {{}}")
        elif isinstance(value, dict) and len(value) == 1 and all(_is_scalar(v) for v in value.values()):
            ((k, v),) = value.items()
            lines.append(f"{head} {{{k}: {scalar(v)}}}")
        elif isinstance(value, dict):
            lines.append(head)
            lines += render(value, indent + 2)
        else:
            lines.append(f"{head} {scalar(value)}")
    return lines


def parts() -> dict[str, Any]:
    """``{part: function(indent) -> lines}`` of every generated part."""
    return {
        "method_params": lambda indent: render({"method_params": method_params_schema()}, indent),
        "variants-method": lambda indent: render({"method": {"enum": list(registry.METHODS)}}, indent),
    }


_BLOCK = re.compile(r"^(?P<indent> *)# BEGIN GENERATED (?P<part>[\w-]+)[^\n]*\n(?P<body>.*?)"
                    r"^ *# END GENERATED (?P=part)\b", re.MULTILINE | re.DOTALL)


def generate(text: str) -> str:
    """``text`` (the schema file) with every generated part rewritten."""
    makers, seen = parts(), []

    def fill(match):
        part, indent = match["part"], len(match["indent"])
        if part not in makers:
            raise ValueError(f"unknown generated part {part!r} in the schema")
        seen.append(part)
        body = "\n".join(makers[part](indent)) + "\n"
        whole = match.string
        return whole[match.start():match.start("body")] + body + whole[match.end("body"):match.end()]

    out = _BLOCK.sub(fill, text)
    missing = sorted(set(makers) - set(seen))
    if missing:
        raise ValueError(f"the schema has no markers for the generated part(s) {missing}")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="rewrite the generated parts")
    mode.add_argument("--check", action="store_true", help="exit 1 if the generated parts are out of date")
    parser.add_argument("--schema", type=Path, default=SCHEMA, help=f"schema file (default: {SCHEMA})")
    args = parser.parse_args(argv)
    text = args.schema.read_text(encoding="utf-8")
    new = generate(text)
    if args.write:
        if new != text:
            args.schema.write_text(new)
        print(f"{args.schema}: {'rewritten' if new != text else 'up to date'}")
        return 0
    if new != text:
        import difflib

        diff = difflib.unified_diff(text.splitlines(True), new.splitlines(True), str(args.schema), "generated")
        sys.stderr.writelines(diff)
        print(f"{args.schema} differs from the methods' Params; run: {COMMAND}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
