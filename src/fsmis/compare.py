"""Compare methods from the MLflow store: one line per method, one column per fold.

    python -m fsmis.compare --experiment demo [--store results/mlflow/mlflow.db]
        [--metric mean_dice] [--setting 1] [--protocol oracle] [--format text|markdown|csv]

Reads the child runs of the evaluate stage (tag ``stage = evaluate``) of the MLflow
experiment named like the workflow experiment. A run is identified by its tags
``method``, ``setting`` and ``fold`` (the rule's wildcards; params of the same name
as a fallback). Only the newest finished run of each (method, setting, fold) counts:
reruns after a code or config change replace older results, as the files on disk do.

Metric names: a run evaluated under several protocols logs ``<protocol>/<metric>``
(``<protocol>_<metric>`` and ``<protocol>.<metric>`` are accepted too); a bare
``<metric>`` belongs to the protocol in the run's ``protocol`` param (older runs:
``oracle``). Mean and sample std (ddof=1) over the folds present.

Units: Dice metrics (``mean_dice``, ``dice_<class>``, ``mean_dice_support<k>``) are
logged as fractions and shown in percent, as in the report's tables and figures:
the text output says ``Dice (%)`` in its header line, the markdown and CSV outputs
name the unit in the value columns (``fold0 (%)`` ... ``mean (%)``, ``std (%)``; ``n``
is a count). The CSV stays plain numbers (percent, 2 decimals), readable without
options (no comment lines). Other metrics (``eval_seconds``...) are shown as logged,
with 4 decimals and no unit label.

The same numbers side by side in the browser:
``mlflow ui --backend-store-uri sqlite:///results/mlflow/mlflow.db``, filter
``tags.stage = 'evaluate'``, select runs, Compare.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from fsmis import tracking
from fsmis.settings import SETTINGS


def store_uri(store: str | None) -> str | None:
    """A tracking URI from ``--store``: a URI as given, a file path as a SQLite URI."""
    if store is None or "://" in store:
        return store
    return f"sqlite:///{Path(store).absolute()}"


def _protocols_of(raw) -> list[str]:
    """The run's ``protocol`` param: one name or a JSON list; absent means oracle."""
    if raw is None or (isinstance(raw, float) and math.isnan(raw)) or raw == "":
        return ["oracle"]
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        value = raw
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def metric_of(run: pd.Series, metric: str, protocol: str) -> float:
    """The run's value of ``metric`` under ``protocol`` (NaN if it has none)."""
    for key in (f"{protocol}/{metric}", f"{protocol}_{metric}", f"{protocol}.{metric}"):
        value = run.get(f"metrics.{key}")
        if value is not None and not pd.isna(value):
            return float(value)
    protocols = _protocols_of(run.get("params.protocol"))
    bare = protocols[0] if len(protocols) == 1 else ("oracle" if "oracle" in protocols else None)
    value = run.get(f"metrics.{metric}")
    if bare == protocol and value is not None and not pd.isna(value):
        return float(value)
    return math.nan


def _ident(runs: pd.DataFrame, name: str) -> pd.Series:
    tag = runs.get(f"tags.{name}", pd.Series(index=runs.index, dtype=object))
    param = runs.get(f"params.{name}", pd.Series(index=runs.index, dtype=object))
    return tag.where(tag.notna() & (tag != ""), param)


def newest_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Finished runs with method/setting/fold, the newest of each (method, setting, seed,
    fold); a run without a seed (older ones) counts as seed 0."""
    if runs.empty:
        return runs.assign(method=[], setting=[], seed=[], fold=[])
    runs = runs[runs["status"] == "FINISHED"].copy()
    for name in ("method", "setting", "seed", "fold"):
        runs[name] = _ident(runs, name)
    runs = runs.dropna(subset=["method", "setting", "fold"])
    runs["setting"] = runs["setting"].astype(str)
    runs["seed"] = pd.to_numeric(runs["seed"], errors="coerce").fillna(0).astype(int)
    runs["fold"] = pd.to_numeric(runs["fold"], errors="coerce")
    runs = runs.dropna(subset=["fold"]).astype({"fold": int})
    runs = runs.sort_values(["start_time", "end_time"], kind="stable")
    return runs.groupby(["method", "setting", "seed", "fold"], sort=True).tail(1)


PERCENT = "%"
VALUE_COLUMNS = ("mean", "std")  # with the fold<k> columns: in the metric's unit; n is a count


def is_dice(metric: str) -> bool:
    """Whether ``metric`` (without protocol prefix) is a Dice logged as a fraction."""
    return metric == "mean_dice" or metric.startswith(("dice_", "mean_dice_"))


def unit_of(metric: str) -> str | None:
    """The unit a table of ``metric`` is shown in: ``"%"`` for Dice, else None (as logged)."""
    return PERCENT if is_dice(metric) else None


def compare_table(runs: pd.DataFrame, metric: str = "mean_dice", protocol: str = "oracle",
                  setting: str | None = None) -> pd.DataFrame:
    """Methods (and settings) x ``fold<k>`` columns, then ``mean``, ``std`` and ``n``
    (folds with a value); a fold's value is the mean over its seeds (config `seeds`).
    Dice metrics in percent (:func:`unit_of`); the unit is in ``table.attrs["unit"]``
    (None: as logged) and the metric in ``table.attrs["metric"]``.
    ``runs``: :func:`fsmis.tracking.search` rows of evaluate runs."""
    runs = newest_runs(runs)
    if setting is not None:
        runs = runs[runs["setting"] == str(setting)]
    runs = runs.assign(value=[metric_of(r, metric, protocol) for _, r in runs.iterrows()]).dropna(subset=["value"])
    if runs.empty:
        return pd.DataFrame()
    unit = unit_of(metric)
    if unit == PERCENT:
        runs["value"] = 100.0 * runs["value"]
    wide = runs.pivot_table(index=["method", "setting"], columns="fold", values="value", aggfunc="mean")
    folds = wide.columns
    wide.columns = [f"fold{f}" for f in folds]
    values = wide[[f"fold{f}" for f in folds]]
    wide["mean"], wide["std"], wide["n"] = values.mean(axis=1), values.std(axis=1, ddof=1), values.count(axis=1)
    if wide.index.get_level_values("setting").nunique() == 1:
        wide = wide.droplevel("setting")
    wide.attrs.update(metric=metric, unit=unit)
    return wide


def _with_unit(column: str, unit: str | None) -> str:
    """A value column's name with its unit (``fold0 (%)``); ``n`` and unitless ones as they are."""
    if unit is None or not (column in VALUE_COLUMNS or column.startswith("fold")):
        return column
    return f"{column} ({unit})"


def render(table: pd.DataFrame, fmt: str = "text", decimals: int | None = None) -> str:
    """The table as ``text``, ``markdown`` or ``csv``. ``decimals``: default 2 for
    percent, 4 for metrics shown as logged. Markdown and CSV name the unit in the value
    columns (``fold0 (%)``); the text output leaves that to its header line (:func:`header`)."""
    unit = table.attrs.get("unit")
    if decimals is None:
        decimals = 2 if unit == PERCENT else 4
    labelled = table.rename(columns=lambda c: _with_unit(str(c), unit))
    if fmt == "csv":
        return labelled.to_csv(float_format=f"%.{decimals}f")
    text = table.apply(lambda col: col.map(lambda v: "" if pd.isna(v) else (
        str(int(v)) if col.name == "n" else f"{v:.{decimals}f}")))
    if fmt == "markdown":
        text.columns = labelled.columns
        names = list(table.index.names)
        head = "| " + " | ".join([*names, *text.columns]) + " |"
        rule = "|" + "|".join([" --- "] * len(names) + [" ---: "] * len(text.columns)) + "|"
        rows = []
        for index, row in text.iterrows():
            keys = index if isinstance(index, tuple) else (index,)
            rows.append("| " + " | ".join([*map(str, keys), *row]) + " |")
        return "\n".join([head, rule, *rows]) + "\n"
    return text.to_string() + "\n"


def header(metric: str, protocol: str, experiment: str, setting: str | None = None) -> str:
    """The line above the text table: metric, unit, protocol, setting and what was averaged."""
    unit = " as Dice (%)" if unit_of(metric) == PERCENT else ""
    where = f", setting {setting}" if setting else ""
    return (f"{metric}{unit}, {protocol} protocol{where}; experiment {experiment}; newest finished evaluate "
            f"run per method/setting/fold; mean and sample std over folds")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fsmis.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", required=True, help="workflow experiment = MLflow experiment name")
    parser.add_argument("--store", help="SQLite file or tracking URI (default: MLFLOW_TRACKING_URI, else "
                                        "results/mlflow/mlflow.db)")
    parser.add_argument("--metric", default="mean_dice",
                        help="e.g. mean_dice, dice_liver, eval_seconds (default mean_dice; Dice shown in percent)")
    parser.add_argument("--setting", help=f"only this setting ({', '.join(SETTINGS)}); default: all, one line each")
    parser.add_argument("--protocol", default="oracle", help="oracle (default) or full")
    parser.add_argument("--format", choices=["text", "markdown", "csv"], default="text")
    args = parser.parse_args(argv)

    uri = store_uri(args.store)
    db = tracking.sqlite_path(uri or tracking.tracking_uri())
    if db is not None and not db.is_file():
        print(f"error: no MLflow store at {db}", file=sys.stderr)
        return 2
    runs = tracking.search(args.experiment, "tags.stage = 'evaluate'", uri=uri)
    table = compare_table(runs, args.metric, args.protocol, args.setting)
    if table.empty:
        where = f", setting {args.setting}" if args.setting else ""
        print(f"no finished evaluate run of experiment {args.experiment!r} has {args.metric} "
              f"for the {args.protocol} protocol{where}", file=sys.stderr)
        return 1
    if args.format == "text":
        print(header(args.metric, args.protocol, args.experiment, args.setting))
    sys.stdout.write(render(table, args.format))
    return 0


if __name__ == "__main__":
    sys.exit(main())
