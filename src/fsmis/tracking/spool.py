"""Spooling: job runs recorded to files inside the workflow, stored later in one process.

Importing MLflow and opening the store costs about 3 s of CPU per process, which was a
quarter of the demo's CPU time when every job did it; one process replaying 80 runs
takes a few seconds. So inside the workflow the onstart handler sets
``FSMIS_MLFLOW_SPOOL`` (``results/mlflow/spool``) and :func:`~fsmis.tracking.job_run`
records each run there instead (:class:`SpoolRun`); the onsuccess/onerror handler
stores every record with :func:`flush_spool`.

A record is ``<spool>/<id>.jsonl``, one JSON object a line, each with a ``type``:
``start`` (``time`` in ms, ``experiment``, ``uri``, ``run_name``, ``tags``), then any of
``metrics`` (``items``: ``[[key, value, time_ms, step], ...]``), ``params`` and ``tags``
(``items``: ``{key: text}``), ``artifact`` (``path`` relative to the spool, ``subdir``),
``dict`` (``obj``, ``name``), and last ``end`` (``time``, ``status``, ``error``).
Artifacts are copied at once into ``<spool>/<id>.files/`` so the replay stores what the
job saw, even if the file changes afterwards. A killed job leaves a record without an
end (maybe with a torn last line): it is stored as KILLED. A record that cannot be
stored stays in the folder and is tried again by the next invocation.

Two more kinds of line: a record that is only ``parent_end`` (``time``, ``uri``,
``run_id``, ``status``, ``log``: the copied Snakemake log or null) holds the end of a
parent run that could not be stored (``runs.end_parent``); ``created`` (``run_id``,
``uri``) is appended by :func:`flush_spool` once it has created the record's run, so a
replay cut short (the server went away) deletes that partial run before the retry
stores the record again: a run is never stored twice.

When a server cannot be reached, :func:`flush_spool` stops trying its records after the
first (each try costs seconds, see ``store.bounded_http``) and logs one line naming the
server, how many runs wait in the folder, and the command that stores them
(``python -m fsmis.tracking store-spool FOLDER``); the next invocation that runs a job
stores them too.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fsmis.tracking import store
from fsmis.tracking.runs import RunLogger, now_ms, send_batches, terminate_parent
from fsmis.tracking.values import MAX_TAG_VALUE, truncate

log = logging.getLogger(__name__)
_KINDS = ("start", "parent_end")  # what the first line of a record may be


class SpoolRun(RunLogger):
    """A job run recorded to ``<folder>/<id>.jsonl``; ``run_id`` stays None (MLflow gives
    the run its id only when :func:`flush_spool` stores it)."""

    _logs = True

    def __init__(self, folder: Path, experiment: str, uri: str, run_name: str, tags: Mapping[str, str]):
        folder.mkdir(parents=True, exist_ok=True)
        record_id = uuid.uuid4().hex
        self.path = folder / f"{record_id}.jsonl"
        self.files = folder / f"{record_id}.files"
        self._n_files = 0
        self._write({"type": "start", "time": now_ms(), "experiment": experiment, "uri": uri,
                     "run_name": run_name, "tags": dict(tags)})

    def _write(self, record: Mapping[str, Any]) -> None:
        # one write() per record, flushed at once: a killed job leaves whole lines
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=str) + "\n")

    def _emit(self, kind: str, items) -> None:
        self._write({"type": kind, "items": items})

    def _artifact(self, path: Path, subdir: str | None) -> None:
        self._n_files += 1  # a folder per artifact: two files may share a name
        copy = self.files / str(self._n_files) / path.name
        copy.parent.mkdir(parents=True)
        if path.is_dir():
            shutil.copytree(path, copy)
        else:
            shutil.copy2(path, copy)
        self._write({"type": "artifact", "path": str(copy.relative_to(self.path.parent)), "subdir": subdir})

    def _dict(self, obj: Any, name: str) -> None:
        self._write({"type": "dict", "obj": obj, "name": name})

    def _end(self, status: str, error: str | None) -> None:
        self._write({"type": "end", "time": now_ms(), "status": status, "error": error})


def record_parent_end(folder: Path, uri: str, run_id: str, status: str, end_time: int, log_file) -> Path:
    """Record the end of a parent run that could not be stored now (``runs.end_parent``),
    with a copy of the Snakemake log file (if any) taken at once."""
    folder.mkdir(parents=True, exist_ok=True)
    record_id = uuid.uuid4().hex
    log_copy = None
    if log_file is not None and Path(log_file).is_file():
        copy = folder / f"{record_id}.files" / Path(log_file).name
        copy.parent.mkdir(parents=True)
        shutil.copy2(log_file, copy)
        log_copy = str(copy.relative_to(folder))
    path = folder / f"{record_id}.jsonl"
    record = {"type": "parent_end", "time": end_time, "uri": uri, "run_id": run_id, "status": status, "log": log_copy}
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    return path


def _read_record(path: Path) -> list[dict]:
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # the torn last line of a killed job (a marker may follow it)
            continue
    return records


def _append(path: Path, record: dict) -> None:
    """Add a line to a record, on a line of its own even after a torn last line."""
    with open(path, "rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        torn = False
        if size:
            handle.seek(size - 1)
            torn = handle.read(1) != b"\n"
        handle.write((("\n" if torn else "") + json.dumps(record) + "\n").encode("utf-8"))


def _delete_partial_runs(client, uri: str, records: list[dict]) -> None:
    """Delete the runs that an earlier, interrupted replay of this record created in ``uri``."""
    for rec in records:
        if rec.get("type") != "created" or rec.get("uri") != uri:
            continue
        try:
            store.retry(client.delete_run, rec["run_id"])
        except Exception as err:
            if store.unreachable(err):
                raise
            log.debug("partial run %s is gone already: %s", rec["run_id"], err)


def _replay(client, uri: str, db: Path | None, path: Path, records: list[dict], strict: bool) -> str:
    """Store one recorded run. Only creating the run may fail the replay (the record
    is then kept for the next try); once the run exists, a failing call is a warning,
    as it is for a live run, and the run is always closed. A server that stops answering
    ends the replay (the record is kept; the next try deletes the partial run first)."""
    start = records[0]
    folder = path.parent
    exp_id = store.experiment_id(client, uri, db, start["experiment"])
    _delete_partial_runs(client, uri, records)
    run = store.retry(client.create_run, exp_id, start_time=start["time"], tags=start["tags"],
                      run_name=start["run_name"])
    run_id = run.info.run_id
    _append(path, {"type": "created", "run_id": run_id, "uri": uri})
    end = {"status": "KILLED", "time": None, "error": "the job ended without closing its run (killed?)"}
    for rec in records[1:]:
        kind = rec["type"]
        try:
            if kind in ("metrics", "params", "tags"):
                send_batches(client, run_id, kind, rec["items"])
            elif kind == "artifact":
                artifact = folder / rec["path"]
                if artifact.is_dir():
                    store.retry(client.log_artifacts, run_id, str(artifact), rec["subdir"])
                else:
                    store.retry(client.log_artifact, run_id, str(artifact), rec["subdir"])
            elif kind == "dict":
                store.retry(client.log_dict, run_id, rec["obj"], rec["name"])
            elif kind == "end":
                end = rec
        except Exception as err:
            if store.unreachable(err):
                raise
            store.tolerate(f"storing {kind} of recorded run {start['run_name']} ({run_id})", err, strict)
    if end.get("error"):
        store.retry(client.set_tag, run_id, "error", truncate(end["error"], MAX_TAG_VALUE))
    store.retry(client.set_terminated, run_id, end["status"], end_time=end["time"])
    return run_id


def _pending(folder: Path) -> list[tuple[Path, list[dict]]]:
    """The records in ``folder``, oldest first."""
    found = []
    for path in folder.glob("*.jsonl"):
        records = _read_record(path)
        if records and records[0].get("type") in _KINDS:
            found.append((records[0]["time"], path, records))
    return [(path, records) for _, path, records in sorted(found, key=lambda item: item[0])]


def waiting(folder: str | os.PathLike) -> int:
    """How many records (job runs and parent-run ends) wait in ``folder`` to be stored."""
    folder = Path(folder)
    return len(_pending(folder)) if folder.is_dir() else 0


def _count(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def waiting_message(folder: Path, kinds: list[str], target: str, err: BaseException | None) -> str:
    """The one line that tells the user what waits in ``folder`` for ``target`` and how to store it."""
    runs, parents = kinds.count("start"), kinds.count("parent_end")
    parts = []
    if runs:
        parts.append(_count(runs, "job run"))
    if parents:
        parts.append("the end of the parent run" if parents == 1 else f"the ends of {parents} parent runs")
    where = "MLflow server" if target.startswith(("http:", "https:")) else "MLflow store"
    why = "refused them (see the warnings above)" if err is None else f"could not be reached ({store.describe(err)})"
    verb = "waits" if runs + parents == 1 else "wait"
    return (f"MLflow tracking: the {where} {target} {why}; {' and '.join(parts)} {verb} in {folder.absolute()}. "
            "Nothing is lost: the next snakemake invocation that runs a job stores them, or store them now with: "
            f"python -m fsmis.tracking store-spool {folder.absolute()}")


def flush_spool(folder: str | os.PathLike, strict: bool | None = None, uri: str | None = None) -> int:
    """Replay every record in ``folder`` into its store (oldest first; with ``uri``, into
    that store instead), delete each record once it is stored, and return how many were
    stored. A record that fails stays for the next call (a warning, or an error when
    strict). After the first record whose server cannot be reached, the others for that
    server are not tried; one warning per store that kept records says how many wait and
    how to store them."""
    folder = Path(folder)
    if not store.enabled() or not folder.is_dir():
        return 0
    strict = store.strict_mode(strict)
    stored = 0
    down: dict[str, BaseException] = {}  # target -> the error that showed it unreachable
    left: dict[str, list[str]] = {}  # target -> kinds of the records that wait
    with store.bounded_http():
        for path, records in _pending(folder):
            first = records[0]
            target = uri or first["uri"]
            if target in down:
                left.setdefault(target, []).append(first["type"])
                continue
            try:
                resolved, db = store.resolve(target)
                client = store.client(resolved, db)
                if first["type"] == "parent_end":
                    log_copy = folder / first["log"] if first.get("log") else None
                    terminate_parent(client, first["run_id"], first["status"], first["time"], log_copy)
                else:
                    _replay(client, resolved, db, path, records, strict)
            except Exception as err:
                if store.unreachable(err) and not strict:
                    down[target] = err
                else:
                    store.tolerate(f"storing the recorded run {path.name} in {target}", err, strict)
                left.setdefault(target, []).append(first["type"])
                continue
            shutil.rmtree(folder / f"{path.stem}.files", ignore_errors=True)
            path.unlink()
            stored += 1
    for target, kinds in left.items():
        log.warning(waiting_message(folder, kinds, target, down.get(target)))
    return stored
