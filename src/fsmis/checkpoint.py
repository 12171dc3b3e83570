"""Model files: ``model.pt`` (final) and ``checkpoint.pt`` (resume state).

Both are plain dicts of tensors and builtins saved atomically and read back with
``torch.load(weights_only=True)``, so loading never executes pickled code.
"""

from __future__ import annotations

import os

import torch

from fsmis.errors import InputError
from fsmis.io import atomic_path


def save(obj: dict, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load(path: str | os.PathLike, map_location="cpu") -> dict:
    if not os.path.isfile(path):
        raise InputError(path, "model file does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated/foreign files
        raise InputError(path, f"not a readable fsmis checkpoint: {err}") from None
    if not isinstance(obj, dict) or "state_dict" not in obj:
        raise InputError(path, "not an fsmis checkpoint (no 'state_dict' entry)")
    return obj
