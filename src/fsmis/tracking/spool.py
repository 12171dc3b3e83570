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
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fsmis.tracking import store
from fsmis.tracking.runs import RunLogger, now_ms, send_batches
from fsmis.tracking.values import MAX_TAG_VALUE, truncate


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


def _read_record(path: Path) -> list[dict]:
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # the torn last line of a killed job
            break
    return records


def _replay(client, uri: str, db: Path | None, records: list[dict], folder: Path, strict: bool) -> str:
    """Store one recorded run. Only creating the run may fail the replay (the record
    is then kept for the next try); once the run exists, a failing call is a warning,
    as it is for a live run, and the run is always closed: a retry would duplicate it."""
    start = records[0]
    exp_id = store.experiment_id(client, uri, db, start["experiment"])
    run = store.retry(client.create_run, exp_id, start_time=start["time"], tags=start["tags"],
                      run_name=start["run_name"])
    run_id = run.info.run_id
    end = {"status": "KILLED", "time": None, "error": "the job ended without closing its run (killed?)"}
    for rec in records[1:]:
        kind = rec["type"]
        try:
            if kind in ("metrics", "params", "tags"):
                send_batches(client, run_id, kind, rec["items"])
            elif kind == "artifact":
                path = folder / rec["path"]
                if path.is_dir():
                    store.retry(client.log_artifacts, run_id, str(path), rec["subdir"])
                else:
                    store.retry(client.log_artifact, run_id, str(path), rec["subdir"])
            elif kind == "dict":
                store.retry(client.log_dict, run_id, rec["obj"], rec["name"])
            elif kind == "end":
                end = rec
        except Exception as err:
            store.tolerate(f"storing {kind} of recorded run {start['run_name']} ({run_id})", err, strict)
    if end.get("error"):
        store.retry(client.set_tag, run_id, "error", truncate(end["error"], MAX_TAG_VALUE))
    store.retry(client.set_terminated, run_id, end["status"], end_time=end["time"])
    return run_id


def flush_spool(folder: str | os.PathLike, strict: bool | None = None) -> int:
    """Replay every run recorded in ``folder`` into its store (oldest first), delete
    each record once it is stored, and return how many were stored. A record that
    fails stays for the next call (a warning, or an error when strict)."""
    folder = Path(folder)
    if not store.enabled() or not folder.is_dir():
        return 0
    strict = store.strict_mode(strict)
    pending = []
    for path in folder.glob("*.jsonl"):
        records = _read_record(path)
        if records and records[0].get("type") == "start":
            pending.append((records[0]["time"], path, records))
    stored = 0
    for _, path, records in sorted(pending, key=lambda item: item[0]):
        try:
            uri, db = store.resolve(records[0]["uri"])
            _replay(store.client(uri, db), uri, db, records, folder, strict)
        except Exception as err:
            store.tolerate(f"storing the recorded run {path.name}", err, strict)
            continue
        shutil.rmtree(folder / f"{path.stem}.files", ignore_errors=True)
        path.unlink()
        stored += 1
    return stored
