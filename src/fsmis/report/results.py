"""Stored results as tables: the long table of every ``metrics.json`` and the per-case rows.

Nothing here trains or evaluates. :func:`collect` reads each fold's ``metrics.json``
(docs/contracts.md, "Evaluation outputs"; Dice as fractions) into one long table;
:func:`read_cases` reads the ``per_case.tsv`` beside each of them. Both layouts are
ours; the numbers in them are the ones the papers report (a fold's Dice of a class is
the mean over that fold's test scans).

:func:`fold_values` is the per-fold view every table and figure starts from
(:func:`percent_per_fold`). Its ``mean`` column averages the classes within each fold,
skipping classes without a value in that fold (as ``fsmis.evaluate.summarize`` does).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from fsmis import paths
from fsmis.contracts import Metrics
from fsmis.errors import InputError

log = logging.getLogger(__name__)

LONG_COLUMNS = ["method", "setting", "protocol", "fold", "dataset", "class", "dice", "n_cases", "support_missing",
                "source"]
CASE_COLUMNS = ["method", "setting", "protocol", "fold", "case", "class", "dice", "flag"]
MEAN = "mean"  # the column of the average over classes, in every table of the report


def _rows_of(path: Path) -> list[dict]:
    # InputError for a missing file, invalid JSON or a broken contract (fsmis.contracts)
    data = Metrics.read(path)
    rows = []
    for protocol, result in data.protocols.items():
        # classes the fold's support scan lacked: not evaluated (fsmis.evaluate.SUPPORT_MISSING)
        lacking = set(result.support_missing)
        for name, value in result.dice.items():
            rows.append({"method": data.method, "setting": data.setting, "protocol": str(protocol),
                         "fold": data.fold, "dataset": data.dataset, "class": str(name), "dice": value,
                         "n_cases": result.n_cases, "support_missing": name in lacking, "source": str(path)})
    return rows


def collect(metrics_paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Long table (one row per file, protocol and class) of every ``metrics.json``.

    Columns: :data:`LONG_COLUMNS`: method, setting, protocol, fold, dataset, class, dice
    (fraction), n_cases, support_missing (the fold's support scan lacked the class: not
    evaluated), source. A malformed file, or two files for the same
    method/setting/fold, raises ``InputError`` naming the file.
    """
    rows: list[dict] = []
    owner: dict[tuple, str] = {}
    for raw in metrics_paths:
        path = Path(raw)
        file_rows = _rows_of(path)
        first = file_rows[0]
        key = (first["method"], first["setting"], first["fold"])
        if key in owner:
            raise InputError(
                path, f"method {key[0]}, setting {key[1]}, fold {key[2]} is already given by {owner[key]}"
            )
        owner[key] = str(path)
        rows.extend(file_rows)
    if not rows:
        raise ValueError("no metrics.json files given")
    return pd.DataFrame(rows, columns=LONG_COLUMNS)


def read_cases(metrics_paths: Iterable[str | os.PathLike],
               per_case_paths: Iterable[str | os.PathLike] | None = None) -> pd.DataFrame:
    """Per-case Dice of every fold: the ``per_case.tsv`` of each ``metrics.json``,
    ``per_case_paths`` in the same order (what the report rule declares), by default
    the one beside it (``fsmis.paths``).

    Method, setting and fold come from the ``metrics.json``; a missing ``protocol``
    column means ``oracle`` (the only protocol of older evaluations). A fold without
    ``per_case.tsv`` is skipped with a warning (its case-level statistics are missing,
    the fold-level ones are not). Columns: :data:`CASE_COLUMNS` (Dice as fractions).
    """
    metrics_paths = [Path(p) for p in metrics_paths]
    if per_case_paths is None:
        per_case_paths = [paths.beside(p, "per_case") for p in metrics_paths]
    per_case_paths = [Path(p) for p in per_case_paths]
    if len(per_case_paths) != len(metrics_paths):
        raise ValueError(f"{len(metrics_paths)} metrics.json files but {len(per_case_paths)} per_case.tsv paths")
    frames = []
    for path, table_path in zip(metrics_paths, per_case_paths):
        meta = Metrics.read(path)
        if not table_path.is_file():
            log.warning("%s: no per_case.tsv beside it; its cases are left out of the case statistics", path)
            continue
        try:
            table = pd.read_csv(table_path, sep="\t")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise InputError(table_path, f"not a readable TSV: {err}") from None
        missing = [c for c in ("case", "class", "dice") if c not in table.columns]
        if missing:
            raise InputError(table_path, f"missing column(s) {', '.join(missing)} (see docs/contracts.md)")
        table = table.assign(
            method=meta.method, setting=meta.setting, fold=meta.fold,
            protocol=table["protocol"].astype(str) if "protocol" in table.columns else "oracle",
            flag=table["flag"] if "flag" in table.columns else "",
            dice=pd.to_numeric(table["dice"], errors="coerce"),
        )
        table["case"], table["class"] = table["case"].astype(str), table["class"].astype(str)
        frames.append(table[CASE_COLUMNS])
    if not frames:
        return pd.DataFrame(columns=CASE_COLUMNS)
    return pd.concat(frames, ignore_index=True)


def ordered_methods(present: Iterable[str], method_order: Sequence[str] | None) -> list[str]:
    """Methods of ``method_order`` that have results, in that order, then any others (sorted)."""
    present = list(dict.fromkeys(present))
    order = [m for m in (method_order or []) if m in present]
    return order + sorted(m for m in present if m not in order)


def single_slice(long_df: pd.DataFrame) -> None:
    """Refuse a long table that holds more than one (setting, protocol) pair: a table or
    figure of several would average numbers that do not belong together."""
    pairs = long_df[["setting", "protocol"]].drop_duplicates()
    if len(pairs) > 1:
        listed = ", ".join(f"{s}/{p}" for s, p in pairs.itertuples(index=False))
        raise ValueError(f"the table mixes settings/protocols ({listed}); select one setting and protocol first")


def fold_values(long_df: pd.DataFrame, class_order: Sequence[str]) -> pd.DataFrame:
    """Per (method, fold): Dice of each class in ``class_order`` and their ``mean``, fractions."""
    keyed = long_df.set_index(["method", "fold", "class"])["dice"]
    if keyed.index.has_duplicates:
        raise ValueError("several Dice values for one method, fold and class; select one setting and protocol")
    wide = keyed.unstack("class").reindex(columns=list(class_order)).astype(float)
    wide[MEAN] = wide[list(class_order)].mean(axis=1, skipna=True)
    wide.columns.name = None
    return wide


def percent_per_fold(long_df: pd.DataFrame, class_order: Sequence[str]) -> tuple[list[str], pd.DataFrame]:
    """The classes of one setting and protocol (``class_order``, else in the order found)
    and their :func:`fold_values` in percent, what every table and figure of it starts from."""
    single_slice(long_df)
    classes = list(class_order) or list(dict.fromkeys(long_df["class"]))
    return classes, fold_values(long_df, classes) * 100.0
