"""What a run holds, as MLflow stores it: text cut to MLflow's limits, flattened params,
the config hash and the git commit of the code that ran."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MAX_PARAM_VALUE = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_TAG_VALUE = 8000  # mlflow.utils.validation.MAX_TAG_VAL_LENGTH
_BAD_KEY_CHARS = re.compile(r"[^\w./\- :]")  # MLflow accepts word characters and . / - space :


def as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return str(value)


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> ``{"a.b": "value"}`` with string values cut to MLflow's 6000 chars.

    Lists and tuples are JSON text; an empty mapping stays one key with ``"{}"``.
    Characters MLflow refuses in a key (e.g. the ``+`` of a label group name) become
    ``_``.
    """
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = _BAD_KEY_CHARS.sub("_", f"{prefix}{key}")
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = truncate(as_text(value), MAX_PARAM_VALUE)
    return flat


def tag_values(tags: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): truncate(as_text(v), MAX_TAG_VALUE) for k, v in tags.items()}


@functools.lru_cache(maxsize=8)
def _git_commit_in(folder: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, encoding="utf-8", timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def git_commit() -> str:
    """HEAD of the git repository around the cwd, else around this package, else 'unknown'."""
    return _git_commit_in(os.getcwd()) or _git_commit_in(str(Path(__file__).resolve().parent)) or "unknown"
