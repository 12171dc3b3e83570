"""How much a result moves with the choices behind it: folds, support scans, training seeds.

None of this is in the papers, which report one support scan per fold and one training
run; it is ours, so that a difference between two methods can be read against the
noise of the choices that produced each number.

Every number here is an *experiment value*, the number a table cell reports: per fold,
per class the mean over the fold's test scans (NaN skipped), ``mean`` = the average of
the classes within the fold; then the mean over folds. It is computed from the
per-case rows (``results.read_cases``), for each support choice k
(``evaluate.supports``; k = 0 is the published protocol's support scan) and each
training seed (config ``seeds``) separately. Then, per method and class:

* ``value``: the mean over seeds of the experiment value at support choice 0, what the
  report's tables show;
* over folds: sample std (ddof=1) over folds of the fold values (averaged over seeds),
  choice 0, the spread the tables show;
* over supports: the experiment value of each choice k (averaged over seeds): their
  sample std and range (max - min) over the N choices: how far the headline number
  would move had other support scans been picked for every fold;
* over seeds: the experiment value of each seed at choice 0: their mean and a 95 %
  confidence interval, mean ± t(0.975, n-1) · s / sqrt(n) (Student's t; none with one
  seed): how far it would move with another training run.

Values in percent (Dice, IoU, NSD) or mm (HD95), as the metric's tables.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fsmis.report.results import MEAN, by_class

CONFIDENCE = 0.95
COLUMNS = ["method", "class", "value", "fold_std", "n_folds", "n_supports", "support_std", "support_min",
           "support_max", "n_seeds", "seed_mean", "seed_ci_low", "seed_ci_high"]


def experiment_values(cases: pd.DataFrame, class_order: Sequence[str], metric: str = "dice") -> pd.DataFrame:
    """Per (method, support_choice, seed, fold): the fold value of each class of
    ``class_order`` and their ``mean`` (fractions as stored, NaN-skipping means), from
    per-case rows of one setting and protocol. Index (method, support_choice, seed,
    fold); columns ``class_order + [mean]``."""
    keys = ["method", "support_choice", "seed", "fold"]
    rows = cases.assign(**{c: cases[c] if c in cases else 0 for c in ("support_choice", "seed")})
    return by_class(rows.groupby([*keys, "class"], sort=False)[metric].mean(), class_order)


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """``(mean, low, high)`` of a Student-t interval of the mean of ``values`` (NaN
    skipped); low and high are NaN with fewer than two values."""
    from scipy.stats import t

    x = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan
    half = float(t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half


def spread_table(cases: pd.DataFrame, class_order: Sequence[str], method_order: Sequence[str],
                 metric: str = "dice", scale: float = 100.0) -> pd.DataFrame:
    """One row per method (``method_order``, those with rows) and class
    (``class_order`` then ``mean``) with :data:`COLUMNS`; values times ``scale``
    (percent for the fractions; 1 for HD95 in mm). ``cases``: per-case rows of one
    setting and protocol."""
    if len(cases[["setting", "protocol"]].drop_duplicates()) > 1:
        raise ValueError("the spread mixes settings/protocols; select one setting and protocol first")
    values = experiment_values(cases, class_order, metric) * scale
    columns = list(class_order) + [MEAN]
    out = []
    for method in [m for m in method_order if m in values.index.get_level_values("method")]:
        mine = values.xs(method, level="method")
        published = mine.xs(0, level="support_choice") if 0 in mine.index.get_level_values("support_choice") \
            else mine.iloc[:0].droplevel("support_choice")
        by_fold = published.groupby(level="fold").mean()  # over seeds
        by_seed = published.groupby(level="seed").mean()  # over folds
        by_choice = mine.groupby(level=["support_choice", "seed"]).mean().groupby(level="support_choice").mean()
        for name in columns:
            seed_mean, low, high = t_interval(list(by_seed[name]))
            choice = by_choice[name].dropna()
            out.append({
                "method": method, "class": name, "value": by_fold[name].mean(),
                "fold_std": by_fold[name].std(ddof=1), "n_folds": int(by_fold[name].count()),
                "n_supports": int(choice.count()), "support_std": choice.std(ddof=1),
                "support_min": choice.min(), "support_max": choice.max(),
                "n_seeds": int(by_seed[name].count()), "seed_mean": seed_mean,
                "seed_ci_low": low, "seed_ci_high": high,
            })
    return pd.DataFrame(out, columns=COLUMNS)


def _num(x, decimals: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{decimals}f}"


def spread_markdown(table: pd.DataFrame, label: str = "Dice (%)") -> str:
    """The :func:`spread_table` as a Markdown table with its caption."""
    from fsmis.report.tables import pipe_table

    caption = (
        f"{label}: the reported value (support choice 0, mean over seeds) and how far it moves with each "
        "choice behind it: over folds, sample std of the fold values; over supports, sample std and range "
        "of the experiment value under each support choice (evaluate.supports; choice 0 = the published "
        f"protocol's scan); over seeds, mean and {CONFIDENCE:.0%} Student-t interval of the experiment value of "
        "each training seed (config seeds). n: how many of each."
    )
    header = ["method", "class", "value", "over folds", "over supports", "over seeds"]
    rows = []
    for r in table.to_dict("records"):
        folds = f"± {_num(r['fold_std'])} (n={r['n_folds']})" if r["n_folds"] > 1 else f"n={r['n_folds']}"
        supports = (f"± {_num(r['support_std'])}, {_num(r['support_min'])}–{_num(r['support_max'])} "
                    f"(n={r['n_supports']})") if r["n_supports"] > 1 else f"n={r['n_supports']}"
        seeds = (f"{_num(r['seed_mean'])} [{_num(r['seed_ci_low'])}, {_num(r['seed_ci_high'])}] "
                 f"(n={r['n_seeds']})") if r["n_seeds"] > 1 else f"n={r['n_seeds']}"
        rows.append([r["method"], r["class"], _num(r["value"]), folds, supports, seeds])
    return f"{caption}\n\n" + pipe_table(header, rows, left=2)


def write_spread(table: pd.DataFrame, out_dir: str | os.PathLike, stem: str, label: str = "Dice (%)") -> list[str]:
    """``<stem>.csv`` (numbers) and ``<stem>.md`` in ``out_dir``, atomically."""
    from fsmis.report.tables import write_csv, write_text

    out_dir = Path(out_dir)
    return [write_csv(table, out_dir / f"{stem}.csv", index=False, float_format="%.6g"),
            write_text(out_dir / f"{stem}.md", spread_markdown(table, label))]
