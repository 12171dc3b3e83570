"""Which slices the evaluation protocols use: support slices per chunk, a class's
slice extent, chunk assignment and the query slice plan of each protocol (see
``fsmis.evaluate`` for the protocols). No torch here: the report uses these too.
"""

from __future__ import annotations

import math

import numpy as np


def support_slices(label: np.ndarray, cid: int, n_parts: int) -> list[int]:
    """Support slice per chunk: 1/6, 1/2, 5/6 of the class's slice list for 3 chunks."""
    zlist = np.flatnonzero((label == cid).reshape(label.shape[0], -1).any(axis=1))
    if zlist.size == 0:
        raise ValueError(f"class id {cid} absent from the support scan (fsmis.evaluate flags such classes "
                         f"support_missing before asking for its slices)")
    return [int(zlist[int((2 * p + 1) / (2 * n_parts) * zlist.size)]) for p in range(n_parts)]


def extent(label: np.ndarray, cid: int) -> tuple[int, int] | None:
    zs = np.flatnonzero((label == cid).reshape(label.shape[0], -1).any(axis=1))
    return (int(zs[0]), int(zs[-1])) if zs.size else None


def chunk_of(z: int, z_min: int, z_max: int, n_parts: int) -> int:
    if z_max == z_min:
        return 0
    part = math.floor((z - z_min) / ((z_max - z_min) / n_parts))
    return min(max(part, 0), n_parts - 1)


def next_support(support: str, ordered_cases: list[str], test_cases, has_class) -> str | None:
    """The replacement support scan of ``evaluate.missing_support: next_scan``: the first
    case after ``support`` in ``ordered_cases`` (the folds' natural order, wrapping)
    that is not a test case of the fold and for which ``has_class(case)`` holds; None
    when no scan qualifies."""
    if support not in ordered_cases:
        raise ValueError(f"support scan {support!r} is not among the cases {ordered_cases[:5]}...")
    start, test = ordered_cases.index(support), set(test_cases)
    for step in range(1, len(ordered_cases)):
        case = ordered_cases[(start + step) % len(ordered_cases)]
        if case not in test and has_class(case):
            return case
    return None


PROTOCOLS = ("oracle", "full")


def query_plan(protocol: str, label: np.ndarray, cid: int, n_parts: int) -> dict[int, list[int]] | None:
    """Slices of a query scan to segment for one class, by chunk (``{chunk: [z, ...]}``).

    ``oracle``: the slices of the class's extent in the query's ground truth, chunked
    within that extent (None when the class is absent: nothing is segmented).
    ``full``: every slice of the scan, chunked by relative position in the scan
    (``chunk_of(z, 0, n_slices - 1)``); no ground truth is read.
    """
    if protocol == "oracle":
        ext = extent(label, cid)
        if ext is None:
            return None
        z0, z1 = ext
    elif protocol == "full":
        z0, z1 = 0, label.shape[0] - 1
    else:
        raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    plan: dict[int, list[int]] = {}
    for z in range(z0, z1 + 1):
        plan.setdefault(chunk_of(z, z0, z1, n_parts), []).append(z)
    return plan
