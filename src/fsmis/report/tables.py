"""The metric tables of one setting and protocol, their text cells, notes and writers.

What follows the papers: the layout (rows = methods, columns = organs in the papers'
order and their mean) and the cells, mean ± standard deviation over folds; Dice in
percent, as the papers report it. What is ours: the spread is the sample standard
deviation over folds (ddof=1; with one fold it is NaN and the cell shows the mean
alone); the ``mean`` column averages the classes within each fold before mean and std
over folds (``results.fold_values``); a fold's value is the mean over its training
seeds; the tables of IoU, HD95 (mm) and NSD (:data:`METRICS`), which no paper in
``published_results.csv`` reports, computed from the per-case rows the same way as
the Dice of ``metrics.json`` (``results.case_fold_values``); and the notes under a table
(:func:`support_missing_note`, :func:`flag_note`, :func:`seed_note`).

The cell formatters, the Markdown and LaTeX helpers and the file writers here serve
every table of the report (``stats``, ``paper_tables``), so all of them read alike.
Every file is written atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fsmis.io import atomic_path
from fsmis.report.results import (
    MEAN,
    case_fold_values,
    ordered_methods,
    percent_per_fold,
    published_choice,
    single_slice,
)

# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class Metric:
    """How a metric of ``per_case.tsv`` is shown: ``label`` and ``unit`` in captions and
    headers, stored values times ``scale`` in the tables, ``higher_is_better`` its
    direction."""

    name: str
    label: str
    unit: str
    scale: float
    higher_is_better: bool

    def heading(self, tolerance_mm: float | None = None) -> str:
        """``"HD95 (mm), lower is better"``; NSD with its tolerance when given."""
        at = f" at a tolerance of {tolerance_mm:g} mm" if self.name == "nsd" and tolerance_mm is not None else ""
        return f"{self.label} ({self.unit}){at}, {'higher' if self.higher_is_better else 'lower'} is better"

    def described(self, tolerance_mm: float | None = None) -> str:
        """``"HD95 (mm, lower is better)"``, ``"NSD (%, tolerance 2 mm, higher is better)"``."""
        at = f", tolerance {tolerance_mm:g} mm" if self.name == "nsd" and tolerance_mm is not None else ""
        return f"{self.label} ({self.unit}{at}, {'higher' if self.higher_is_better else 'lower'} is better)"


# fsmis.metrics.case_metrics: Dice, IoU and NSD as fractions (shown in percent), HD95 in mm
METRICS: dict[str, Metric] = {
    "dice": Metric("dice", "Dice", "%", 100.0, True),
    "iou": Metric("iou", "IoU", "%", 100.0, True),
    "hd95": Metric("hd95", "HD95", "mm", 1.0, False),
    "nsd": Metric("nsd", "NSD", "%", 100.0, True),
}


def metric_of(name: str) -> Metric:
    """The :class:`Metric` called ``name``; ``ValueError`` for an unknown one."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    return METRICS[name]


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


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "Δ": r"$\Delta$",
          "−": r"$-$", "–": "--", "‡": r"$^\ddagger$", "§": r"\S{}", "<": r"$<$", ">": r"$>$"}


def latex_escape(text) -> str:
    """Text safe inside a LaTeX table (special characters and the few symbols we use)."""
    return "".join(_LATEX.get(ch, ch) for ch in str(text))


def pretty(column: str) -> str:
    """A column name as a LaTeX header shows it: ``Mean``, ``left kidney``."""
    return "Mean" if column == MEAN else column.replace("_", " ")


def latex_table(source: str, caption: str, spec: str, head: Sequence[str], body: Sequence[str], notes: str = "",
                label: str | None = None) -> str:
    """A booktabs ``table`` environment (needs ``\\usepackage{booktabs}``), what every
    ``.tex`` of the report is: ``caption``, ``head``, ``body`` and ``notes`` are LaTeX
    already (escaped by the caller), ``spec`` the column spec, ``source`` the module
    named in the first comment line."""
    return "\n".join([
        f"% generated by {source}; needs \\usepackage{{booktabs}}",
        r"\begin{table}[htbp]", r"\centering", r"\small", rf"\caption{{{caption}}}",
        *([rf"\label{{{label}}}"] if label else []),
        rf"\begin{{tabular}}{{{spec}}}", r"\toprule", *head, r"\midrule", *body, r"\bottomrule", r"\end{tabular}",
        *([rf"\par\smallskip{{\footnotesize {notes}\par}}"] if notes else []),
        r"\end{table}", "",
    ])


def latex_rows(view: pd.DataFrame, kinds: Sequence | None = None, escape=latex_escape) -> list[str]:
    """The body lines of a text frame (index = first column), with a ``\\midrule``
    wherever ``kinds`` (one per row, e.g. ours / published) changes."""
    body, previous = [], None
    for i, (name, row) in enumerate(view.iterrows()):
        kind = None if kinds is None else kinds[i]
        if previous is not None and kind != previous:
            body.append(r"\midrule")
        previous = kind
        body.append(" & ".join(escape(x) for x in [name, *row]) + r" \\")
    return body


def compared_header(columns: Sequence[str], trailing: Sequence[str], escape=latex_escape) -> list[str]:
    """The two header lines of a table whose every column holds ours, the published value
    and the difference (``Ours & Pub. & Δ`` under each column name), followed by the
    ``trailing`` headers (LaTeX already)."""
    groups = " & ".join(rf"\multicolumn{{3}}{{c}}{{{escape(pretty(c))}}}" for c in columns)
    rules = "".join(rf"\cmidrule(lr){{{2 + 3 * i}-{4 + 3 * i}}}" for i in range(len(columns)))
    return [f" & {groups}" + " &" * len(trailing) + r" \\", rules,
            "Method & " + " & ".join(["Ours & Pub. & $\\Delta$"] * len(columns))
            + "".join(f" & {t}" for t in trailing) + r" \\"]


# --------------------------------------------------------------------------- the tables


def _over_folds(per_fold: pd.DataFrame, classes: list[str], method_order: Sequence[str] | None) -> pd.DataFrame:
    """Mean and sample std over folds of a ``(method, fold) x [classes..., mean]`` frame,
    in the layout of :func:`dice_table`."""
    grouped = per_fold.groupby(level="method", sort=False)
    columns = classes + [MEAN]
    mean, std = grouped[columns].mean(), grouped[columns].std(ddof=1)
    table = pd.concat({"mean": mean, "std": std}, axis=1).swaplevel(axis=1)
    table = table.reindex(columns=pd.MultiIndex.from_product([columns, ["mean", "std"]]))
    table[("n_folds", "")] = grouped.size()
    table = table.reindex(ordered_methods(table.index, method_order))
    table.index.name = "method"
    return table


def dice_table(
    long_df: pd.DataFrame, class_order: Sequence[str], method_order: Sequence[str] | None = None
) -> pd.DataFrame:
    """Paper-style Dice table of one setting and protocol, in percent, from the
    ``metrics.json`` long table (``results.collect``): every fold, also those without
    ``per_case.tsv``.

    Index: method (``method_order`` first, e.g. methods then baselines, then any method
    not listed). Columns: a MultiIndex ``(organ, stat)`` with organ in ``class_order``
    then ``mean`` and stat ``mean``/``std`` over folds, plus ``("n_folds", "")``. A
    fold's value is the mean over its seeds (``results.fold_values``). Use
    :func:`formatted` for the "78.4 ± 2.1" view.
    """
    if long_df.empty:
        raise ValueError("no Dice values to tabulate")
    class_order, per_fold = percent_per_fold(long_df, class_order)
    return _over_folds(per_fold, class_order, method_order)


def metric_table(
    cases: pd.DataFrame, class_order: Sequence[str], method_order: Sequence[str] | None = None,
    metric: str = "dice",
) -> pd.DataFrame:
    """The :func:`dice_table` of any metric of :data:`METRICS`, from the per-case rows
    (``results.read_cases``) of one setting and protocol: support choice 0, per fold
    the mean over scans and seeds (``results.case_fold_values``), then mean and sample
    std over folds. Dice, IoU and NSD in percent, HD95 in mm. For Dice it equals
    :func:`dice_table` over the folds that have per-case rows.
    """
    spec = metric_of(metric)
    if cases.empty:
        raise ValueError(f"no per-case {spec.label} values to tabulate")
    classes = list(class_order) or list(dict.fromkeys(cases["class"]))
    per_fold = case_fold_values(cases, classes, metric) * spec.scale
    return _over_folds(per_fold, classes, method_order)


def formatted(table: pd.DataFrame, decimals: int = 1) -> pd.DataFrame:
    """Text view of :func:`dice_table` or :func:`metric_table`: one column per organ and
    ``mean``, cells "78.4 ± 2.1"."""
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


def table_caption(table: pd.DataFrame, metric: str = "dice", tolerance_mm: float | None = None) -> str:
    """The caption of a metric table: the metric, its unit and direction (NSD with its
    tolerance), what the cells hold and the folds per method."""
    folds = sorted({int(n) for n in table[("n_folds", "")].dropna()})
    return (f"{metric_of(metric).heading(tolerance_mm)}; mean ± standard deviation over folds "
            f"(folds per method: {', '.join(map(str, folds))}).")


# --------------------------------------------------------------------------- notes

# what each flag of per_case.tsv says about the masks (fsmis.metrics, fsmis.evaluate)
FLAG_MEANINGS = {
    "empty_reference": "no reference mask, the organ is absent from the scan",
    "empty_prediction": "nothing predicted where the organ is",
    "both_empty": "neither mask",
    "support_missing": "the support scan lacks the organ, nothing segmented",
}


def support_missing_note(frame: pd.DataFrame) -> str | None:
    """A table note counting the (fold, class) pairs whose fold's support scan lacked the
    class (not evaluated, left out of the means), or None when there are none. ``frame``:
    the ``metrics.json`` long table (column ``support_missing``) or per-case rows (flag
    ``support_missing`` at support choice 0)."""
    if "support_missing" in frame.columns:
        flagged = frame[frame["support_missing"].eq(True)]
    elif "flag" in frame.columns:
        rows = published_choice(frame)
        flagged = rows[rows["flag"] == "support_missing"]
    else:
        flagged = frame[:0]
    if flagged.empty:
        return None
    pairs = flagged[["fold", "class"]].drop_duplicates().sort_values(["fold", "class"])
    listed = "; ".join(f"fold {f}: {c}" for f, c in pairs.itertuples(index=False))
    return (f"Support scan without the class: {len(pairs)} (fold, class) pair(s) not evaluated and left out of "
            f"the means ({listed}); flag support_missing in dice_per_case.csv.")


def _effect(values: pd.Series, label: str) -> str:
    """What the flagged rows' values do to the means: scored 0, or undefined and left out."""
    n, undefined = len(values), int(values.isna().sum())
    zero = int((values == 0).sum())
    other = n - undefined - zero
    if zero == n:
        return f"{label} 0, counted in the means"
    if undefined == n:
        return f"{label} undefined, left out of the means"
    parts = [f"0 in {zero} (counted)"] if zero else []
    parts += [f"undefined in {undefined} (left out)"] if undefined else []
    parts += [f"a value in {other}"] if other else []
    return f"{label} " + ", ".join(parts)


def flag_note(cases: pd.DataFrame, metric: str = "dice") -> str | None:
    """One table note counting the per-case rows (method, seed, fold, scan, organ at
    support choice 0, one setting and protocol) flagged ``empty_reference``,
    ``empty_prediction``, ``both_empty`` or ``support_missing``, each with what it means
    for ``metric`` as the rows hold it (e.g. HD95 undefined and left out when one mask
    is empty; Dice 0 for an empty prediction); None when no row is flagged."""
    spec = metric_of(metric)
    if cases.empty or "flag" not in cases.columns:
        return None
    single_slice(cases)
    rows = published_choice(cases)
    parts = []
    for flag, meaning in FLAG_MEANINGS.items():
        values = pd.to_numeric(rows.loc[rows["flag"] == flag, metric], errors="coerce")
        if len(values):
            parts.append(f"{flag} {len(values)} ({meaning}: {_effect(values, spec.label)})")
    if not parts:
        return None
    return ("Empty masks, per-case rows (method, seed, fold, scan, organ; support choice 0) flagged: "
            + "; ".join(parts) + ".")


def seed_note(frame: pd.DataFrame) -> str | None:
    """A table note naming the training seeds each fold's value averages, or None with
    one seed (``frame``: the long table or per-case rows, column ``seed``)."""
    if frame.empty or "seed" not in frame.columns:
        return None
    seeds = frame["seed"].fillna(0).astype(int)
    by_method = {m: sorted(set(s)) for m, s in seeds.groupby(frame["method"], sort=False)}
    if all(len(s) <= 1 for s in by_method.values()):
        return None
    listed = {", ".join(map(str, s)) for s in by_method.values()}
    if len(listed) == 1:
        which = f"seeds {listed.pop()}"
    else:
        which = "; ".join(f"{m}: seed(s) {', '.join(map(str, s))}" for m, s in by_method.items())
    return f"Each fold's value is the mean over its training seeds ({which}); mean ± std are over folds."


def metric_notes(cases: pd.DataFrame, metric: str = "dice") -> list[str]:
    """The notes under a :func:`metric_table` of ``cases``: :func:`support_missing_note`,
    :func:`flag_note`, :func:`seed_note`, those that apply."""
    found = [support_missing_note(cases), flag_note(cases, metric), seed_note(cases)]
    return [note for note in found if note]


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


def to_latex(table: pd.DataFrame, title: str, notes: Sequence[str] = (), decimals: int = 1,
             label: str | None = None) -> str:
    """A metric table as a booktabs ``table`` environment (:func:`latex_table`): caption
    ``title``, the cells of :func:`formatted`, ``notes`` in small print below."""
    view = formatted(table, decimals)
    head = "Method & " + " & ".join(latex_escape(pretty(c)) for c in view.columns) + r" \\"
    return latex_table("fsmis.report.tables", latex_escape(title), "l" + "r" * len(view.columns), [head],
                       latex_rows(view), " ".join(latex_escape(line) for line in notes), label)


def _csv_and_markdown(table: pd.DataFrame, out_dir: Path, stem: str, title: str, notes: Sequence[str],
                      decimals: int) -> list[str]:
    written = [write_csv(flat_columns(table), out_dir / f"{stem}.csv", float_format="%.4f")]
    text = markdown(formatted(table, decimals), title)
    written.append(write_text(out_dir / f"{stem}.md", text + "".join(f"\n{note}\n" for note in notes)))
    return written


def write_tables(table: pd.DataFrame, out_dir: str | os.PathLike, stem: str, notes: Sequence[str] = ()) -> list[str]:
    """The Dice table's ``<stem>.csv`` (numeric, percent, flat columns) and ``<stem>.md``
    (formatted, with ``notes`` below the table), atomically; :func:`write_metric_tables`
    also writes LaTeX."""
    return _csv_and_markdown(table, Path(out_dir), stem, table_caption(table, "dice"), notes, 1)


def write_metric_tables(
    table: pd.DataFrame, out_dir: str | os.PathLike, stem: str, metric: str, notes: Sequence[str] = (),
    tolerance_mm: float | None = None, decimals: int = 1,
) -> list[str]:
    """``<stem>.csv`` (numeric, flat columns, the metric's unit), ``<stem>.md`` and
    ``<stem>.tex`` (booktabs, label ``tab:<stem with - for _>``) of a :func:`metric_table`
    or :func:`dice_table`, captioned by ``metric`` (NSD with ``tolerance_mm``), ``notes``
    below the table, atomically."""
    out_dir = Path(out_dir)
    title = table_caption(table, metric, tolerance_mm)
    written = _csv_and_markdown(table, out_dir, stem, title, notes, decimals)
    tex = to_latex(table, title, notes, decimals, label=f"tab:{stem.replace('_', '-')}")
    written.append(write_text(out_dir / f"{stem}.tex", tex))
    return written
