"""MLflow tracking for workflow jobs: one parent run per ``snakemake`` call, one child run per job.

Layout (DESIGN.md §7): a SQLite store at ``results/mlflow/mlflow.db`` (relative to the
workflow's working directory, override with ``MLFLOW_TRACKING_URI``), artifacts in
``results/mlflow/artifacts`` beside it, one MLflow experiment per workflow experiment.

Concurrency. A fresh SQLite DB is migrated by the first process that opens it, and
several processes migrating at once corrupt each other's work. Every process therefore
opens a SQLite store, and creates the experiment, while holding an exclusive
``fcntl.flock`` on ``<db>.lock``; once the schema exists, many processes log at once
(MLflow sets a 20 s busy timeout per session) and the few ``database is locked`` errors
left are retried here with backoff.

Failure policy. Tracking is a side channel: a science job never fails because the store
is unreachable or a logging call fails. Such errors are logged as warnings and the job
goes on (after three consecutive failed calls the job stops trying). Errors that mean
the setup is wrong do raise: an invalid ``FSMIS_TRACKING``/``FSMIS_TRACKING_STRICT``
value, an unsupported tracking URI scheme, a non-numeric metric. With ``strict=True``
(default from ``FSMIS_TRACKING_STRICT``) every tracking error raises, which is what tests
want. ``FSMIS_TRACKING=off`` turns every function here into a no-op that writes nothing
and does not import MLflow.

Spooling. Inside the workflow, jobs do not talk to MLflow at all: the onstart handler
sets ``FSMIS_MLFLOW_SPOOL`` to a folder, and :func:`job_run` then records the run
(tags, params, metrics with their steps and times, copies of the artifacts, status)
as one JSON-lines file there. The Snakefile's onsuccess/onerror handler replays every
recorded run into the store with :func:`flush_spool`, in one process. Importing MLflow
and opening the store costs about 3 s of CPU per process, which was a quarter of the
demo's CPU time when every job did it; one process replaying 80 runs takes a few
seconds. A killed job leaves a record without an end: it is replayed as KILLED. A
record that cannot be replayed stays in the folder and is tried again by the next
invocation. Without ``FSMIS_MLFLOW_SPOOL`` (tests, notebooks, or a user who wants live
curves of a long GPU run: ``FSMIS_MLFLOW_LIVE=1``) jobs log directly.

MLflow is imported lazily so importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import random
import re
import shutil
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///results/mlflow/mlflow.db"
PARENT_ENV = "FSMIS_MLFLOW_PARENT_RUN_ID"
TRACKING_ENV = "FSMIS_TRACKING"
STRICT_ENV = "FSMIS_TRACKING_STRICT"
SPOOL_ENV = "FSMIS_MLFLOW_SPOOL"
LIVE_ENV = "FSMIS_MLFLOW_LIVE"

MAX_PARAM_VALUE = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_TAG_VALUE = 8000  # mlflow.utils.validation.MAX_TAG_VAL_LENGTH
_PARAMS_PER_BATCH = 100  # MAX_PARAMS_TAGS_PER_BATCH
_METRICS_PER_BATCH = 1000  # MAX_METRICS_PER_BATCH
_TERMINAL = ("FINISHED", "FAILED", "KILLED")
_SCHEMES = {"sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks"}
_RETRY_DELAYS = (0.25, 0.5, 1.0, 2.0)  # seconds before attempts 2..5, jittered
_MAX_CONSECUTIVE_FAILURES = 3

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

# per process: resolved URIs whose store is open/migrated, and (uri, experiment) -> id
_OPENED: set[str] = set()
_EXPERIMENTS: dict[tuple[str, str], str] = {}


# --------------------------------------------------------------------------- settings


def _env_flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"environment variable {name}={raw!r}: expected one of on/off, true/false, 1/0, yes/no")


def enabled() -> bool:
    """False when ``FSMIS_TRACKING=off`` (or 0/false/no)."""
    return _env_flag(TRACKING_ENV, True)


def _strict(strict: bool | None) -> bool:
    return _env_flag(STRICT_ENV, False) if strict is None else bool(strict)


def tracking_uri(uri: str | None = None) -> str:
    """The configured URI: ``uri``, else ``MLFLOW_TRACKING_URI``, else the default SQLite file."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def sqlite_path(uri: str) -> Path | None:
    """Database file of a ``sqlite:///`` URI (relative to the cwd unless absolute); None otherwise."""
    if not uri.startswith("sqlite:"):
        return None
    rest = uri[len("sqlite:") :]
    if not rest.startswith("///"):
        raise ValueError(f"tracking URI {uri!r}: a SQLite URI is sqlite:///relative/path.db or sqlite:////abs/path.db")
    rest = rest[3:].split("?", 1)[0]
    if rest in ("", ":memory:"):
        return None
    return Path(rest)


def _resolve(uri: str | None) -> tuple[str, Path | None]:
    """Validate the URI; return it with SQLite paths made absolute, and the DB path."""
    uri = tracking_uri(uri)
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower() if ":" in uri else ""
    if scheme not in _SCHEMES:
        hint = " (MLflow's file store is in maintenance mode and refuses to log)" if scheme in ("file", "") else ""
        raise ValueError(
            f"tracking URI {uri!r}: unsupported scheme{hint}; "
            "use sqlite:///path/to/mlflow.db or an http(s) MLflow server"
        )
    db = sqlite_path(uri)
    if db is None:
        return uri, None
    db = db.absolute()
    query = "?" + uri.split("?", 1)[1] if "?" in uri else ""
    return f"sqlite:///{db}{query}", db


def artifact_location(db: Path) -> str:
    """Absolute file URI of the artifact folder beside the database."""
    return (db.absolute().parent / "artifacts").as_uri()


# --------------------------------------------------------------------------- helpers


def config_hash(config: Mapping[str, Any]) -> str:
    """First 12 hex digits of the sha256 of the canonical JSON of ``config``."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return str(value)


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


_BAD_KEY_CHARS = re.compile(r"[^\w./\- :]")  # MLflow accepts word characters and . / - space :


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> ``{"a.b": "value"}`` with string values cut to MLflow's 6000 chars.

    Lists and tuples are JSON text; an empty mapping stays one key with ``"{}"``.
    Characters MLflow refuses in a key (e.g. the ``+`` of a label group name) become
    ``_``.
    """
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = _BAD_KEY_CHARS.sub("_", f"{prefix}{key}")
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = _truncate(_as_text(value), MAX_PARAM_VALUE)
    return flat


def _tag_values(tags: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): _truncate(_as_text(v), MAX_TAG_VALUE) for k, v in tags.items()}


@functools.lru_cache(maxsize=8)
def _git_commit_in(folder: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit or None


def git_commit() -> str:
    """HEAD of the git repository around the cwd, else around this package, else 'unknown'."""
    return _git_commit_in(os.getcwd()) or _git_commit_in(str(Path(__file__).resolve().parent)) or "unknown"


def _is_locked_error(err: BaseException) -> bool:
    seen = 0
    while err is not None and seen < 10:
        if "database is locked" in str(err) or "database table is locked" in str(err):
            return True
        err = err.__cause__ or err.__context__
        seen += 1
    return False


def _retry(fn: Callable, *args, **kwargs):
    """Call ``fn``; retry SQLite ``database is locked`` errors with jittered backoff."""
    for delay in (*_RETRY_DELAYS, None):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            if delay is None or not _is_locked_error(err):
                raise
            log.debug("MLflow store locked, retrying in %.2f s", delay)
            time.sleep(delay * (1.0 + random.random()))


@contextlib.contextmanager
def _file_lock(db: Path | None) -> Iterator[None]:
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _schema_ready(db: Path) -> bool:
    """True when the SQLite file already holds every table MLflow expects.

    This is MLflow's own test before it migrates (``_all_tables_exist``), read with plain
    sqlite3. When it holds, opening the store only reads, so no lock is needed; when
    anything is unsure (no file, a busy file, a newer MLflow) the answer is False and the
    caller takes the lock.
    """
    if not db.is_file():
        return False
    try:
        from mlflow.store.db.base_sql_model import Base

        expected = set(Base.metadata.tables)
        with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=5)) as con:
            names = {row[0] for row in con.execute("select name from sqlite_master where type = 'table'")}
    except Exception:
        return False
    return bool(expected) and expected <= names


def _open(uri: str):
    from mlflow import MlflowClient

    client = _retry(MlflowClient, tracking_uri=uri)  # constructing the client opens the store
    _retry(client.search_experiments, max_results=1)
    return client


def _client(uri: str, db: Path | None):
    """An ``MlflowClient`` whose store is open; a new SQLite store is created/migrated under the lock."""
    from mlflow import MlflowClient

    if uri in _OPENED or db is None:
        return MlflowClient(tracking_uri=uri)  # MLflow caches the store object per process
    # importing the SQL store (~2 s of CPU) also registers the tables _schema_ready expects
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

    client = None
    if not _schema_ready(db):
        with _file_lock(db):
            if not _schema_ready(db):
                client = _open(uri)  # migrates a new file while other processes wait
    client = client or _open(uri)
    _OPENED.add(uri)
    return client


def _experiment_id(client, uri: str, db: Path | None, experiment: str) -> str:
    """Id of ``experiment``, creating (or restoring) it under the lock if needed."""
    key = (uri, experiment)
    if key in _EXPERIMENTS:
        return _EXPERIMENTS[key]
    found = _retry(client.get_experiment_by_name, experiment)
    if found is None or found.lifecycle_stage == "deleted":
        with _file_lock(db):
            found = _retry(client.get_experiment_by_name, experiment)
            if found is None:
                location = artifact_location(db) if db is not None else None
                exp_id = _retry(client.create_experiment, experiment, artifact_location=location)
            else:
                if found.lifecycle_stage == "deleted":
                    _retry(client.restore_experiment, found.experiment_id)
                exp_id = found.experiment_id
    else:
        exp_id = found.experiment_id
    _EXPERIMENTS[key] = exp_id
    return exp_id


def _check_experiment(experiment: str) -> None:
    if not isinstance(experiment, str) or not experiment.strip():
        raise ValueError(f"MLflow experiment name must be a non-empty string, got {experiment!r}")


def _tolerate(what: str, err: Exception, strict: bool) -> None:
    if strict:
        raise err
    log.warning("MLflow tracking: %s failed (%s: %s); the job goes on without it", what, type(err).__name__, err)


# --------------------------------------------------------------------------- store / parent


def init_store(experiment: str, uri: str | None = None, strict: bool | None = None) -> str | None:
    """Create/migrate the store and the experiment once; return the experiment id.

    Idempotent and safe to call from several processes at once. Returns None when
    tracking is off, or (not strict) when the store cannot be reached.
    """
    _check_experiment(experiment)
    if not enabled():
        return None
    strict = _strict(strict)
    uri, db = _resolve(uri)
    try:
        return _experiment_id(_client(uri, db), uri, db, experiment)
    except Exception as err:
        _tolerate(f"opening store {uri}", err, strict)
        return None


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
    _check_experiment(experiment)
    if not enabled():
        return None
    strict = _strict(strict)
    uri, db = _resolve(uri)
    run_tags = {"stage": "workflow", "git_commit": git_commit()}
    run_tags.update(tags or {})
    if run_tags["git_commit"] != "unknown":
        run_tags.setdefault("mlflow.source.git.commit", run_tags["git_commit"])
    name = run_name or time.strftime("snakemake-%Y%m%d-%H%M%S")
    try:
        client = _client(uri, db)
        exp_id = _experiment_id(client, uri, db, experiment)
        run = _retry(client.create_run, exp_id, tags=_tag_values(run_tags), run_name=name)
        return run.info.run_id
    except Exception as err:
        _tolerate("creating the parent run", err, strict)
        return None


def end_parent(
    run_id: str | None,
    status: str = "FINISHED",
    uri: str | None = None,
    log_file: str | os.PathLike | None = None,
    strict: bool | None = None,
) -> None:
    """Terminate the parent run with ``status``; attach the Snakemake log file if given."""
    if status not in _TERMINAL:
        raise ValueError(f"run status must be one of {_TERMINAL}, got {status!r}")
    if run_id is None or not enabled():
        return
    strict = _strict(strict)
    uri, db = _resolve(uri)
    try:
        client = _client(uri, db)
        if log_file is not None and Path(log_file).is_file():
            _retry(client.log_artifact, run_id, os.fspath(log_file), "snakemake")
        _retry(client.set_terminated, run_id, status)
    except Exception as err:
        _tolerate(f"ending parent run {run_id}", err, strict)


# --------------------------------------------------------------------------- job runs


class JobRun:
    """Handle yielded by :func:`job_run`. With tracking off or unreachable every method is a no-op
    and ``run_id`` is None."""

    def __init__(self, client=None, run_id: str | None = None, strict: bool = False):
        self._client = client
        self.run_id = run_id
        self._strict = strict
        self._failures = 0

    @property
    def active(self) -> bool:
        return self._client is not None and self._failures < _MAX_CONSECUTIVE_FAILURES

    def _call(self, what: str, fn: Callable, *args, **kwargs) -> None:
        if not self.active:
            return
        try:
            _retry(fn, *args, **kwargs)
        except Exception as err:
            self._failures += 1
            _tolerate(f"{what} (run {self.run_id})", err, self._strict)
            if not self.active:
                log.warning(
                    "MLflow tracking: %d calls in a row failed; run %s logs nothing more", self._failures, self.run_id
                )
        else:
            self._failures = 0

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log numeric metrics in batches; non-numeric values raise TypeError/ValueError."""
        if self._client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(str(k), float(v), now, int(step or 0)) for k, v in metrics.items()]
        for start in range(0, len(items), _METRICS_PER_BATCH):
            chunk = items[start : start + _METRICS_PER_BATCH]
            self._call("log_metrics", self._client.log_batch, self.run_id, metrics=chunk, synchronous=True)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log a (nested) mapping as flattened string params."""
        if self._client is None:
            return
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flatten(params).items()]
        for start in range(0, len(items), _PARAMS_PER_BATCH):
            chunk = items[start : start + _PARAMS_PER_BATCH]
            self._call("log_params", self._client.log_batch, self.run_id, params=chunk, synchronous=True)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self._client is None:
            return
        from mlflow.entities import RunTag

        items = [RunTag(k, v) for k, v in _tag_values(tags).items()]
        for start in range(0, len(items), _PARAMS_PER_BATCH):
            chunk = items[start : start + _PARAMS_PER_BATCH]
            self._call("set_tags", self._client.log_batch, self.run_id, tags=chunk, synchronous=True)

    def log_artifact(self, path: str | os.PathLike, subdir: str | None = None) -> None:
        """Copy a small file (or folder) into the run's artifacts, under ``subdir`` if given."""
        if self._client is None:
            return
        path = os.fspath(path)
        if os.path.isdir(path):
            self._call("log_artifacts", self._client.log_artifacts, self.run_id, path, subdir)
        else:
            self._call("log_artifact", self._client.log_artifact, self.run_id, path, subdir)

    def log_dict(self, obj: Any, name: str) -> None:
        """Store ``obj`` as a JSON (or YAML, by extension) artifact file ``name``."""
        if self._client is None:
            return
        self._call("log_dict", self._client.log_dict, self.run_id, obj, name)

    def _terminate(self, status: str, error: str | None = None) -> None:
        if self._client is None:
            return
        self._failures = 0  # always try to close the run, even after logging failures
        if error:
            self._call("set_tags", self._client.set_tag, self.run_id, "error", _truncate(error, MAX_TAG_VALUE))
        self._call(f"set_terminated {status}", self._client.set_terminated, self.run_id, status)



class SpoolRun:
    """A job run recorded to ``<spool>/<id>.jsonl`` (one JSON object a line) and replayed
    into the store later by :func:`flush_spool`; same methods as :class:`JobRun`.
    Artifacts are copied at once into ``<spool>/<id>.files/`` so the replay logs what
    the job saw, even if the file changes afterwards."""

    def __init__(self, folder: Path, header: Mapping[str, Any]):
        folder.mkdir(parents=True, exist_ok=True)
        self.run_id = None  # the MLflow id exists only after the replay
        self.record_id = uuid.uuid4().hex
        self.path = folder / f"{self.record_id}.jsonl"
        self.files = folder / f"{self.record_id}.files"
        self._n_files = 0
        self._write({"type": "start", "time": _now_ms(), **header})

    active = True

    def _write(self, record: Mapping[str, Any]) -> None:
        # one write() per record, flushed at once: a killed job leaves whole lines
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=str) + "\n")

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        now = _now_ms()
        items = [[str(k), float(v), now, int(step or 0)] for k, v in metrics.items()]
        self._write({"type": "metrics", "items": items})

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._write({"type": "params", "items": flatten(params)})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._write({"type": "tags", "items": _tag_values(tags)})

    def log_artifact(self, path: str | os.PathLike, subdir: str | None = None) -> None:
        path = Path(path)
        self._n_files += 1
        copy = self.files / str(self._n_files) / path.name
        copy.parent.mkdir(parents=True)
        if path.is_dir():
            shutil.copytree(path, copy)
        else:
            shutil.copy2(path, copy)
        self._write({"type": "artifact", "path": str(copy.relative_to(self.path.parent)), "subdir": subdir})

    def log_dict(self, obj: Any, name: str) -> None:
        self._write({"type": "dict", "obj": obj, "name": name})

    def _terminate(self, status: str, error: str | None = None) -> None:
        self._write({"type": "end", "time": _now_ms(), "status": status, "error": error})


def _now_ms() -> int:
    return int(time.time() * 1000)


def _read_record(path: Path) -> list[dict]:
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # the torn last line of a killed job
            break
    return records


def _replay(client, records: list[dict], folder: Path, strict: bool) -> str:
    """Store one recorded run. Only creating the run may fail the replay (the record
    is then kept for the next try); once the run exists, a failing call is a warning,
    as it is for a live run, and the run is always closed: a retry would duplicate it."""
    from mlflow.entities import Metric, Param, RunTag

    start = records[0]
    exp_id = _experiment_id(client, *start["_store"], start["experiment"])
    run = _retry(client.create_run, exp_id, start_time=start["time"], tags=start["tags"],
                 run_name=start["run_name"])
    run_id = run.info.run_id
    end = {"status": "KILLED", "time": None, "error": "the job ended without closing its run (killed?)"}
    for rec in records[1:]:
        kind = rec["type"]
        try:
            if kind == "metrics":
                items = [Metric(k, v, t, step) for k, v, t, step in rec["items"]]
                for i in range(0, len(items), _METRICS_PER_BATCH):
                    _retry(client.log_batch, run_id, metrics=items[i : i + _METRICS_PER_BATCH], synchronous=True)
            elif kind in ("params", "tags"):
                cls = Param if kind == "params" else RunTag
                items = [cls(k, v) for k, v in rec["items"].items()]
                for i in range(0, len(items), _PARAMS_PER_BATCH):
                    chunk = items[i : i + _PARAMS_PER_BATCH]
                    _retry(client.log_batch, run_id, **{kind: chunk}, synchronous=True)
            elif kind == "artifact":
                path = folder / rec["path"]
                if path.is_dir():
                    _retry(client.log_artifacts, run_id, str(path), rec["subdir"])
                else:
                    _retry(client.log_artifact, run_id, str(path), rec["subdir"])
            elif kind == "dict":
                _retry(client.log_dict, run_id, rec["obj"], rec["name"])
            elif kind == "end":
                end = rec
        except Exception as err:
            _tolerate(f"storing {kind} of recorded run {start['run_name']} ({run_id})", err, strict)
    if end.get("error"):
        _retry(client.set_tag, run_id, "error", _truncate(end["error"], MAX_TAG_VALUE))
    _retry(client.set_terminated, run_id, end["status"], end_time=end["time"])
    return run_id


def flush_spool(folder: str | os.PathLike, strict: bool | None = None) -> int:
    """Replay every run recorded in ``folder`` into its store (oldest first), delete
    each record once it is stored, and return how many were stored. A record that
    fails stays for the next call (a warning, or an error when strict)."""
    folder = Path(folder)
    if not enabled() or not folder.is_dir():
        return 0
    strict = _strict(strict)
    pending = []
    for path in folder.glob("*.jsonl"):
        records = _read_record(path)
        if records and records[0].get("type") == "start":
            pending.append((records[0]["time"], path, records))
    stored = 0
    for _, path, records in sorted(pending, key=lambda item: item[0]):
        try:
            uri, db = _resolve(records[0]["uri"])
            records[0]["_store"] = (uri, db)
            _replay(_client(uri, db), records, folder, strict)
        except Exception as err:
            _tolerate(f"storing the recorded run {path.name}", err, strict)
            continue
        shutil.rmtree(folder / f"{path.stem}.files", ignore_errors=True)
        path.unlink()
        stored += 1
    return stored


def _run_name(stage: str, wildcards: Mapping[str, Any]) -> str:
    if not wildcards:
        return stage
    return f"{stage}:" + ",".join(f"{k}={v}" for k, v in wildcards.items())


@contextlib.contextmanager
def job_run(
    stage: str,
    experiment: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    uri: str | None = None,
    strict: bool | None = None,
) -> Iterator[JobRun]:
    """Child run of the invocation's parent run (``FSMIS_MLFLOW_PARENT_RUN_ID``) for one job.

    ``tags`` may hold ``rule`` (default: ``stage``), ``wildcards`` (a mapping, or its JSON
    text: it names the run ``stage:k=v,...``, is stored as JSON in tag ``wildcards`` and
    each key as its own tag, so ``tags.fold = '0'`` filters) and ``config_hash`` (default:
    :func:`config_hash` of ``params``); any other tags are stored as given. Tag
    ``git_commit`` (and MLflow's ``mlflow.source.git.commit``) is added. ``params`` (the
    resolved config of the job) are flattened with :func:`flatten`.
    The run ends FINISHED, or FAILED (KILLED for KeyboardInterrupt and the like) when the
    body raises; the exception is re-raised.
    """
    _check_experiment(experiment)
    if not enabled():
        yield JobRun()
        return
    strict_ = _strict(strict)
    uri, db = _resolve(uri)
    params = dict(params or {})
    given = dict(tags or {})
    wildcards = given.pop("wildcards", None) or {}
    if isinstance(wildcards, str):  # already JSON text
        wildcards = json.loads(wildcards)
    wildcards = dict(wildcards)
    run_tags: dict[str, Any] = {str(k): v for k, v in wildcards.items()}
    run_tags.update(
        {
            "stage": stage,
            "rule": given.pop("rule", stage),
            "wildcards": json.dumps({str(k): _as_text(v) for k, v in wildcards.items()}, sort_keys=True),
            "git_commit": git_commit(),
            "config_hash": given.pop("config_hash", None) or config_hash(params),
        }
    )
    run_tags.update(given)
    if run_tags["git_commit"] != "unknown":
        run_tags.setdefault("mlflow.source.git.commit", run_tags["git_commit"])
    parent = os.environ.get(PARENT_ENV, "").strip()
    if parent:
        run_tags["mlflow.parentRunId"] = parent

    spool = os.environ.get(SPOOL_ENV, "").strip()
    if spool and not _env_flag(LIVE_ENV, False):
        header = {"experiment": experiment, "uri": uri, "run_name": _run_name(stage, wildcards),
                  "tags": _tag_values(run_tags)}
        handle = SpoolRun(Path(spool), header)
        if params:
            handle.log_params(params)
        try:
            yield handle
        except BaseException as err:
            handle._terminate("FAILED" if isinstance(err, Exception) else "KILLED", error=f"{type(err).__name__}: {err}")
            raise
        handle._terminate("FINISHED")
        return

    handle = JobRun()
    try:
        client = _client(uri, db)
        exp_id = _experiment_id(client, uri, db, experiment)
        run = _retry(
            client.create_run, exp_id, tags=_tag_values(run_tags), run_name=_run_name(stage, wildcards)
        )
        handle = JobRun(client, run.info.run_id, strict_)
    except Exception as err:
        _tolerate(f"creating the {stage} run in {uri}", err, strict_)
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


# --------------------------------------------------------------------------- queries


def _frame_from_runs(runs) -> "pandas.DataFrame":  # noqa: F821
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
    base = ["run_id", "run_name", "experiment_id", "status", "start_time", "end_time", "parent_run_id"]
    frame = pd.DataFrame(rows, columns=None if rows else base)
    extra = sorted(c for c in frame.columns if c not in base)
    return frame[base + extra]


def search(experiment: str, filter_string: str = "", uri: str | None = None) -> "pandas.DataFrame":  # noqa: F821
    """Active runs of ``experiment`` matching ``filter_string`` (MLflow search syntax), oldest first.

    Columns: run_id, run_name, experiment_id, status, start_time, end_time, parent_run_id,
    then ``params.*``, ``metrics.*`` (latest value) and ``tags.*``. Empty when tracking is
    off, the SQLite file does not exist or the experiment is unknown.
    """
    _check_experiment(experiment)
    if not enabled():
        return _frame_from_runs([])
    uri, db = _resolve(uri)
    if db is not None and not db.is_file():
        return _frame_from_runs([])
    client = _client(uri, db)
    found = _retry(client.get_experiment_by_name, experiment)
    if found is None:
        return _frame_from_runs([])
    runs, token = [], None
    while True:
        page = _retry(
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


def metric_history(run_id: str, key: str, uri: str | None = None) -> "pandas.DataFrame":  # noqa: F821
    """All logged values of one metric of a run: columns step, value, timestamp (sorted by step)."""
    import pandas as pd

    if not enabled():
        return pd.DataFrame(columns=["step", "value", "timestamp"])
    uri, db = _resolve(uri)
    client = _client(uri, db)
    history = _retry(client.get_metric_history, run_id, key)
    frame = pd.DataFrame(
        [(m.step, m.value, m.timestamp) for m in history], columns=["step", "value", "timestamp"]
    )
    return frame.sort_values(["step", "timestamp"], kind="stable").reset_index(drop=True)
