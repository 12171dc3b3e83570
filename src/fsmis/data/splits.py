"""Cross-validation folds as the SSL-ALPNet reference builds them (docs/methods.md,
'SSL-ALPNet: folds').

Cases in natural order are cut into ``n_folds`` contiguous, near-equal blocks (the
reference's ``_SEP = [0, 4, 8, ...]``). Fold k tests block k; its support scan is the
first case of block k+1, wrapping to the very first case for the last fold (the
reference's ``CircularList``); every other case trains.

Feasibility (:func:`infeasible`): every block must hold a case, and the largest block
plus the support scan must leave at least one training case, i.e.
``n - ceil(n / n_folds) >= 2``. The smallest feasible dataset is 3 cases in 3 folds
(one test, one support, one training case per fold). Standard library only: the
workflow checks a config with it before any job runs.
"""

from __future__ import annotations

import re
from collections import Counter


def natural_key(case: str) -> list:
    """``p2`` before ``p10``: digit runs compare as numbers. ``re.split`` with a group
    alternates text/digits, so keys of any two ids compare type by type."""
    return [int(t) if i % 2 else t for i, t in enumerate(re.split(r"(\d+)", str(case)))]


def largest_test_block(n_cases: int, n_folds: int) -> int:
    """Cases in the largest test block (remainders go to the first blocks)."""
    return -(-n_cases // n_folds)


def _feasible(n_cases: int, n_folds: int) -> bool:
    return n_folds >= 2 and n_cases >= n_folds and n_cases - largest_test_block(n_cases, n_folds) >= 2


def support_choices(test, support: str, cases, n: int | str) -> list[str]:
    """The support scans of one fold under ``evaluate.supports: n``, in order of choice:
    the fold's ``support`` (the published protocol's), then the scans after it in natural
    order, wrapping, that are not ``test`` scans of the fold; ``n = "all"``: every such
    scan. Raises ValueError when the fold has fewer than ``n`` eligible scans."""
    ordered = sorted({str(c) for c in cases} | {str(support)}, key=natural_key)
    held_out = {str(c) for c in test}
    start = ordered.index(str(support))
    eligible = [c for c in ordered[start:] + ordered[:start] if c not in held_out]
    if n == "all":
        return eligible
    if int(n) < 1 or int(n) > len(eligible):
        raise ValueError(f"evaluate.supports={n}: the fold has {len(eligible)} scan(s) outside its test block "
                         f"({', '.join(eligible)})")
    return eligible[:int(n)]


def infeasible(n_cases: int, n_folds: int) -> str | None:
    """None when ``n_cases`` cases can be split into ``n_folds`` folds, else a message
    saying why and what would work (which ``n_folds`` for these cases, how many cases
    for this ``n_folds``)."""
    if _feasible(n_cases, n_folds):
        return None
    why = ("n_folds must be at least 2" if n_folds < 2 else
           f"{n_folds} folds need a test case each" if n_cases < n_folds else
           "the largest test block plus the support scan leave no training case")
    options = [k for k in range(2, n_cases + 1) if _feasible(n_cases, k)]
    fix = []
    if options:
        span = f"{options[0]}" if len(options) == 1 else f"{options[0]} to {options[-1]}"
        fix.append(f"n_folds {span} works with these {n_cases} cases")
    else:
        fix.append(f"no n_folds works with {n_cases} case(s): at least 3 are needed")
    if n_folds >= 2:
        need = next(n for n in range(n_folds, 4 * n_folds + 4) if _feasible(n, n_folds))
        fix.append(f"n_folds {n_folds} needs at least {need} cases")
    return (f"{n_cases} cases cannot give {n_folds} folds: {why} (each fold tests one block, takes the "
            f"first case of the next block as support and trains on the rest); {'; '.join(fix)}")


def make_folds(cases, n_folds: int) -> dict:
    """``{"n_folds": n, "folds": [{"fold", "test", "support", "train"}, ...]}``."""
    ordered = sorted((str(c) for c in cases), key=natural_key)
    dupes = sorted((c for c, k in Counter(ordered).items() if k > 1), key=natural_key)
    if dupes:
        raise ValueError(f"duplicate case ids: {dupes}")
    n = len(ordered)
    problem = infeasible(n, n_folds)
    if problem:
        raise ValueError(problem)
    # remainders go to the first blocks: sizes differ by at most one
    sep = [k * (n // n_folds) + min(k, n % n_folds) for k in range(n_folds + 1)]
    folds = []
    for k in range(n_folds):
        test = ordered[sep[k]:sep[k + 1]]
        support = ordered[sep[k + 1] % n]  # last fold: sep[n_folds] == n wraps to case 0
        train = [c for c in ordered if c != support and c not in test]
        assert train, "infeasible() admitted a fold without training cases"
        folds.append({"fold": k, "test": test, "support": support, "train": train})
    return {"n_folds": n_folds, "folds": folds}
