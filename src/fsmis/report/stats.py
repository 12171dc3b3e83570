"""Spread over folds and over cases, and a paired test against a reference method.

What follows the papers: the spread over folds, the number the papers report. What is
ours: the spread over cases and the paired test, which the papers do not give.

Two units of spread, because they answer different questions:

* over folds: a fold's Dice of a class is the mean over that fold's test scans (what
  ``metrics.json`` holds, the papers' number); mean and sample std (ddof=1) over folds
  say how much the result moves with the choice of support scan and training split.
* over cases: every test scan of every fold (cross-validation tests each scan once),
  pooled; mean and sample std of the per-scan Dice say how much scans differ. A scan's
  ``mean`` is the average of its classes that have a Dice.

Paired test (:func:`wilcoxon_paired`, :func:`paired_tests`), the rule the report states
under each table:

* pairs are matched by (fold, case, class); a pair where either Dice is undefined (NaN:
  empty reference under the oracle protocol, or both masks empty) is dropped;
* d = Dice(method) - Dice(reference), rounded to ``DECIMALS`` = 12 places so that
  float noise neither hides a zero nor splits a tie; zero differences are dropped
  (Wilcoxon's original rule) before scipy sees the data;
* with fewer than ``MIN_PAIRS`` = 6 non-zero differences the p-value is n/a: with 5 or
  fewer pairs even the most one-sided outcome has an exact two-sided p >= 2/2**5 =
  0.0625, so the test could not reject at 5 % whatever the data;
* otherwise ``scipy.stats.wilcoxon`` with ``method="auto"`` (exact null distribution up
  to 50 pairs; with tied |d| exhaustive permutations up to 13 pairs and the normal
  approximation beyond), two-sided, not adjusted for multiple comparisons;
* the ``mean`` column tests per-scan means: per (fold, case) the average of d over the
  classes paired there, so the unit stays the scan (organs of one scan are not
  independent observations);
* with several training seeds (config ``seeds``) pairs are matched within a seed and d
  is averaged over the seeds of each (fold, case, class): every seed is used and the
  unit stays the scan (the seeds of one scan are not independent observations either);
* only the published protocol's support choice (``support_choice`` 0) is tested; the
  other choices are the subject of ``spread``.

The spread over scans likewise averages each scan's Dice over seeds first.

The per-case rows come from ``results.read_cases``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fsmis.report.results import MEAN, published_choice
from fsmis.report.tables import cell, missing, pipe_table, signed, write_csv, write_text

MIN_PAIRS = 6
DECIMALS = 12
KEYS = ["fold", "case", "class"]


# --------------------------------------------------------------------------- the test


def p_text(p: float) -> str:
    """A p-value as the tables show it: ``"0.012"`` or ``"<0.001"``."""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


@dataclass(frozen=True)
class PairedTest:
    """Outcome of one paired comparison; ``p_value`` is NaN when no test was run
    (``note`` says why)."""

    n_pairs: int  # pairs with a Dice on both sides
    n_nonzero: int  # of those, pairs with a non-zero difference (the test's n)
    statistic: float  # scipy's two-sided statistic: min(W+, W-)
    p_value: float
    mean_diff: float  # mean of d over the n_pairs, Dice fraction
    note: str = ""

    @property
    def tested(self) -> bool:
        return not math.isnan(self.p_value)

    def label(self) -> str:
        """``"0.012"``, ``"<0.001"``, or ``"n/a"`` when no test was run."""
        return p_text(self.p_value) if self.tested else "n/a"


def not_tested(note: str, n_pairs: int = 0, n_nonzero: int = 0, mean_diff: float = math.nan) -> PairedTest:
    return PairedTest(n_pairs, n_nonzero, math.nan, math.nan, mean_diff, note)


def wilcoxon_paired(x: Sequence[float], y: Sequence[float]) -> PairedTest:
    """Two-sided Wilcoxon signed-rank test of ``x - y`` under the module's rule (a fixed
    ``MIN_PAIRS``: the table notes state it)."""
    from scipy.stats import wilcoxon

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired samples must be 1-D of equal length, got {x.shape} and {y.shape}")
    d = np.round((x - y)[np.isfinite(x) & np.isfinite(y)], DECIMALS)
    mean_diff = float(d.mean()) if d.size else math.nan
    nonzero = d[d != 0]
    if nonzero.size < MIN_PAIRS:
        why = "all differences are zero" if d.size and not nonzero.size else (
            f"{nonzero.size} non-zero difference(s), {MIN_PAIRS} needed")
        return not_tested(why, d.size, nonzero.size, mean_diff)
    try:
        res = wilcoxon(nonzero, zero_method="wilcox", alternative="two-sided", method="auto")
        stat, p = float(res.statistic), float(res.pvalue)
    except (ValueError, FloatingPointError) as err:  # scipy refuses degenerate input
        return not_tested(f"scipy: {err}", d.size, nonzero.size, mean_diff)
    if not math.isfinite(p):
        return not_tested("p-value not finite", d.size, nonzero.size, mean_diff)
    return PairedTest(int(d.size), int(nonzero.size), stat, p, mean_diff)


# --------------------------------------------------------------------------- summaries


def over_seeds(cases: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, setting, protocol, fold, case, class): the Dice averaged
    over the training seeds (NaN skipped), of the published support choice."""
    keys = ["method", "setting", "protocol", "fold", "case", "class"]
    return published_choice(cases).groupby(keys, sort=False)["dice"].mean().reset_index()


def case_means(cases: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, setting, protocol, fold, case) with class ``mean``: the
    average of the scan's defined Dice values (NaN when it has none)."""
    keys = ["method", "setting", "protocol", "fold", "case"]
    means = cases.groupby(keys, sort=False)["dice"].mean().reset_index()  # mean skips NaN
    return means.assign(**{"class": MEAN})


def fold_summary(per_fold: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std and count over folds of a ``(method, fold) x class`` frame.

    Returns a long frame: method, class, fold_mean, fold_std, n_folds (NaN std for one fold).
    """
    grouped = per_fold.groupby(level="method", sort=False)
    parts = {"fold_mean": grouped.mean(), "fold_std": grouped.std(ddof=1), "n_folds": grouped.count()}
    out = pd.concat({k: v.stack(future_stack=True) for k, v in parts.items()}, axis=1)
    out.index.names = ["method", "class"]
    return out.reset_index()


def case_summary(cases: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std and count over scans per (method, class), ``mean`` class included.

    Returns a long frame: method, class, case_mean, case_std, n_cases (defined Dice only).
    Several seeds: each scan's Dice is averaged over them first (:func:`over_seeds`).
    """
    cases = over_seeds(cases) if len(cases) else cases
    both = pd.concat([cases, case_means(cases)], ignore_index=True) if len(cases) else cases
    grouped = both.groupby(["method", "class"], sort=False)["dice"]
    out = pd.DataFrame({"case_mean": grouped.mean(), "case_std": grouped.std(ddof=1), "n_cases": grouped.count()})
    return out.reset_index()


def paired_tests(
    cases: pd.DataFrame, reference: str, class_order: Sequence[str]
) -> dict[tuple[str, str], PairedTest]:
    """``{(method, class): PairedTest}`` of every method against ``reference`` for each
    class of ``class_order`` and ``mean``, within one setting and protocol."""
    if len(cases[["setting", "protocol"]].drop_duplicates()) > 1:
        raise ValueError("paired tests mix settings/protocols; select one setting and protocol first")
    methods = list(dict.fromkeys(cases["method"]))
    classes = list(class_order) + [MEAN]
    out: dict[tuple[str, str], PairedTest] = {}
    cases = published_choice(cases)
    # pairs are matched within a seed, then averaged over seeds (module docstring)
    keys = [*KEYS, "seed"] if "seed" in cases else KEYS
    ref = cases[cases["method"] == reference].set_index(keys)["dice"]
    for method in methods:
        if method == reference:
            for name in classes:
                out[(method, name)] = not_tested("reference method")
            continue
        if ref.empty:
            for name in classes:
                out[(method, name)] = not_tested(f"reference {reference} has no per-case results")
            continue
        ours = cases[cases["method"] == method].set_index(keys)["dice"]
        pairs = pd.concat({"x": ours, "y": ref}, axis=1, join="inner").dropna()
        if len(keys) > len(KEYS):
            pairs = pairs.groupby(level=KEYS).mean()
        for name in class_order:
            part = pairs.xs(name, level="class") if name in pairs.index.get_level_values("class") else pairs.iloc[:0]
            out[(method, name)] = wilcoxon_paired(part["x"], part["y"])
        per_scan = pairs.groupby(level=["fold", "case"]).mean()  # mean of d = difference of means
        out[(method, MEAN)] = wilcoxon_paired(per_scan["x"], per_scan["y"])
    return out


def summary_table(
    per_fold: pd.DataFrame,
    cases: pd.DataFrame,
    class_order: Sequence[str],
    method_order: Sequence[str],
    reference: str,
) -> pd.DataFrame:
    """Tidy statistics of one setting and protocol, Dice in percent.

    ``per_fold``: ``(method, fold) x [classes..., mean]`` fold Dice in percent (as
    ``results.fold_values(...) * 100``); ``cases``: ``results.read_cases`` rows of the
    same setting and protocol. One row per method (``method_order``) and class
    (``class_order`` then ``mean``) with fold_mean, fold_std, n_folds, case_mean,
    case_std, n_cases, n_pairs, n_nonzero, mean_diff (percentage points vs the
    reference), statistic, p_value and p_note.
    """
    classes = list(class_order) + [MEAN]
    folds = fold_summary(per_fold[classes])
    rows = pd.MultiIndex.from_product([list(method_order), classes], names=["method", "class"])
    table = folds.set_index(["method", "class"]).reindex(rows)
    if len(cases):
        by_case = case_summary(cases).set_index(["method", "class"])
        by_case[["case_mean", "case_std"]] *= 100.0
        table = table.join(by_case)
        tests = paired_tests(cases, reference, class_order)
    else:
        table = table.assign(case_mean=np.nan, case_std=np.nan, n_cases=0)
        tests = {}
    missing = not_tested("no per-case results")
    found = [tests.get(key, missing) for key in table.index]
    table["n_pairs"] = [t.n_pairs for t in found]
    table["n_nonzero"] = [t.n_nonzero for t in found]
    table["mean_diff"] = [100.0 * t.mean_diff for t in found]
    table["statistic"] = [t.statistic for t in found]
    table["p_value"] = [t.p_value for t in found]
    table["p_note"] = [t.note for t in found]
    table["n_cases"] = table["n_cases"].fillna(0).astype(int)
    table["n_folds"] = table["n_folds"].fillna(0).astype(int)
    return table.reset_index()


def tests_of(summary: pd.DataFrame) -> Mapping[tuple[str, str], PairedTest]:
    """The :class:`PairedTest` objects back from a :func:`summary_table` frame."""
    out = {}
    for row in summary.to_dict("records"):
        note = row["p_note"] if isinstance(row["p_note"], str) else ""
        out[(row["method"], row["class"])] = PairedTest(
            int(row["n_pairs"]), int(row["n_nonzero"]), float(row["statistic"]), float(row["p_value"]),
            float(row["mean_diff"]) / 100.0, note)
    return out


# --------------------------------------------------------------------------- output


def _spread(mean, std, n) -> str:
    return "–" if n == 0 or missing(mean) else f"{cell(mean, std, 1)} (n={n})"


def summary_markdown(summary: pd.DataFrame, reference: str) -> str:
    """Long Markdown view of :func:`summary_table`: one line per method and class."""
    caption = (
        "Dice (%): mean ± sample std over folds and over test scans (all folds pooled); "
        f"Δ: mean paired difference to {reference} (percentage points); p: two-sided paired Wilcoxon "
        f"signed-rank test against {reference} (pairs matched by fold, scan and organ; `mean` tests "
        f"per-scan means; zero differences dropped; n/a below {MIN_PAIRS} non-zero differences; unadjusted)."
    )
    header = ["method", "class", "over folds", "over scans", f"Δ vs {reference}", "p (pairs)"]
    rows = []
    for r in summary.to_dict("records"):
        if math.isnan(r["p_value"]):
            note = r["p_note"] if isinstance(r["p_note"], str) and r["p_note"] else "not tested"
            p = "ref." if r["method"] == reference else f"n/a ({note})"
        else:
            p = f"{p_text(r['p_value'])} ({r['n_nonzero']})"
        rows.append([r["method"], r["class"], _spread(r["fold_mean"], r["fold_std"], r["n_folds"]),
                     _spread(r["case_mean"], r["case_std"], r["n_cases"]), signed(r["mean_diff"], 1), p])
    return f"{caption}\n\n" + pipe_table(header, rows, left=2)


def write_summary(summary: pd.DataFrame, out_dir: str | os.PathLike, stem: str, reference: str) -> list[str]:
    """``<stem>.csv`` (numbers) and ``<stem>.md`` in ``out_dir``, atomically."""
    out_dir = Path(out_dir)
    return [write_csv(summary, out_dir / f"{stem}.csv", index=False, float_format="%.6g"),
            write_text(out_dir / f"{stem}.md", summary_markdown(summary, reference))]
