"""The reproduction table: each published number beside ours for the same method, with
the difference and the protocol key of each side.

What follows the papers: the published numbers (``published``: the shown transcription
of each method, per organ and the mean as printed) and what each paper's code did, in
our words: how the folds and the support scan are chosen, which "Setting 2", which
evaluation protocol, which snapshot (:data:`LINEAGE_KEYS`, :data:`METHOD_LINEAGE`,
:data:`METHOD_KEYS`). What is ours: the layout, one row per method, first those we ran
that have a published number, then those we ran without one, then those only published;
our value per class is the mean over folds of each fold's mean over its seeds (the
fold's value as in ``results.fold_values``), with the sample std over folds, and our
``mean`` averages the classes within each fold first (as ``tables.dice_table``); Δ =
ours − published in percentage points; the key of each side, with the fields where
they differ. Published numbers are single runs; ours carry a spread. Written as
Markdown, CSV (numbers and key fields) and LaTeX (booktabs), atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fsmis.report.paper_tables import UNVERIFIED, row_label
from fsmis.report.published import (
    DATASET_LABELS,
    alternative_notes,
    load_published,
    match,
    published_dataset,
    rows_for,
)
from fsmis.report.results import MEAN, fold_values, ordered_methods
from fsmis.report.tables import (
    cell,
    compared_header,
    latex_escape,
    latex_rows,
    latex_table,
    missing,
    pipe_table,
    pretty,
    signed,
    write_csv,
    write_text,
)

KEY_FIELDS = ("folds", "setting", "protocol", "snapshot", "supports", "seeds")
# fields whose difference can move the number; seeds are not: ours average several, the note says so
COMPARED = ("folds", "setting", "protocol", "snapshot", "supports")
UNKNOWN = "unknown"
def partition_folds(n_folds: int) -> str:
    """The folds key of SSL-ALPNet's partition with ``n_folds`` folds (fsmis.data.splits)."""
    return f"SSL-ALPNet partition: {n_folds} folds, support = first scan of the next fold"


def adnet_folds(n_folds: int, supp_idx: int) -> str:
    """The folds key of the ADNet lineage's overlapping sets (fsmis.data.lineage_folds)."""
    count = "" if n_folds == 5 else f" ({n_folds})"
    return (f"ADNet lineage: overlapping folds{count}, support = the test fold's scan at index supp_idx={supp_idx}, "
            "never queried")


def folds_key(lineage: str = "ssl_alpnet", n_folds: int = 5, supp_idx: int | None = 2) -> str:
    """Our folds key for ``splits.lineage`` (RPT-fixed's partition is SSL-ALPNet's)."""
    return adnet_folds(n_folds, supp_idx) if lineage == "adnet" else partition_folds(n_folds)


FOLDS_PARTITION = partition_folds(5)
FOLDS_ADNET = adnet_folds(5, 2)
UNVERIFIED_SETTING = "unknown: the source's Setting-2 definition is not verified"

# What the published numbers of each code lineage were obtained with.
LINEAGE_KEYS: dict[str | None, dict[str, str]] = {
    # SSL-ALPNet's code sorts the scans, cuts them into 5 contiguous blocks and takes the first
    # scan of the next block as the support (docs/methods.md, 'SSL-ALPNet: folds'); its validation
    # segments only the query slices inside the organ's ground-truth extent (our oracle); it saves
    # a snapshot every 25k steps and does not say which one the paper evaluated. DSPNet and the
    # methods built on this code keep all of it.
    "ssl_alpnet": {"folds": FOLDS_PARTITION, "protocol": "oracle",
                   "snapshot": "unknown: not stated; the last (100k steps) is the usual reading",
                   "supports": "1", "seeds": "1"},
    # ADNet's code (copied by Q-Net, CAT-Net, RPT, GMRD, PGRNet, FoB): the folds are overlapping sets
    # of scan indices, and at test time the scan at index supp_idx (2 in the scripts) is taken out
    # of the test fold as the support, so it is never queried and the overlap scans are queried
    # twice; the test loader keeps only the slices holding the organ (our oracle). The scripts
    # evaluate one snapshot per fold and the papers do not state which.
    "adnet": {"folds": FOLDS_ADNET, "protocol": "oracle",
              "snapshot": "unknown: not stated", "supports": "1", "seeds": "1"},
    # code not read or not public: every FSMIS code base we know evaluates the oracle way, but that is no proof
    None: {"folds": UNKNOWN, "protocol": "unknown: oracle in every FSMIS code base read, this one not read",
           "snapshot": UNKNOWN, "supports": "1", "seeds": "1"},
}
# Published method id (or its part before "@") -> code lineage; absent = not known.
METHOD_LINEAGE: dict[str, str | None] = {
    "ssl_alpnet": "ssl_alpnet", "dspnet": "ssl_alpnet",
    # training-free or pre-trained variants run through SSL-ALPNet's validation code
    "protosam": "ssl_alpnet", "ssl_dinov2": "ssl_alpnet", "densemp": "ssl_alpnet",
    "adnet": "adnet", "qnet": "adnet", "catnet": "adnet", "rpt": "adnet", "pgrnet": "adnet", "gmrd": "adnet",
    "fob_sam": "adnet", "fob_sammed2d": "adnet",
    # FoB's table prints other ProtoSAM numbers than ProtoSAM's own: a re-run in a pipeline it does not describe
    "protosam@fob_table": None,
}
# The part after "@" -> lineage: DSPNet re-ran the other methods in its own (SSL-ALPNet) code.
RERUN_LINEAGE = {"dspnet_rerun": "ssl_alpnet"}
# Per method, fields that differ from its lineage's.
METHOD_KEYS: dict[str, dict[str, str]] = {
    # a user re-ran GMRD with its code, got 3 points less and asked whether each fold's best snapshot was used
    "gmrd": {"snapshot": "unknown: not stated; a user reproduction asks whether a best snapshot per fold was used"},
    # that reproduction evaluated the 36k-step checkpoint in every fold
    "gmrd@issue1_repro": {"snapshot": "the 36k-step checkpoint in every fold"},
}


def lineage_of(method: str) -> str | None:
    """The code lineage of a published method id (None: not known)."""
    if method in METHOD_LINEAGE:
        return METHOD_LINEAGE[method]
    base, _, who = method.partition("@")
    return RERUN_LINEAGE[who] if who in RERUN_LINEAGE else METHOD_LINEAGE.get(base)


def published_key(method: str, setting: str, verified: bool = True) -> dict[str, str]:
    """The protocol key of a published method's numbers under our ``setting``
    (``verified``: whether its Setting-2 definition is known, ``published.rows_for``)."""
    key = dict(LINEAGE_KEYS[lineage_of(method)])
    key.update(METHOD_KEYS.get(method, {}))
    key["setting"] = str(setting) if verified else UNVERIFIED_SETTING
    return {f: key[f] for f in KEY_FIELDS}


def our_protocol_key(setting: str, protocol: str, *, supports: int = 1, seeds: int | str = 1,
                     snapshot: str = "final step", folds: str = FOLDS_PARTITION) -> dict[str, str]:
    """Our side's key in the vocabulary of :data:`LINEAGE_KEYS` (fsmis runs SSL-ALPNet's folds)."""
    return {"folds": folds, "setting": str(setting), "protocol": str(protocol), "snapshot": snapshot,
            "supports": str(supports), "seeds": str(seeds)}


def _unknown(value: str) -> bool:
    return str(value).startswith(UNKNOWN)


def differences(published: Mapping[str, str], ours: Mapping[str, str]) -> str:
    """The compared fields where the published key differs from ours; ``?field`` where
    the source does not say; ``none`` when all agree."""
    out = []
    for name in COMPARED:
        if name not in ours or name not in published:
            continue
        if _unknown(published[name]):
            out.append(f"?{name}")
        elif str(published[name]) != str(ours[name]):
            out.append(name)
    return ", ".join(out) or "none"


@dataclass
class ReproductionTable:
    """One dataset, setting and protocol. ``data``: index = row label (our method id,
    else the published id), columns ``<col>_ours``, ``<col>_ours_std``,
    ``<col>_published``, ``<col>_diff`` per column of ``columns`` (organs then ``mean``),
    plus kind ("both"/"ours"/"published"), n_folds, seeds, published_as, source_ref
    (1-based into ``sources``), key (label into ``keys``, "" without a published side),
    differs (:func:`differences`). ``keys``: label -> key, "ours" first."""

    data: pd.DataFrame
    columns: list[str]
    caption: str
    has_published: bool
    keys: dict[str, dict[str, str]]
    sources: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unverified: set[str] = field(default_factory=set)


def our_values(long_df: pd.DataFrame, dataset: str, setting: str, protocol: str,
               class_order: Sequence[str]) -> pd.DataFrame:
    """Per method, in percent: ``<col>_ours`` and ``<col>_ours_std`` (sample std over folds)
    for each class and ``mean``, ``n_folds`` and ``seeds`` ("3", or "1–3" when folds
    differ). Rows of other datasets, settings and protocols are left out; a frame
    without a ``seed`` column is one seed."""
    columns = list(class_order) + [MEAN]
    out_columns = [f"{c}_{s}" for c in columns for s in ("ours", "ours_std")] + ["n_folds", "seeds"]
    part = long_df
    if not part.empty:
        keep = (part["setting"].astype(str) == str(setting)) & (part["protocol"].astype(str) == str(protocol))
        if "dataset" in part.columns:
            keep &= part["dataset"].astype(str) == str(dataset)
        part = part[keep]
    if part.empty:
        return pd.DataFrame(columns=out_columns, index=pd.Index([], name="method"))
    part = part.assign(seed=part["seed"].fillna(0) if "seed" in part.columns else 0,
                       dice=pd.to_numeric(part["dice"], errors="coerce"))
    # the fold's value of a class is the mean over its seeds; then fold_values averages the classes
    per_seed = part.groupby(["method", "fold", "class"], sort=False)["dice"].mean().reset_index()
    wide = fold_values(per_seed, list(class_order)) * 100.0
    grouped = wide.groupby(level="method", sort=False)
    mean, std = grouped[columns].mean(), grouped[columns].std(ddof=1)
    table = pd.DataFrame(index=mean.index)
    for col in columns:
        table[f"{col}_ours"], table[f"{col}_ours_std"] = mean[col], std[col]
    table["n_folds"] = grouped.size()
    counts = part.groupby(["method", "fold"])["seed"].nunique().groupby(level="method")
    low, high = counts.min(), counts.max()
    table["seeds"] = [str(low[m]) if low[m] == high[m] else f"{low[m]}–{high[m]}" for m in table.index]
    table.index.name = "method"
    return table[out_columns]


def _no_published_note(published: pd.DataFrame, dataset: str, setting: str) -> str:
    name = published_dataset(dataset)
    if name in set(published["dataset"]):
        return (f"No published numbers for {DATASET_LABELS.get(name, name)} in setting {setting}; "
                "our methods are listed with their keys.")
    from fsmis.data import adapters

    why = "a synthetic dataset of this project that no paper reports" if adapters.source_kind(dataset) == \
        "generated" else "no paper in published_results.csv reports it"
    return f"No published numbers for dataset {dataset}: {why}; our methods are listed with their keys."


def reproduction_table(
    long_df: pd.DataFrame,
    published: pd.DataFrame | None,
    dataset: str,
    setting: str,
    protocol: str,
    class_order: Sequence[str],
    our_key: Mapping[str, object],
    method_order: Sequence[str] | None = None,
) -> ReproductionTable:
    """The reproduction table of one dataset, setting and protocol.

    ``long_df``: our results, the long table of ``results.collect`` (Dice as fractions;
    ``seed`` optional); only its rows of this dataset, setting and protocol count.
    ``published``: ``published.load_published(alternatives=True)`` (None loads it); a
    frame without alternatives works, its notes then name none. ``our_key``: our side's
    key, fields of :data:`KEY_FIELDS` compared as text with the published keys (build it
    with :func:`our_protocol_key`, whose vocabulary they use); absent fields take
    :func:`our_protocol_key`'s defaults, seeds the counts found in ``long_df``.
    ``method_order``: our methods first in that order, then the others.
    A published row stands beside our method of the same id, else beside the single
    ``<id>@<who>`` row (``published.match``)."""
    setting, protocol = str(setting), str(protocol)
    if published is None:
        published = load_published(alternatives=True)
    class_order = list(class_order) or list(dict.fromkeys(long_df["class"]))  # as found when not given
    columns = class_order + [MEAN]
    ours = our_values(long_df, dataset, setting, protocol, class_order)
    found = "/".join(sorted(set(ours["seeds"]))) or "1"
    our_key = {**our_protocol_key(setting, protocol, seeds=found), **{k: str(v) for k, v in our_key.items()}}
    comparable = rows_for(published, dataset, setting)
    available = list(dict.fromkeys(comparable["method"]))
    values = (comparable.pivot_table(index="method", columns="class", values="dice", aggfunc="first")
              if available else pd.DataFrame())
    verified = comparable.groupby("method")["verified"].first().astype(bool) if available else pd.Series(dtype=bool)

    pairs = [(m, match(m, available)) for m in ordered_methods(ours.index, method_order)]
    used = {pub for _, pub in pairs if pub}
    order = ([(m, p) for m, p in pairs if p] + [(m, p) for m, p in pairs if not p]
             + [(None, p) for p in available if p not in used])
    keys: dict[str, dict[str, str]] = {"ours": {f: our_key[f] for f in KEY_FIELDS}}
    sources: list[str] = []
    rows = []
    for method, pub in order:
        row = {"method": method or pub, "kind": "published" if method is None else ("both" if pub else "ours"),
               "n_folds": ours.loc[method, "n_folds"] if method else 0,
               "seeds": ours.loc[method, "seeds"] if method else "", "published_as": pub or "",
               "source_ref": math.nan, "key": "", "differs": ""}
        for col in columns:
            mine = ours.loc[method, f"{col}_ours"] if method else math.nan
            theirs = values.loc[pub, col] if pub and col in values.columns else math.nan
            row.update({f"{col}_ours": mine, f"{col}_ours_std": ours.loc[method, f"{col}_ours_std"] if method
                        else math.nan, f"{col}_published": theirs, f"{col}_diff": mine - theirs})
        if pub:
            text = comparable.loc[comparable["method"] == pub, "source"].iloc[0]
            sources += [text] if text not in sources else []
            key = published_key(pub, setting, bool(verified[pub]))
            tag = next((k for k, v in keys.items() if k != "ours" and v == key), None)
            if tag is None:
                tag = chr(ord("A") + len(keys) - 1)
                keys[tag] = key
            row.update({"source_ref": sources.index(text) + 1, "key": tag, "differs": differences(key, our_key)})
        rows.append(row)
    data = pd.DataFrame(rows, columns=["method", "kind", "n_folds", "seeds", "published_as", "source_ref", "key",
                                       "differs"] + [f"{c}_{p}" for c in columns
                                                     for p in ("ours", "ours_std", "published", "diff")])
    data = data.set_index("method")

    name = published_dataset(dataset)
    label = DATASET_LABELS.get(name)
    caption = (f"Reproduction on {dataset}{f' ({label})' if label else ''}, setting {setting}, {protocol} protocol: "
               "Dice (%), ours as mean ± standard deviation over folds"
               + ("; pub.: published; Δ: ours − published (percentage points)" if available else "")
               + "; keys: the protocol key of each side (table of keys below)"
               + ("; ≠ ours: where the published key differs from ours" if available else "") + ".")
    shown = [p for _, p in order if p]
    unverified = {p for p in shown if not verified[p]}
    if not available:
        notes = [_no_published_note(published, dataset, setting)]
    else:
        notes = [
            "Published numbers are single runs as their sources report them (one training seed, one support scan "
            "per fold, no spread); ours are the mean ± sample standard deviation over folds of each fold's mean "
            "over its seeds (column folds×seeds).",
            "≠ ours: the key fields (folds, setting, protocol, snapshot, supports) where the published side differs "
            "from ours; ?field: the source does not say.",
        ]
        notes += alternative_notes(published, dataset, setting, shown)
        notes += [f"{m}: the published numbers are those of {p}." for m, p in order if m and p and p != m]
        if unverified:
            listed = ", ".join(sorted(unverified))
            notes.append(f"{UNVERIFIED} Setting-2 definition of the source not verified: {listed}.")
        in_table = comparable[comparable["method"].isin(shown) & (comparable["note"] != "")]
        notes += [f"{m}: {text}." for m, text in in_table[["method", "note"]].drop_duplicates().values]
    return ReproductionTable(data, columns, caption, bool(available), keys, sources, notes, unverified)


# --------------------------------------------------------------------------- text


def text_cells(table: ReproductionTable, decimals: int = 2) -> pd.DataFrame:
    """The table as text: per column "ours" (and "pub.", "Δ" when something is
    published), then folds×seeds, the keys of the row's sides (labels of ``keys``) and,
    when something is published, ≠ ours."""
    d, cells = table.data, {}
    for col in table.columns:
        cells[(col, "ours")] = [cell(m, s, decimals) for m, s in zip(d[f"{col}_ours"], d[f"{col}_ours_std"])]
        if table.has_published:
            cells[(col, "pub.")] = [cell(x, None, decimals) for x in d[f"{col}_published"]]
            cells[(col, "Δ")] = [signed(x, decimals) for x in d[f"{col}_diff"]]
    cells[("folds×seeds", "")] = [f"{int(n)}×{s}" if n else "–" for n, s in zip(d["n_folds"], d["seeds"])]
    sides = {"both": "ours vs {}", "ours": "ours", "published": "{}"}
    cells[("keys", "")] = [sides[kind].format(k) for kind, k in zip(d["kind"], d["key"])]
    if table.has_published:
        cells[("≠ ours", "")] = [x or "–" for x in d["differs"]]
    view = pd.DataFrame(cells, index=[row_label(table, m) for m in d.index])
    view.index.name = "method"
    return view


def _header(view: pd.DataFrame) -> list[str]:
    return ["method"] + [pretty(c) if part == "ours" else (part or c) for c, part in view.columns]


def _keys_rows(table: ReproductionTable) -> list[list[str]]:
    return [[label, *(key[f] for f in KEY_FIELDS)] for label, key in table.keys.items()]


def _footer(table: ReproductionTable) -> list[str]:
    return table.notes + [f"[{i}] {text}" for i, text in enumerate(table.sources, 1)]


def to_markdown(table: ReproductionTable, decimals: int = 2) -> str:
    """Caption, the table, the table of keys, then the notes and sources."""
    view = text_cells(table, decimals)
    body = pipe_table(_header(view), ([i, *row] for i, row in zip(view.index, view.values)))
    keys = pipe_table(["key", *KEY_FIELDS], _keys_rows(table), left=len(KEY_FIELDS) + 1)
    footer = "\n".join(f"- {line}" for line in _footer(table))
    return f"{table.caption}\n\n{body}\nProtocol keys:\n\n{keys}\n{footer}\n"


def to_csv_frame(table: ReproductionTable) -> pd.DataFrame:
    """Numbers, the source text and both sides' key fields (``ours_<field>``, ``pub_<field>``)."""
    data = table.data.copy()
    data["source"] = [table.sources[int(r) - 1] if not missing(r) else "" for r in data["source_ref"]]
    for name in KEY_FIELDS:
        data[f"ours_{name}"] = [table.keys["ours"][name] if kind != "published" else "" for kind in data["kind"]]
        data[f"pub_{name}"] = [table.keys[k][name] if k else "" for k in data["key"]]
    numbers = [f"{c}_{p}" for c in table.columns for p in ("ours", "ours_std", "published", "diff")]
    return data[["kind", "n_folds", "seeds", *numbers, "published_as", "source", "key", "differs",
                 *(f"ours_{f}" for f in KEY_FIELDS), *(f"pub_{f}" for f in KEY_FIELDS)]]


def _tex(text) -> str:
    """``tables.latex_escape`` plus the two symbols only this table uses."""
    return latex_escape(text).replace("×", r"$\times$").replace("≠", r"$\neq$")


def to_latex(table: ReproductionTable, decimals: int = 2, label: str | None = None) -> str:
    """A booktabs ``table`` environment (``tables.latex_table``); the keys in the notes."""
    view = text_cells(table, decimals)
    per = 3 if table.has_published else 1
    tail = len(view.columns) - per * len(table.columns)
    if table.has_published:
        head = compared_header(table.columns, [_tex(c) for c, _ in view.columns[-tail:]], escape=_tex)
    else:
        head = ["Method & " + " & ".join(_tex(pretty(c)) if p == "ours" else _tex(c)
                                         for c, p in view.columns) + r" \\"]
    keys = [f"Key {k}: " + "; ".join(f"{f}: {v}" for f, v in zip(KEY_FIELDS, rest)) + "."
            for k, *rest in _keys_rows(table)]
    return latex_table("fsmis.report.reproduction", _tex(table.caption),
                       f"l{'r' * (len(view.columns) - tail)}{'l' * tail}", head,
                       latex_rows(view, list(table.data["kind"]), escape=_tex),
                       " ".join(_tex(line) for line in keys + _footer(table)), label)


def write(table: ReproductionTable, out_dir: str | os.PathLike, stem: str, decimals: int = 2) -> list[str]:
    """``<stem>.md``, ``<stem>.csv`` and ``<stem>.tex`` in ``out_dir``, atomically."""
    out_dir = Path(out_dir)
    return [write_text(out_dir / f"{stem}.md", to_markdown(table, decimals)),
            write_csv(to_csv_frame(table), out_dir / f"{stem}.csv", float_format="%.4f"),
            write_text(out_dir / f"{stem}.tex", to_latex(table, decimals, label=f"tab:{stem.replace('_', '-')}"))]
