"""Cross-validation folds as the SSL-ALPNet reference builds them (ssl_alpnet.md §4).

Cases in natural order are cut into ``n_folds`` contiguous, near-equal blocks (the
reference's ``_SEP = [0, 4, 8, ...]``). Fold k tests block k; its support scan is the
first case of block k+1, wrapping to the very first case for the last fold (the
reference's ``CircularList``); every other case trains.
"""

from __future__ import annotations

import re
from collections import Counter


def natural_key(case: str) -> list:
    """``p2`` before ``p10``: digit runs compare as numbers. ``re.split`` with a group
    alternates text/digits, so keys of any two ids compare type by type."""
    return [int(t) if i % 2 else t for i, t in enumerate(re.split(r"(\d+)", str(case)))]


def make_folds(cases, n_folds: int) -> dict:
    """``{"n_folds": n, "folds": [{"fold", "test", "support", "train"}, ...]}``."""
    ordered = sorted((str(c) for c in cases), key=natural_key)
    dupes = sorted((c for c, k in Counter(ordered).items() if k > 1), key=natural_key)
    if dupes:
        raise ValueError(f"duplicate case ids: {dupes}")
    n = len(ordered)
    if n_folds < 2 or n < n_folds + 1:
        raise ValueError(f"{n} cases cannot give {n_folds} folds: need n_folds >= 2 and at least "
                         f"n_folds + 1 cases (each fold's test block plus a support scan from the next)")
    # remainders go to the first blocks: sizes differ by at most one
    sep = [k * (n // n_folds) + min(k, n % n_folds) for k in range(n_folds + 1)]
    folds = []
    for k in range(n_folds):
        test = ordered[sep[k]:sep[k + 1]]
        support = ordered[sep[k + 1] % n]  # last fold: sep[n_folds] == n wraps to case 0
        train = [c for c in ordered if c != support and c not in test]
        if not train:
            raise ValueError(f"fold {k} of {n} cases in {n_folds} folds leaves no training case")
        folds.append({"fold": k, "test": test, "support": support, "train": train})
    return {"n_folds": n_folds, "folds": folds}
