"""Cross-validation folds as the SSL-ALPNet reference builds them (``_SEP`` +
``CircularList``): cases in natural order, cut into ``n_folds`` contiguous blocks;
fold k tests block k, takes the first case of block k+1 (wrapping to the first case)
as the support scan, and trains on every other case.
"""

from __future__ import annotations

import re


def natural_key(case: str):
    """Sort ``case_2`` before ``case_10`` (numbers compared as numbers)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(case))]


def make_folds(cases, n_folds: int) -> dict:
    cases = sorted(cases, key=natural_key)
    if len(set(cases)) != len(cases):
        raise ValueError("case ids are not unique")
    if n_folds < 1 or len(cases) < n_folds + 1:
        raise ValueError(f"{len(cases)} cases cannot give {n_folds} folds (each fold needs its own test cases "
                         "plus a support scan from the next fold)")
    n = len(cases)
    # block boundaries like the reference's _SEP = [0, 4, 8, ...]; remainders go to the first blocks
    sep = [k * (n // n_folds) + min(k, n % n_folds) for k in range(n_folds + 1)]
    folds = []
    for k in range(n_folds):
        test = cases[sep[k]:sep[k + 1]]
        support = cases[sep[k + 1] % n]
        train = [c for c in cases if c not in test and c != support]
        folds.append({"fold": k, "test": test, "support": support, "train": train})
    return {"n_folds": n_folds, "folds": folds}
