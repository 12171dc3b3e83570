"""Reading runs back from the store as pandas frames (``python -m fsmis.compare``, notebooks)."""

from __future__ import annotations

from typing import Any

from fsmis.tracking import store

_BASE_COLUMNS = ["run_id", "run_name", "experiment_id", "status", "start_time", "end_time", "parent_run_id"]


def _frame_from_runs(runs) -> pandas.DataFrame:  # noqa: F821
    import pandas as pd

    rows = []
    for run in runs:
        info, data = run.info, run.data
        row: dict[str, Any] = {
            "run_id": info.run_id,
            "run_name": info.run_name,
            "experiment_id": info.experiment_id,
            "status": info.status,
            "start_time": pd.to_datetime(info.start_time, unit="ms", utc=True) if info.start_time else pd.NaT,
            "end_time": pd.to_datetime(info.end_time, unit="ms", utc=True) if info.end_time else pd.NaT,
            "parent_run_id": data.tags.get("mlflow.parentRunId"),
        }
        row.update({f"params.{k}": v for k, v in data.params.items()})
        row.update({f"metrics.{k}": v for k, v in data.metrics.items()})
        row.update({f"tags.{k}": v for k, v in data.tags.items()})
        rows.append(row)
    frame = pd.DataFrame(rows, columns=None if rows else _BASE_COLUMNS)
    extra = sorted(c for c in frame.columns if c not in _BASE_COLUMNS)
    return frame[_BASE_COLUMNS + extra]


def search(experiment: str, filter_string: str = "", uri: str | None = None) -> pandas.DataFrame:  # noqa: F821
    """Active runs of ``experiment`` matching ``filter_string`` (MLflow search syntax), oldest first.

    Columns: run_id, run_name, experiment_id, status, start_time, end_time, parent_run_id,
    then ``params.*``, ``metrics.*`` (latest value) and ``tags.*``. Empty when tracking is
    off, the SQLite file does not exist or the experiment is unknown.
    """
    store.check_experiment(experiment)
    if not store.enabled():
        return _frame_from_runs([])
    uri, db = store.resolve(uri)
    if db is not None and not db.is_file():  # reading must not create an empty store
        return _frame_from_runs([])
    client = store.client(uri, db)
    found = store.retry(client.get_experiment_by_name, experiment)
    if found is None:
        return _frame_from_runs([])
    runs, token = [], None
    while True:
        page = store.retry(
            client.search_runs,
            [found.experiment_id],
            filter_string=filter_string,
            max_results=1000,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            break
    return _frame_from_runs(runs)


def metric_history(run_id: str, key: str, uri: str | None = None) -> pandas.DataFrame:  # noqa: F821
    """All logged values of one metric of a run: columns step, value, timestamp (sorted by step)."""
    import pandas as pd

    if not store.enabled():
        return pd.DataFrame(columns=["step", "value", "timestamp"])
    uri, db = store.resolve(uri)
    history = store.retry(store.client(uri, db).get_metric_history, run_id, key)
    frame = pd.DataFrame(
        [(m.step, m.value, m.timestamp) for m in history], columns=["step", "value", "timestamp"]
    )
    return frame.sort_values(["step", "timestamp"], kind="stable").reset_index(drop=True)
