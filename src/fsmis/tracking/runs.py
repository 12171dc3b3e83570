"""Runs: the parent run of a workflow invocation, one child run per job, and the one
handle (:class:`RunLogger`) a job logs through, whether its run goes to MLflow now
(:class:`LiveRun`) or is recorded to the spool for later (``spool.SpoolRun``).

The handle turns what a job logs into MLflow's form once (metrics as
``[key, value, time_ms, step]``, params flattened, values cut to MLflow's limits, see
``values``), and :func:`send_batches` cuts those items into MLflow's batch sizes for
both a live run and the replay of a recorded one. MLflow is imported only where a run
is really stored.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from fsmis import envvars
from fsmis.config import config_hash
from fsmis.tracking import store
from fsmis.tracking.values import MAX_TAG_VALUE, as_text, flatten, git_commit, tag_values, truncate

log = logging.getLogger(__name__)

_BATCH_SIZE = {"metrics": 1000, "params": 100, "tags": 100}  # MAX_METRICS/PARAMS_TAGS_PER_BATCH
_TERMINAL = ("FINISHED", "FAILED", "KILLED")
_MAX_CONSECUTIVE_FAILURES = 3


# --------------------------------------------------------------------------- batches


def now_ms() -> int:
    return int(time.time() * 1000)


def send_batches(client, run_id: str, kind: str, items, call: Callable = store.retry) -> None:
    """Store ``items`` of ``kind`` ("metrics": ``[[key, value, time_ms, step], ...]``;
    "params"/"tags": ``{key: text}``) in MLflow-sized ``log_batch`` calls made through
    ``call(fn, *args, **kwargs)``."""
    from mlflow.entities import Metric, Param, RunTag

    if kind == "metrics":
        entities = [Metric(k, v, t, step) for k, v, t, step in items]
    else:
        cls = Param if kind == "params" else RunTag
        entities = [cls(k, v) for k, v in items.items()]
    size = _BATCH_SIZE[kind]
    for start in range(0, len(entities), size):
        call(client.log_batch, run_id, **{kind: entities[start : start + size]}, synchronous=True)


# --------------------------------------------------------------------------- handles


class RunLogger:
    """The handle :func:`job_run` yields. This base class logs nowhere (tracking off, or
    the store unreachable): every method is a no-op and ``run_id`` is None. Subclasses
    store what the public methods prepare through ``_emit``, ``_artifact``, ``_dict``
    and ``_end``."""

    run_id: str | None = None
    _logs = False  # the subclasses do

    @property
    def active(self) -> bool:
        return self._logs

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log numeric metrics at ``step`` (default 0); non-numeric values raise TypeError/ValueError."""
        if self._logs:
            now = now_ms()
            self._emit("metrics", [[str(k), float(v), now, int(step or 0)] for k, v in metrics.items()])

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log a (nested) mapping as flattened string params."""
        if self._logs:
            self._emit("params", flatten(params))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self._logs:
            self._emit("tags", tag_values(tags))

    def log_artifact(self, path: str | os.PathLike, subdir: str | None = None) -> None:
        """Copy a small file (or folder) into the run's artifacts, under ``subdir`` if given."""
        if self._logs:
            self._artifact(Path(path), subdir)

    def log_dict(self, obj: Any, name: str) -> None:
        """Store ``obj`` as a JSON (or YAML, by extension) artifact file ``name``."""
        if self._logs:
            self._dict(obj, name)

    def _terminate(self, status: str, error: str | None = None) -> None:
        if self._logs:
            self._end(status, error)


class LiveRun(RunLogger):
    """A run logged to MLflow as the job goes. Failing calls are tolerated (unless strict);
    after three in a row the run logs nothing more, so a lost store costs little time."""

    _logs = True

    def __init__(self, client, run_id: str, strict: bool = False):
        self._client = client
        self.run_id = run_id
        self._strict = strict
        self._failures = 0

    @property
    def active(self) -> bool:
        return self._failures < _MAX_CONSECUTIVE_FAILURES

    def _call(self, what: str, fn: Callable, *args, **kwargs) -> None:
        if not self.active:
            return
        try:
            store.retry(fn, *args, **kwargs)
        except Exception as err:
            self._failures += 1
            store.tolerate(f"{what} (run {self.run_id})", err, self._strict)
            if not self.active:
                log.warning(
                    "MLflow tracking: %d calls in a row failed; run %s logs nothing more", self._failures, self.run_id
                )
        else:
            self._failures = 0

    def _emit(self, kind: str, items) -> None:
        what = "set_tags" if kind == "tags" else f"log_{kind}"
        send_batches(self._client, self.run_id, kind, items, call=functools.partial(self._call, what))

    def _artifact(self, path: Path, subdir: str | None) -> None:
        if path.is_dir():
            self._call("log_artifacts", self._client.log_artifacts, self.run_id, str(path), subdir)
        else:
            self._call("log_artifact", self._client.log_artifact, self.run_id, str(path), subdir)

    def _dict(self, obj: Any, name: str) -> None:
        self._call("log_dict", self._client.log_dict, self.run_id, obj, name)

    def _end(self, status: str, error: str | None) -> None:
        self._failures = 0  # always try to close the run, even after logging failures
        if error:
            self._call("set_tags", self._client.set_tag, self.run_id, "error", truncate(error, MAX_TAG_VALUE))
        self._call(f"set_terminated {status}", self._client.set_terminated, self.run_id, status)


# --------------------------------------------------------------------------- runs


def _source_commit(tags: dict[str, Any]) -> dict[str, Any]:
    """``tags`` plus MLflow's own commit tag (the UI shows it) when ``git_commit`` is known."""
    if tags["git_commit"] != "unknown":
        tags.setdefault("mlflow.source.git.commit", tags["git_commit"])
    return tags


def start_parent(
    experiment: str,
    tags: Mapping[str, Any] | None = None,
    uri: str | None = None,
    run_name: str | None = None,
    strict: bool | None = None,
) -> str | None:
    """Create the parent run of one workflow invocation; return its id (None if off/unreachable).

    Export the id as ``FSMIS_MLFLOW_PARENT_RUN_ID`` so job runs attach to it.
    """
    store.check_experiment(experiment)
    if not store.enabled():
        return None
    strict = store.strict_mode(strict)
    uri, db = store.resolve(uri)
    run_tags = _source_commit({"stage": "workflow", "git_commit": git_commit(), **(tags or {})})
    name = run_name or time.strftime("snakemake-%Y%m%d-%H%M%S")
    try:
        with store.bounded_http():
            client = store.client(uri, db)
            exp_id = store.experiment_id(client, uri, db, experiment)
            run = store.retry(client.create_run, exp_id, tags=tag_values(run_tags), run_name=name)
        return run.info.run_id
    except Exception as err:
        store.tolerate(f"creating the parent run in {uri}", err, strict)
        return None


def end_parent(
    run_id: str | None,
    status: str = "FINISHED",
    uri: str | None = None,
    log_file: str | os.PathLike | None = None,
    strict: bool | None = None,
    spool: str | os.PathLike | None = None,
) -> None:
    """Terminate the parent run with ``status``; attach the Snakemake log file if given.

    With ``spool`` (not strict), a store that fails gets the end recorded there instead
    (with a copy of the log file), for :func:`~fsmis.tracking.flush_spool` to store later."""
    if status not in _TERMINAL:
        raise ValueError(f"run status must be one of {_TERMINAL}, got {status!r}")
    if run_id is None or not store.enabled():
        return
    strict = store.strict_mode(strict)
    uri, db = store.resolve(uri)
    end_time = now_ms()
    try:
        with store.bounded_http():
            terminate_parent(store.client(uri, db), run_id, status, end_time, log_file)
    except Exception as err:
        if spool is None or strict:
            store.tolerate(f"ending parent run {run_id} in {uri}", err, strict)
            return
        from fsmis.tracking.spool import record_parent_end  # spool builds on this module

        record_parent_end(Path(spool), uri, run_id, status, end_time, log_file)
        log.info("MLflow tracking: ending parent run %s failed (%s); recorded in %s", run_id, store.describe(err),
                 spool)


def terminate_parent(client, run_id: str, status: str, end_time: int | None, log_file) -> None:
    """Attach ``log_file`` (if it exists) under ``snakemake/`` and end the run."""
    if log_file is not None and Path(log_file).is_file():
        store.retry(client.log_artifact, run_id, os.fspath(log_file), "snakemake")
    store.retry(client.set_terminated, run_id, status, end_time=end_time)


def _job_tags(stage: str, params: Mapping[str, Any], given: dict[str, Any]) -> tuple[dict[str, Any], dict]:
    """The tags of a job's run, and its wildcards (see :func:`job_run`)."""
    wildcards = given.pop("wildcards", None) or {}
    if isinstance(wildcards, str):  # already JSON text
        wildcards = json.loads(wildcards)
    wildcards = dict(wildcards)
    run_tags: dict[str, Any] = {str(k): v for k, v in wildcards.items()}
    run_tags.update(
        {
            "stage": stage,
            "rule": given.pop("rule", stage),
            "wildcards": json.dumps({str(k): as_text(v) for k, v in wildcards.items()}, sort_keys=True),
            "git_commit": git_commit(),
            "config_hash": given.pop("config_hash", None) or config_hash(params),
        }
    )
    run_tags.update(given)
    _source_commit(run_tags)
    parent = os.environ.get(envvars.FSMIS_MLFLOW_PARENT_RUN_ID, "").strip()
    if parent:
        run_tags["mlflow.parentRunId"] = parent
    return run_tags, wildcards


def _run_name(stage: str, wildcards: Mapping[str, Any]) -> str:
    if not wildcards:
        return stage
    return f"{stage}:" + ",".join(f"{k}={v}" for k, v in wildcards.items())


def _open_live(stage: str, experiment: str, uri: str | None, run_tags, name: str, strict: bool) -> RunLogger:
    """A live run in the store, or a handle that logs nowhere when the store fails (not strict)."""
    uri, db = store.resolve(uri)
    try:
        client = store.client(uri, db)
        exp_id = store.experiment_id(client, uri, db, experiment)
        run = store.retry(client.create_run, exp_id, tags=tag_values(run_tags), run_name=name)
        return LiveRun(client, run.info.run_id, strict)
    except Exception as err:
        store.tolerate(f"creating the {stage} run in {uri}", err, strict)
        return RunLogger()


@contextlib.contextmanager
def job_run(
    stage: str,
    experiment: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    uri: str | None = None,
    strict: bool | None = None,
) -> Iterator[RunLogger]:
    """Child run of the invocation's parent run (``FSMIS_MLFLOW_PARENT_RUN_ID``) for one job.

    ``tags`` may hold ``rule`` (default: ``stage``), ``wildcards`` (a mapping, or its JSON
    text: it names the run ``stage:k=v,...``, is stored as JSON in tag ``wildcards`` and
    each key as its own tag, so ``tags.fold = '0'`` filters) and ``config_hash`` (default:
    :func:`config_hash` of ``params``); any other tags are stored as given. Tag
    ``git_commit`` (and MLflow's ``mlflow.source.git.commit``) is added. ``params`` (the
    resolved config of the job) are flattened with :func:`flatten`.
    With ``FSMIS_MLFLOW_SPOOL`` set (and ``FSMIS_MLFLOW_LIVE`` not) the run is recorded
    to that folder instead, for ``flush_spool`` to store later.
    The run ends FINISHED, or FAILED (KILLED for KeyboardInterrupt and the like) when the
    body raises; the exception is re-raised.
    """
    store.check_experiment(experiment)
    if not store.enabled():
        yield RunLogger()
        return
    strict = store.strict_mode(strict)
    params = dict(params or {})
    run_tags, wildcards = _job_tags(stage, params, dict(tags or {}))
    name = _run_name(stage, wildcards)

    spool = os.environ.get(envvars.FSMIS_MLFLOW_SPOOL, "").strip()
    if spool and not store.env_flag(envvars.FSMIS_MLFLOW_LIVE, False):
        from fsmis.tracking.spool import SpoolRun  # spool builds on this module

        uri, _ = store.resolve(uri)  # the record names the store it belongs to
        handle: RunLogger = SpoolRun(Path(spool), experiment, uri, name, tag_values(run_tags))
    else:
        handle = _open_live(stage, experiment, uri, run_tags, name, strict)
    if handle.active and params:
        try:
            handle.log_params(params)
        except Exception:  # strict mode only: close the run before raising
            handle._terminate("FAILED", error="could not log params")
            raise

    try:
        yield handle
    except BaseException as err:
        status = "FAILED" if isinstance(err, Exception) else "KILLED"
        try:
            handle._terminate(status, error=f"{type(err).__name__}: {err}")
        except Exception as tracking_err:  # strict mode: never mask the job's own error
            log.warning("MLflow tracking: could not mark run %s %s: %s", handle.run_id, status, tracking_err)
        raise
    handle._terminate("FINISHED")
