"""Errors that name the offending file, so a failed workflow job says what to fix."""

from __future__ import annotations

import os


class InputError(ValueError):
    """Bad input data: ``str(err)`` is ``"<path>: <problem>"``."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
