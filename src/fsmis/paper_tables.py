"""Paper-style Dice tables: our numbers beside the published ones, with the difference.

Layout, as in the FSMIS papers: rows = methods, columns = organs in the papers' order
(``fsmis.data.adapters.facts(cfg)["classes"]``) and the mean. Each column holds ours
(mean ± sample std over folds), the published value and ours - published, in percent
and percentage points; a last column holds the p-value of the paired test against
the reference method (``fsmis.stats``). Methods we did not run but the papers report
for this dataset and setting follow as rows with published numbers only, so the table
reads like the papers'. Written as Markdown, CSV (numbers only) and LaTeX (booktabs).

Published numbers live in ``published_results.csv`` beside this module (method,
dataset, setting, class, dice, source, note), copied from the papers' tables with
their source. Our ids map to the papers' names as follows:

* datasets: ``chaos_mr`` = Abd-MRI (``abd_mri``), ``synapse_ct`` = Abd-CT (``abd_ct``),
  ``cmr_bssfp`` = Card-MRI (``card_mri``); any other dataset (the phantom) has none;
* methods: the same id, else the single ``<id>@<who re-ran it>`` row (PANet's only
  medical numbers are re-runs by others), else none;
* settings: "1" = "1". The papers' "Setting 2" has two definitions (``docs/datasets.md``,
  'Setting 2: two definitions'): the SSL-ALPNet code drops training slices with *any* test
  organ (our ``2``), the ADNet code family only slices with *all* test organs (our
  ``2all``). :data:`SETTING2_AS` says which one each source used; a published Setting-2
  row of a method not listed there is shown under our ``2`` and marked unverified.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from fsmis.errors import InputError
from fsmis.io import atomic_path

PUBLISHED_COLUMNS = ["method", "dataset", "setting", "class", "dice", "source", "note"]
DATASET_NAMES = {"chaos_mr": "abd_mri", "synapse_ct": "abd_ct", "cmr_bssfp": "card_mri"}
DATASET_LABELS = {"abd_mri": "Abd-MRI", "abd_ct": "Abd-CT", "card_mri": "Card-MRI"}
# Which of our settings a published "Setting 2" row corresponds to (docs/datasets.md,
# 'Setting 2: two definitions'): SSL-ALPNet's code and DSPNet's (built on it, also for
# its re-runs of other methods) drop slices with any test organ; the ADNet family only
# those with all.
SETTING2_AS = {
    "ssl_alpnet": "2", "dspnet": "2", "ssl_alpnet@dspnet_rerun": "2", "panet@dspnet_rerun": "2",
    "qnet@dspnet_rerun": "2", "catnet@dspnet_rerun": "2",
    "adnet": "2all", "qnet": "2all", "catnet": "2all", "rpt": "2all", "pgrnet": "2all",
}
MEAN = "mean"
UNVERIFIED = "‡"


# --------------------------------------------------------------------------- published numbers


def load_published(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """The published numbers (the shipped CSV unless ``path`` is given); Dice in percent."""
    source = Path(path) if path is not None else resources.files("fsmis") / "published_results.csv"
    with source.open("r", encoding="utf-8") as handle:
        table = pd.read_csv(handle, dtype={"setting": str, "method": str, "dataset": str, "class": str})
    missing = [c for c in PUBLISHED_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(source, f"missing column(s) {', '.join(missing)}")
    table["note"] = table["note"].fillna("")
    table["dice"] = pd.to_numeric(table["dice"], errors="raise")
    return table[PUBLISHED_COLUMNS]


def published_dataset(dataset: str) -> str:
    """The CSV's dataset name of one of our dataset ids (ids the CSV uses pass through)."""
    return DATASET_NAMES.get(dataset, dataset)


def our_setting(method: str, published_setting: str) -> tuple[str, bool]:
    """Our setting id of a published row, and whether that mapping is verified."""
    if published_setting != "2":
        return published_setting, True
    return SETTING2_AS.get(method, "2"), method in SETTING2_AS


def rows_for(published: pd.DataFrame, dataset: str, setting: str) -> pd.DataFrame:
    """Published rows comparable with our ``dataset`` and ``setting``, with a
    ``verified`` column (False: the source's Setting-2 definition is not known)."""
    part = published[published["dataset"] == published_dataset(dataset)]
    if part.empty:
        return part.assign(verified=pd.Series(dtype=bool))
    mapped = [our_setting(m, s) for m, s in zip(part["method"], part["setting"])]
    part = part.assign(ours=[m[0] for m in mapped], verified=[m[1] for m in mapped])
    return part[part["ours"] == str(setting)].drop(columns="ours")


def match(method: str, available: Sequence[str]) -> str | None:
    """The published method id that stands for our ``method`` (see module docstring)."""
    if method in available:
        return method
    reruns = [m for m in dict.fromkeys(available) if m.split("@", 1)[0] == method and "@" in m]
    return reruns[0] if len(reruns) == 1 else None


# --------------------------------------------------------------------------- the table


@dataclass
class PaperTable:
    """One dataset, setting and protocol. ``data``: index = row label (method), columns
    ``<col>_ours``, ``<col>_ours_std``, ``<col>_published``, ``<col>_diff`` per column
    of ``columns`` (organs then ``mean``), plus n_folds, p_value, p_label, kind
    ("ours"/"published"), published_as, source_ref (1-based index into ``sources``)."""

    data: pd.DataFrame
    columns: list[str]
    caption: str
    has_published: bool
    reference: str
    sources: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unverified: set[str] = field(default_factory=set)  # published ids marked UNVERIFIED


def _generated(dataset: str) -> bool:
    """Whether ``dataset`` is generated by this project (source kind, not its name)."""
    from fsmis.data import adapters

    return adapters.source_kind(dataset) == "generated"


def paper_table(
    fold_table: pd.DataFrame,
    published: pd.DataFrame,
    dataset: str,
    setting: str,
    class_order: Sequence[str],
    protocol: str = "oracle",
    tests: Mapping[tuple[str, str], object] | None = None,
    reference: str = "ssl_alpnet",
) -> PaperTable:
    """Build the table from ``fold_table`` (``fsmis.report.dice_table``: our Dice in
    percent, ``(column, mean|std)`` and ``n_folds``) and the published numbers.
    ``tests``: ``{(method, column): PairedTest}`` (only the ``mean`` column's is shown)."""
    columns = list(class_order) + [MEAN]
    comparable = rows_for(published, dataset, setting)
    available = list(dict.fromkeys(comparable["method"]))
    values = comparable.pivot_table(index="method", columns="class", values="dice", aggfunc="first")
    rows: list[dict] = []
    used: list[str] = []
    sources: list[str] = []

    def source_ref(pub_method: str | None) -> int | None:
        if pub_method is None:
            return None
        text = comparable.loc[comparable["method"] == pub_method, "source"].iloc[0]
        if text not in sources:
            sources.append(text)
        return sources.index(text) + 1

    for method in fold_table.index:
        pub = match(method, available)
        used += [pub] if pub else []
        test = (tests or {}).get((method, MEAN))
        row = {"method": method, "kind": "ours", "published_as": pub or "", "source_ref": source_ref(pub),
               "n_folds": fold_table.loc[method, ("n_folds", "")],
               "p_value": getattr(test, "p_value", math.nan),
               "p_label": "ref." if method == reference else (test.label() if test is not None else "n/a")}
        for col in columns:
            ours, std = fold_table.loc[method, (col, "mean")], fold_table.loc[method, (col, "std")]
            pub_value = values.loc[pub, col] if pub and col in values.columns else math.nan
            row.update({f"{col}_ours": ours, f"{col}_ours_std": std, f"{col}_published": pub_value,
                        f"{col}_diff": ours - pub_value})
        rows.append(row)
    for pub in available:
        if pub in used:
            continue
        row = {"method": pub, "kind": "published", "published_as": pub, "source_ref": source_ref(pub),
               "n_folds": 0, "p_value": math.nan, "p_label": ""}
        for col in columns:
            pub_value = values.loc[pub, col] if col in values.columns else math.nan
            row.update({f"{col}_ours": math.nan, f"{col}_ours_std": math.nan, f"{col}_published": pub_value,
                        f"{col}_diff": math.nan})
        rows.append(row)
    data = pd.DataFrame(rows).set_index("method")

    name = published_dataset(dataset)
    label = DATASET_LABELS.get(name)
    caption = (
        f"Dice (%) on {dataset}{f' ({label})' if label else ''}, setting {setting}, {protocol} protocol. "
        "Ours: mean ± standard deviation over folds"
        + ("; pub.: published; Δ: ours − published (percentage points)" if available else "")
        + f"; p: two-sided paired Wilcoxon signed-rank test of per-scan mean Dice against {reference}."
    )
    notes = [
        f"p-values: pairs matched by (fold, scan, organ), averaged per scan; zero differences dropped; "
        f"n/a with fewer than 6 non-zero differences, for a method without per-scan results, or when "
        f"{reference} was not run; not adjusted for multiple comparisons."
    ]
    if not available:
        if name not in set(published["dataset"]):
            why = "a synthetic dataset of this project that no paper reports" if _generated(dataset) else \
                "no paper in published_results.csv reports it"
            notes.insert(0, f"No published numbers for dataset {dataset}: {why}. Only our results are shown.")
        else:
            notes.insert(0, f"No published numbers for {label or name} in setting {setting}. "
                            "Only our results are shown.")
    else:
        if protocol != "oracle":
            notes.append("Published numbers were obtained with the oracle protocol (ground truth at test time).")
        if str(setting) in ("2", "2all"):
            notes.append('Published "Setting 2" is mapped by code lineage: SSL-ALPNet/DSPNet code drops slices '
                         'with any test organ (our 2), the ADNet family only slices with all (our 2all).')
        unverified = sorted(set(comparable.loc[~comparable["verified"].astype(bool), "method"]))
        if unverified:
            notes.append(f"{UNVERIFIED} Setting-2 definition of the source not verified: {', '.join(unverified)}.")
        for method, pub in data.loc[data["kind"] == "ours", "published_as"].items():
            if pub and pub != method:
                notes.append(f"{method}: the published numbers are those of {pub}.")
        for method, text in comparable.loc[comparable["note"] != "", ["method", "note"]].drop_duplicates().values:
            notes.append(f"{method}: {text}.")
    unverified = set(comparable.loc[~comparable["verified"].astype(bool), "method"])
    return PaperTable(data, columns, caption, bool(available), reference, sources, notes, unverified)


# --------------------------------------------------------------------------- formatting


def _nan(x) -> bool:
    return x is None or (isinstance(x, (float, np.floating)) and math.isnan(x))


def _num(x, decimals: int) -> str:
    return "–" if _nan(x) else f"{x:.{decimals}f}"


def _ours(mean, std, decimals: int) -> str:
    if _nan(mean):
        return "–"
    return f"{mean:.{decimals}f}" if _nan(std) else f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def _diff(x, decimals: int) -> str:
    return "–" if _nan(x) else f"{x:+.{decimals}f}".replace("-", "−")


def _label(table: PaperTable, method: str) -> str:
    row = table.data.loc[method]
    mark = UNVERIFIED if row["published_as"] in table.unverified else ""
    ref = f" [{int(row['source_ref'])}]" if not _nan(row["source_ref"]) else ""
    return f"{method}{ref}{mark}"


def text_cells(table: PaperTable, decimals: int = 2) -> pd.DataFrame:
    """The table as text, one column per (column, part): part "ours", and with published
    numbers also "pub." and "Δ"; then "p". Index: row labels with source references."""
    cells = {}
    for col in table.columns:
        d = table.data
        cells[(col, "ours")] = [_ours(m, s, decimals) for m, s in zip(d[f"{col}_ours"], d[f"{col}_ours_std"])]
        if table.has_published:
            cells[(col, "pub.")] = [_num(x, decimals) for x in d[f"{col}_published"]]
            cells[(col, "Δ")] = [_diff(x, decimals) for x in d[f"{col}_diff"]]
    cells[("p", "")] = list(table.data["p_label"])
    view = pd.DataFrame(cells, index=[_label(table, m) for m in table.data.index])
    view.index.name = "method"
    return view


def _pretty(col: str) -> str:
    return "Mean" if col == MEAN else col.replace("_", " ")


def _footer(table: PaperTable) -> list[str]:
    return table.notes + [f"[{i}] {text}" for i, text in enumerate(table.sources, 1)]


def to_markdown(table: PaperTable, decimals: int = 2) -> str:
    view = text_cells(table, decimals)
    header = ["method"] + [_pretty(c) if part == "ours" else part for c, part in view.columns[:-1]]
    header.append(f"p vs {table.reference}")

    def esc(text) -> str:
        return str(text).replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |",
             "|" + "|".join([" --- "] + [" ---: "] * len(view.columns)) + "|"]
    lines += ["| " + " | ".join([esc(i)] + [esc(v) for v in row]) + " |" for i, row in zip(view.index, view.values)]
    footer = "\n".join(f"- {line}" for line in _footer(table))
    return f"{table.caption}\n\n" + "\n".join(lines) + f"\n\n{footer}\n"


def to_csv_frame(table: PaperTable) -> pd.DataFrame:
    """Numbers only, flat columns, plus the source text of each row."""
    data = table.data.copy()
    data["source"] = [table.sources[int(r) - 1] if not _nan(r) else "" for r in data["source_ref"]]
    keep = [c for col in table.columns for c in (f"{col}_ours", f"{col}_ours_std", f"{col}_published",
                                                 f"{col}_diff")]
    return data[["kind", "n_folds"] + keep + ["p_value", "p_label", "published_as", "source"]]


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "Δ": r"$\Delta$",
          "−": r"$-$", "–": "--", "‡": r"$^\ddagger$", "§": r"\S{}", "<": r"$<$", ">": r"$>$"}


def latex_escape(text) -> str:
    """Text safe inside a LaTeX table (special characters and the few symbols we use)."""
    return "".join(_LATEX.get(ch, ch) for ch in str(text))


def to_latex(table: PaperTable, decimals: int = 2, label: str | None = None) -> str:
    """A booktabs ``table`` environment (needs ``\\usepackage{booktabs}``)."""
    view = text_cells(table, decimals)
    per = 3 if table.has_published else 1
    spec = "l" + "r" * len(view.columns)
    head = []
    if table.has_published:
        groups = " & ".join(rf"\multicolumn{{3}}{{c}}{{{latex_escape(_pretty(c))}}}" for c in table.columns)
        rules = "".join(rf"\cmidrule(lr){{{2 + per * i}-{1 + per * (i + 1)}}}" for i in range(len(table.columns)))
        head += [f" & {groups} & \\\\", rules,
                 "Method & " + " & ".join(["Ours & Pub. & $\\Delta$"] * len(table.columns)) + " & $p$ \\\\"]
    else:
        head.append("Method & " + " & ".join(latex_escape(_pretty(c)) for c in table.columns) + " & $p$ \\\\")
    body, previous = [], None
    for (name, row), kind in zip(view.iterrows(), table.data["kind"]):
        if previous is not None and kind != previous:
            body.append(r"\midrule")
        previous = kind
        body.append(" & ".join(latex_escape(x) for x in [name, *row]) + r" \\")
    notes = " ".join(latex_escape(line) for line in _footer(table))
    return "\n".join([
        "% generated by fsmis.paper_tables; needs \\usepackage{booktabs}",
        r"\begin{table}[htbp]", r"\centering", r"\small",
        rf"\caption{{{latex_escape(table.caption)}}}",
        *([rf"\label{{{label}}}"] if label else []),
        rf"\begin{{tabular}}{{{spec}}}", r"\toprule", *head, r"\midrule", *body, r"\bottomrule", r"\end{tabular}",
        rf"\par\smallskip{{\footnotesize {notes}\par}}", r"\end{table}", "",
    ])


def write(table: PaperTable, out_dir: str | os.PathLike, stem: str, decimals: int = 2) -> list[str]:
    """``<stem>.md``, ``<stem>.csv`` and ``<stem>.tex`` in ``out_dir``, atomically."""
    out_dir = Path(out_dir)
    paths = [out_dir / f"{stem}.{ext}" for ext in ("md", "csv", "tex")]
    with atomic_path(paths[0]) as tmp:
        tmp.write_text(to_markdown(table, decimals), encoding="utf-8")
    with atomic_path(paths[1]) as tmp:
        to_csv_frame(table).to_csv(tmp, float_format="%.4f")
    with atomic_path(paths[2]) as tmp:
        tmp.write_text(to_latex(table, decimals, label=f"tab:{stem.replace('_', '-')}"), encoding="utf-8")
    return [str(p) for p in paths]
