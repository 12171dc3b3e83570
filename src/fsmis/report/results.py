"""Stored results as tables: the long table of every ``metrics.json`` and the per-case rows.

Nothing here trains or evaluates. :func:`collect` reads each fold's ``metrics.json``
(docs/contracts.md, "Evaluation outputs"; Dice as fractions) into one long table;
:func:`read_cases` reads the ``per_case.tsv`` beside each of them (Dice, IoU, HD95 in
mm, NSD, the empty-mask flag, per support choice). Both layouts are ours; the numbers
in them are the ones the papers report (a fold's Dice of a class is the mean over that
fold's test scans, with the fold's published support scan).

:func:`fold_values` is the per-fold view every Dice table and figure starts from
(:func:`percent_per_fold`); :func:`case_fold_values` is the same view of any metric,
computed from the per-case rows. Their ``mean`` column averages the classes within
each fold, skipping classes without a value in that fold (as
``fsmis.evaluate.summarize`` does). What is ours: with several training seeds, a
fold's value is the mean over the seeds (each seed's value being the papers' number),
so the spread over folds stays the papers' spread and the seeds only steady it; with
several support choices, only choice 0 (the published protocol's support scan) enters
these views.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from fsmis import paths
from fsmis.contracts import Metrics
from fsmis.errors import InputError

log = logging.getLogger(__name__)

LONG_COLUMNS = ["method", "setting", "protocol", "fold", "seed", "dataset", "class", "dice", "n_cases",
                "support_missing", "source"]
CASE_COLUMNS = ["method", "setting", "protocol", "seed", "fold", "support_choice", "support", "case", "class",
                "dice", "iou", "hd95", "nsd", "flag"]
CASE_METRICS = ("dice", "iou", "hd95", "nsd")  # numeric per-case columns (fsmis.metrics.case_metrics)
MEAN = "mean"  # the column of the average over classes, in every table of the report
PUBLISHED_CHOICE = 0  # support_choice of the published protocol's support scan


def _rows_of(path: Path) -> list[dict]:
    # InputError for a missing file, invalid JSON or a broken contract (fsmis.contracts)
    data = Metrics.read(path)
    rows = []
    for protocol, result in data.protocols.items():
        # classes the fold's support scan lacked: not evaluated (fsmis.evaluate.SUPPORT_MISSING)
        lacking = set(result.support_missing)
        for name, value in result.dice.items():
            rows.append({"method": data.method, "setting": data.setting, "protocol": str(protocol),
                         "fold": data.fold, "seed": data.seed, "dataset": data.dataset, "class": str(name),
                         "dice": value, "n_cases": result.n_cases, "support_missing": name in lacking,
                         "source": str(path)})
    return rows


def collect(metrics_paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Long table (one row per file, protocol and class) of every ``metrics.json``.

    Columns: :data:`LONG_COLUMNS`: method, setting, protocol, fold, seed (the training
    seed, 0 in files older than seeds), dataset, class, dice (fraction), n_cases,
    support_missing (the fold's support scan lacked the class: not evaluated), source.
    A malformed file, or two files for the same method/setting/fold/seed, raises
    ``InputError`` naming the file.
    """
    rows: list[dict] = []
    owner: dict[tuple, str] = {}
    for raw in metrics_paths:
        path = Path(raw)
        file_rows = _rows_of(path)
        first = file_rows[0]
        key = (first["method"], first["setting"], first["fold"], first["seed"])
        if key in owner:
            raise InputError(
                path, f"method {key[0]}, setting {key[1]}, fold {key[2]}, seed {key[3]} is already given by "
                f"{owner[key]}"
            )
        owner[key] = str(path)
        rows.extend(file_rows)
    if not rows:
        raise ValueError("no metrics.json files given")
    return pd.DataFrame(rows, columns=LONG_COLUMNS)


def _case_table(meta: Metrics, table: pd.DataFrame, table_path: Path) -> pd.DataFrame:
    """One ``per_case.tsv`` in :data:`CASE_COLUMNS`, filled in from its ``metrics.json``."""
    missing = [c for c in ("case", "class", "dice") if c not in table.columns]
    if missing:
        raise InputError(table_path, f"missing column(s) {', '.join(missing)} (see docs/contracts.md)")
    n = len(table)
    if "support_choice" in table.columns:
        choice = pd.to_numeric(table["support_choice"], errors="coerce")
        if choice.isna().any() or (choice % 1 != 0).any() or (choice < 0).any():
            raise InputError(table_path, "support_choice must hold non-negative integers (see docs/contracts.md)")
        choice = choice.astype(int)
    else:  # older evaluations: the published protocol's support scan alone
        choice = pd.Series(PUBLISHED_CHOICE, index=table.index)
    by_class = table["class"].astype(str).map(lambda name: meta.support_by_class.get(name, meta.support or ""))
    support = table["support"].astype("string").fillna(by_class) if "support" in table.columns else by_class
    filled = {
        "method": [meta.method] * n, "setting": [meta.setting] * n,
        "protocol": table["protocol"].astype(str) if "protocol" in table.columns else "oracle",
        "seed": [meta.seed] * n, "fold": [meta.fold] * n, "support_choice": choice,
        "support": support.astype(str), "case": table["case"].astype(str), "class": table["class"].astype(str),
        # older files lack iou, hd95, nsd: NaN, left out of every mean
        **{name: pd.to_numeric(table[name], errors="coerce") if name in table.columns else math.nan
           for name in CASE_METRICS},
        "flag": table["flag"].fillna("").astype(str) if "flag" in table.columns else "",
    }
    return pd.DataFrame(filled, index=table.index)[CASE_COLUMNS]


def read_cases(metrics_paths: Iterable[str | os.PathLike],
               per_case_paths: Iterable[str | os.PathLike] | None = None) -> pd.DataFrame:
    """Per-case metrics of every fold: the ``per_case.tsv`` of each ``metrics.json``,
    ``per_case_paths`` in the same order (what the report rule declares), by default
    the one beside it (``fsmis.paths``).

    Method, setting, fold and seed come from the ``metrics.json``. Defaults for older
    files: a missing ``protocol`` column means ``oracle`` (the only protocol of older
    evaluations), a missing ``support_choice`` means 0 (the published protocol's
    support scan), a missing ``support`` the scan ``metrics.json`` names for the class
    (``support_by_class``, else ``support``), missing ``iou``, ``hd95``, ``nsd`` NaN.
    Metric values that are not numbers become NaN. A fold without ``per_case.tsv`` is
    skipped with a warning (its case-level statistics are missing, the fold-level ones
    are not). Columns: :data:`CASE_COLUMNS` (Dice, IoU, NSD as fractions, HD95 in mm).
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
        frames.append(_case_table(meta, table, table_path))
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


def _seeded(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with a ``seed`` column (0 where a hand-made frame lacks it or leaves it empty)."""
    seed = frame["seed"].fillna(0) if "seed" in frame.columns else 0
    return frame.assign(seed=seed)


def by_class(per_fold: pd.Series, class_order: Sequence[str]) -> pd.DataFrame:
    """``(..., class) -> value`` as ``(...) x [classes..., mean]``: one column per class
    of ``class_order`` and ``mean``, their NaN-skipping average (the fold's mean of every
    table, e.g. index (method, fold))."""
    classes = list(class_order)
    wide = per_fold.unstack("class").reindex(columns=classes).astype(float)
    wide[MEAN] = wide[classes].mean(axis=1, skipna=True)
    wide.columns.name = None
    return wide


def fold_values(long_df: pd.DataFrame, class_order: Sequence[str]) -> pd.DataFrame:
    """Per (method, fold): Dice of each class in ``class_order`` and their ``mean``, fractions.

    With several training seeds (column ``seed``; a frame without it is one seed), a
    class's value is first the mean over the seeds of the fold (per method, fold and
    class; seeds without a value are skipped), then ``mean`` averages the classes. The
    index stays (method, fold), so the spread over folds is the papers' spread.
    Several values for one method, seed, fold and class (two settings or protocols
    mixed) raise ``ValueError``.
    """
    frame = _seeded(long_df)
    if frame.duplicated(["method", "seed", "fold", "class"]).any():
        raise ValueError("several Dice values for one method, seed, fold and class; select one setting and protocol")
    values = pd.to_numeric(frame["dice"], errors="coerce")
    per_fold = values.groupby([frame["method"], frame["fold"], frame["class"]]).mean()  # over seeds, NaN skipped
    return by_class(per_fold, class_order)


def published_choice(cases: pd.DataFrame) -> pd.DataFrame:
    """The per-case rows of the published protocol's support scan (``support_choice``
    0; all rows of a frame without the column)."""
    if "support_choice" not in cases.columns:
        return cases
    return cases[pd.to_numeric(cases["support_choice"]).fillna(PUBLISHED_CHOICE) == PUBLISHED_CHOICE]


def case_fold_values(cases: pd.DataFrame, class_order: Sequence[str], metric: str = "dice") -> pd.DataFrame:
    """Per (method, fold): ``metric`` of each class in ``class_order`` and their ``mean``,
    from the per-case rows (:func:`read_cases`) of one setting and protocol.

    Only rows of support choice 0 count (:func:`published_choice`). Per (method, seed,
    fold, class) the mean over the fold's test scans, skipping NaN (an undefined value:
    both masks empty, HD95 with one mask empty, no support for the class), as
    ``fsmis.evaluate.summarize`` computes the Dice of ``metrics.json``; then the mean
    over seeds and, in ``mean``, over classes, as :func:`fold_values` does. For Dice this
    equals :func:`fold_values` of the ``metrics.json`` values. Units as stored:
    fractions, HD95 in mm. Two rows for one (method, seed, fold, case, class) raise
    ``ValueError``.
    """
    if metric not in CASE_METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(CASE_METRICS)}")
    single_slice(cases)
    frame = _seeded(published_choice(cases))
    if frame.empty:
        raise ValueError(f"no per-case rows of support choice {PUBLISHED_CHOICE} to compute {metric} from")
    if frame.duplicated(["method", "seed", "fold", "case", "class"]).any():
        raise ValueError(f"several {metric} values for one method, seed, fold, scan and class; "
                         "select one setting and protocol")
    values = pd.to_numeric(frame[metric], errors="coerce")
    per_seed = values.groupby([frame["method"], frame["seed"], frame["fold"], frame["class"]]).mean()
    per_fold = per_seed.groupby(level=["method", "fold", "class"]).mean()
    return by_class(per_fold, class_order)


def percent_per_fold(long_df: pd.DataFrame, class_order: Sequence[str]) -> tuple[list[str], pd.DataFrame]:
    """The classes of one setting and protocol (``class_order``, else in the order found)
    and their :func:`fold_values` in percent, what every table and figure of it starts from."""
    single_slice(long_df)
    classes = list(class_order) or list(dict.fromkeys(long_df["class"]))
    return classes, fold_values(long_df, classes) * 100.0
