"""The Dice table of one setting and protocol, its text cells and the table writers.

What follows the papers: the layout (rows = methods, columns = organs in the papers'
order and their mean, in percent) and the cells, mean ± standard deviation over folds.
What is ours: the spread is the sample standard deviation over folds (ddof=1; with one
fold it is NaN and the cell shows the mean alone), the ``mean`` column averages the
classes within each fold before mean and std over folds (``results.fold_values``), and
the notes under a table (:func:`support_missing_note`).

The cell formatters and the Markdown and file writers here serve every table of the
report (``stats``, ``paper_tables``), so all of them read alike. Every file is written
atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fsmis.io import atomic_path
from fsmis.report.results import MEAN, ordered_methods, percent_per_fold

# --------------------------------------------------------------------------- cells


def missing(x) -> bool:
    """No number: None or NaN (what a table holds where there is no value)."""
    return x is None or (isinstance(x, (float, np.floating)) and math.isnan(x))


def cell(mean, std, decimals: int) -> str:
    """``"78.4 ± 2.1"``; the mean alone without a spread; ``"–"`` without a mean."""
    if missing(mean):
        return "–"
    return f"{mean:.{decimals}f}" if missing(std) else f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def signed(x, decimals: int) -> str:
    """A difference with its sign, typographic minus (``"+1.2"``, ``"−0.4"``); ``"–"`` without one."""
    return "–" if missing(x) else f"{x:+.{decimals}f}".replace("-", "−")


def pipe_table(header: Sequence, rows: Iterable[Sequence], left: int = 1) -> str:
    """A Markdown pipe table: the first ``left`` columns left-aligned, the others
    (numbers) right-aligned; ``|`` escaped and line breaks flattened so a cell stays one."""

    def esc(text) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |",
             "|" + "|".join([" --- "] * left + [" ---: "] * (len(header) - left)) + "|"]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the Dice table


def dice_table(
    long_df: pd.DataFrame, class_order: Sequence[str], method_order: Sequence[str] | None = None
) -> pd.DataFrame:
    """Paper-style Dice table of one setting and protocol, in percent.

    Index: method (``method_order`` first, e.g. methods then baselines, then any method
    not listed). Columns: a MultiIndex ``(organ, stat)`` with organ in ``class_order``
    then ``mean`` and stat ``mean``/``std`` over folds, plus ``("n_folds", "")``.
    Use :func:`formatted` for the "78.4 ± 2.1" view.
    """
    if long_df.empty:
        raise ValueError("no Dice values to tabulate")
    class_order, per_fold = percent_per_fold(long_df, class_order)
    grouped = per_fold.groupby(level="method", sort=False)
    columns = class_order + [MEAN]
    mean, std = grouped[columns].mean(), grouped[columns].std(ddof=1)
    table = pd.concat({"mean": mean, "std": std}, axis=1).swaplevel(axis=1)
    table = table.reindex(columns=pd.MultiIndex.from_product([columns, ["mean", "std"]]))
    table[("n_folds", "")] = grouped.size()
    table = table.reindex(ordered_methods(table.index, method_order))
    table.index.name = "method"
    return table


def formatted(table: pd.DataFrame, decimals: int = 1) -> pd.DataFrame:
    """Text view of :func:`dice_table`: one column per organ and ``mean``, cells "78.4 ± 2.1"."""
    organs = [c for c in dict.fromkeys(table.columns.get_level_values(0)) if c != "n_folds"]
    view = pd.DataFrame(index=table.index)
    for organ in organs:
        view[organ] = [cell(m, s, decimals) for m, s in zip(table[(organ, "mean")], table[(organ, "std")])]
    return view


def flat_columns(table: pd.DataFrame) -> pd.DataFrame:
    """Numeric table with one-level columns ``liver_mean, liver_std, ..., mean_mean, mean_std, n_folds``."""
    flat = table.copy()
    flat.columns = [f"{a}_{b}" if b else a for a, b in table.columns]
    return flat


def markdown(view: pd.DataFrame, caption: str | None = None) -> str:
    """A pipe table of a text frame (index as the first column), numbers right-aligned."""
    header = [view.index.name or "", *view.columns]
    text = pipe_table(header, ([name, *row] for name, row in zip(view.index, view.values)))
    return f"{caption}\n\n{text}" if caption else text


def support_missing_note(long_df: pd.DataFrame) -> str | None:
    """A table note counting the (method, fold, class) entries whose fold's support scan
    lacked the class (not evaluated, left out of the means), or None when there are none."""
    flagged = long_df[long_df["support_missing"].astype(bool)] if "support_missing" in long_df else long_df[:0]
    if flagged.empty:
        return None
    pairs = flagged[["fold", "class"]].drop_duplicates().sort_values(["fold", "class"])
    listed = "; ".join(f"fold {f}: {c}" for f, c in pairs.itertuples(index=False))
    return (f"Support scan without the class: {len(pairs)} (fold, class) pair(s) not evaluated and left out of "
            f"the means ({listed}); flag support_missing in dice_per_case.csv.")


# --------------------------------------------------------------------------- writers


def write_text(path: str | os.PathLike, text: str) -> str:
    """``text`` into ``path`` (UTF-8), atomically; the path as a string."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return str(path)


def write_csv(frame: pd.DataFrame, path: str | os.PathLike, **options) -> str:
    """``frame.to_csv(path, **options)``, atomically; the path as a string."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, **options)
    return str(path)


def write_tables(table: pd.DataFrame, out_dir: str | os.PathLike, stem: str, notes: Sequence[str] = ()) -> list[str]:
    """``<stem>.csv`` (numeric, percent, flat columns) and ``<stem>.md`` (formatted, with
    ``notes`` below the table), atomically."""
    out_dir = Path(out_dir)
    written = [write_csv(flat_columns(table), out_dir / f"{stem}.csv", float_format="%.4f")]
    folds = sorted({int(n) for n in table[("n_folds", "")].dropna()})
    caption = f"Dice (%), mean ± standard deviation over folds (folds per method: {', '.join(map(str, folds))})."
    text = markdown(formatted(table), caption)
    written.append(write_text(out_dir / f"{stem}.md", text + "".join(f"\n{note}\n" for note in notes)))
    return written

