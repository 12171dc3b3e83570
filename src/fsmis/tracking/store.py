"""The MLflow store: which one, opening it safely, and the experiment in it.

Which store. ``uri``, else ``$MLFLOW_TRACKING_URI``, else a SQLite file at
``results/mlflow/mlflow.db`` relative to the working directory (the workflow's). SQLite
paths are made absolute at once, so a job that changes directory still finds the same
file. MLflow's file store is refused: it is in maintenance mode and will not log.

Concurrency. A fresh SQLite DB is migrated by the first process that opens it, and
several processes migrating at once corrupt each other's work. A process therefore
opens a SQLite store whose schema is not complete yet, and creates an experiment,
only while holding an exclusive ``fcntl.flock`` on ``<db>.lock``. Once the schema
exists, many processes may log at once: MLflow gives each session a 20 s busy timeout,
and the few ``database is locked`` errors left are retried here with backoff.

Failure policy. Tracking is a side channel: a science job never fails because the store
is unreachable or a logging call fails; :func:`tolerate` turns such errors into
warnings. A wrong setup (an invalid flag value, an unsupported URI scheme) always raises.
Strict mode (``$FSMIS_TRACKING_STRICT``, or ``strict=True``) raises every error.

A server that does not answer. MLflow's HTTP client retries a failed request for about
four minutes by default (7 retries, backoff factor 2, 120 s timeout). The workflow's
store step (opening the store, the parent run, storing the spool) runs inside
:func:`bounded_http`, where a server that is down fails in about 3 s (a hung one in at
most 3 x 20 s); :func:`unreachable` tells such failures from errors in what was sent.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from fsmis import envvars
from fsmis.tracking.values import truncate

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///results/mlflow/mlflow.db"
_SCHEMES = {"sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks"}
RETRY_DELAYS = (0.25, 0.5, 1.0, 2.0)  # seconds before attempts 2..5, jittered
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

# MLflow's HTTP client settings inside bounded_http(): 3 attempts, ~2-3 s of backoff in
# all (urllib3 sleeps 0, then factor * 2 s, plus up to 1 s of jitter), 20 s per attempt
HTTP_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    # no "View run ... at: URL" lines on stdout: two per stored run, each costing a request
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}

# per process: resolved URIs whose store is open/migrated, and (uri, experiment) -> id
_OPENED: set[str] = set()
_EXPERIMENTS: dict[tuple[str, str], str] = {}


# --------------------------------------------------------------------------- settings


def env_flag(name: str, default: bool) -> bool:
    """A yes/no environment variable; a value that is neither raises (a setup error)."""
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
    return env_flag(envvars.FSMIS_TRACKING, True)


def strict_mode(strict: bool | None) -> bool:
    """``strict`` as given, else ``$FSMIS_TRACKING_STRICT`` (default off)."""
    return env_flag(envvars.FSMIS_TRACKING_STRICT, False) if strict is None else bool(strict)


def tolerate(what: str, err: Exception, strict: bool) -> None:
    """Re-raise ``err`` when strict; otherwise warn and let the job go on."""
    if strict:
        raise err
    log.warning("MLflow tracking: %s failed (%s); the job goes on without it", what, describe(err))


@contextlib.contextmanager
def bounded_http() -> Iterator[None]:
    """Inside: MLflow's HTTP requests give up after :data:`HTTP_BOUNDS` (see the module
    docstring) and print no run URLs. A value the user set in the environment is kept;
    the environment is restored on exit, so processes started afterwards (jobs) get
    MLflow's defaults."""
    added = [name for name in HTTP_BOUNDS if name not in os.environ]
    for name in added:
        os.environ[name] = HTTP_BOUNDS[name]
    # urllib3 warns once per retry; the caller's one line says what failed, and why
    pool_log = logging.getLogger("urllib3.connectionpool")
    level = pool_log.level
    pool_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        pool_log.setLevel(level)
        for name in added:
            os.environ.pop(name, None)


def _causes(err: BaseException | None) -> Iterator[BaseException]:
    seen = 0
    while err is not None and seen < 10:
        yield err
        err = err.__cause__ or err.__context__
        seen += 1


def unreachable(err: BaseException) -> bool:
    """True when ``err`` says the store's server could not be reached or did not answer
    (connection refused or reset, timeout, retries used up), not that it refused what was sent."""
    try:
        from requests import exceptions as http_errors
    except ImportError:  # pragma: no cover - requests comes with MLflow
        return False
    kinds = (http_errors.ConnectionError, http_errors.Timeout, http_errors.RetryError, ConnectionError)
    for cause in _causes(err):
        if isinstance(cause, kinds) or "Max retries exceeded" in str(cause):
            return True
    return False


_ERRNO = re.compile(r"\[Errno -?\d+\] [^'\")\]]+")


def describe(err: BaseException) -> str:
    """A short reason for ``err``: the OS error of a failed connection ("[Errno 111]
    Connection refused") rather than MLflow's and urllib3's nested messages."""
    for cause in _causes(err):
        found = _ERRNO.search(str(cause))
        if found:
            return found.group(0).strip()
        if "timed out" in str(cause) or type(cause).__name__.endswith("Timeout"):
            return "no answer (timed out)"
    return truncate(f"{type(err).__name__}: {err}", 300)


def check_experiment(experiment: str) -> None:
    if not isinstance(experiment, str) or not experiment.strip():
        raise ValueError(f"MLflow experiment name must be a non-empty string, got {experiment!r}")


# --------------------------------------------------------------------------- URIs


def tracking_uri(uri: str | None = None) -> str:
    """The configured URI: ``uri``, else ``MLFLOW_TRACKING_URI``, else the default SQLite file."""
    return uri or os.environ.get(envvars.MLFLOW_TRACKING_URI) or DEFAULT_URI


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


def resolve(uri: str | None) -> tuple[str, Path | None]:
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


# --------------------------------------------------------------------------- opening


def _is_locked_error(err: BaseException) -> bool:
    # MLflow wraps the sqlite3 error (sometimes twice): walk the chain of causes
    seen = 0
    while err is not None and seen < 10:
        if "database is locked" in str(err) or "database table is locked" in str(err):
            return True
        err = err.__cause__ or err.__context__
        seen += 1
    return False


def retry(fn: Callable, *args, **kwargs):
    """Call ``fn``; retry SQLite ``database is locked`` errors with jittered backoff."""
    for delay in (*RETRY_DELAYS, None):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            if delay is None or not _is_locked_error(err):
                raise
            log.debug("MLflow store locked, retrying in %.2f s", delay)
            time.sleep(delay * (1.0 + random.random()))


@contextlib.contextmanager
def _file_lock(db: Path | None) -> Iterator[None]:
    if db is None:  # a server store serialises on its own
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

    client = retry(MlflowClient, tracking_uri=uri)  # constructing the client opens the store
    retry(client.search_experiments, max_results=1)
    return client


def client(uri: str, db: Path | None):
    """An ``MlflowClient`` whose store is open; a new SQLite store is created/migrated under the lock.

    ``uri`` and ``db`` come from :func:`resolve`."""
    from mlflow import MlflowClient

    if uri in _OPENED or db is None:
        return MlflowClient(tracking_uri=uri)  # MLflow caches the store object per process
    # importing the SQL store (~2 s of CPU) also registers the tables _schema_ready expects
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

    opened = None
    if not _schema_ready(db):
        with _file_lock(db):
            if not _schema_ready(db):
                opened = _open(uri)  # migrates a new file while other processes wait
    opened = opened or _open(uri)
    _OPENED.add(uri)
    return opened


def experiment_id(mlflow_client, uri: str, db: Path | None, experiment: str) -> str:
    """Id of ``experiment``, creating (or restoring) it under the lock if needed."""
    key = (uri, experiment)
    if key in _EXPERIMENTS:
        return _EXPERIMENTS[key]
    found = retry(mlflow_client.get_experiment_by_name, experiment)
    if found is None or found.lifecycle_stage == "deleted":
        with _file_lock(db):
            # another process may have created it while this one waited for the lock
            found = retry(mlflow_client.get_experiment_by_name, experiment)
            if found is None:
                location = artifact_location(db) if db is not None else None
                exp_id = _create_experiment(mlflow_client, experiment, location)
            else:
                if found.lifecycle_stage == "deleted":
                    retry(mlflow_client.restore_experiment, found.experiment_id)
                exp_id = found.experiment_id
    else:
        exp_id = found.experiment_id
    _EXPERIMENTS[key] = exp_id
    return exp_id


def _create_experiment(mlflow_client, experiment: str, location: str | None) -> str:
    try:
        return retry(mlflow_client.create_experiment, experiment, artifact_location=location)
    except Exception as err:
        # a server has no file lock: another process may have created it in the meantime
        if getattr(err, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
            raise
        found = retry(mlflow_client.get_experiment_by_name, experiment)
        if found is None:
            raise
        return found.experiment_id


def init_store(experiment: str, uri: str | None = None, strict: bool | None = None) -> str | None:
    """Create/migrate the store and the experiment once; return the experiment id.

    Idempotent and safe to call from several processes at once. Returns None when
    tracking is off, or (not strict) when the store cannot be reached.
    """
    check_experiment(experiment)
    if not enabled():
        return None
    strict = strict_mode(strict)
    uri, db = resolve(uri)
    try:
        with bounded_http():
            return experiment_id(client(uri, db), uri, db, experiment)
    except Exception as err:
        tolerate(f"opening store {uri}", err, strict)
        return None
