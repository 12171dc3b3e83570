"""fsmis.tracking against a real MLflow SQLite store.

A fresh MLflow database costs ~1.5 s of migrations, so one migrated template is made per
session and copied for each test. Only the concurrency test starts from an empty file.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import socket
import sqlite3
import time
from pathlib import Path

import pytest

from fsmis import tracking
from fsmis.config import config_hash

N_WORKERS = 6
N_STEPS = 50


@pytest.fixture(scope="session")
def template_db(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mlflow_template")
    db = folder / "template.db"
    assert tracking.init_store("template", uri=f"sqlite:///{db}", strict=True) is not None
    return db


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in ("FSMIS_MLFLOW_PARENT_RUN_ID", "FSMIS_TRACKING", "MLFLOW_TRACKING_URI", "FSMIS_MLFLOW_SPOOL",
                 "FSMIS_MLFLOW_LIVE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FSMIS_TRACKING_STRICT", "1")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def store(template_db, tmp_path, monkeypatch) -> Path:
    """A migrated store at the default place under tmp_path, selected through the env."""
    db = tmp_path / "results" / "mlflow" / "mlflow.db"
    db.parent.mkdir(parents=True)
    shutil.copyfile(template_db, db)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    return db


def _experiment_rows(db: Path, name: str) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute(
            "select experiment_id, artifact_location from experiments where name = ?", (name,)
        ).fetchall()


# ------------------------------------------------------------------ pure helpers


def test_flatten_stringifies_and_truncates():
    flat = tracking.flatten({"train": {"lr": 1e-3, "steps": 100, "betas": [0.9, 0.99]}, "seed": 1, "empty": {}})
    assert flat == {
        "train.lr": "0.001",
        "train.steps": "100",
        "train.betas": "[0.9, 0.99]",
        "seed": "1",
        "empty": "{}",
    }
    long = tracking.flatten({"x": "a" * 7000})["x"]
    assert len(long) == tracking.MAX_PARAM_VALUE == 6000
    assert long.endswith("...")


def test_config_hash_is_canonical():
    one = config_hash({"a": 1, "b": {"c": [1, 2], "d": "x"}})
    two = config_hash({"b": {"d": "x", "c": [1, 2]}, "a": 1})
    assert one == two and len(one) == 12 and int(one, 16) >= 0
    assert config_hash({"a": 2, "b": {"c": [1, 2], "d": "x"}}) != one


def test_uri_resolution(tmp_path, monkeypatch):
    assert tracking.tracking_uri() == "sqlite:///results/mlflow/mlflow.db"
    uri, db = tracking.store.resolve(None)
    assert db == tmp_path / "results" / "mlflow" / "mlflow.db"
    assert uri == f"sqlite:///{db}"  # absolute: sqlite:////tmp/...
    assert tracking.sqlite_path("sqlite:////abs/x.db") == Path("/abs/x.db")
    assert tracking.artifact_location(db) == (tmp_path / "results" / "mlflow" / "artifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.store.resolve(None) == ("http://127.0.0.1:5000", None)
    for bad in ("file:./mlruns", "./mlruns", "sqlite:relative.db"):
        with pytest.raises(ValueError, match="tracking URI"):
            tracking.store.resolve(bad)


def test_bad_env_flag_is_a_configuration_error(monkeypatch):
    monkeypatch.setenv("FSMIS_TRACKING", "maybe")
    with pytest.raises(ValueError, match="FSMIS_TRACKING"):
        tracking.init_store("exp")


def test_retry_only_on_locked_database(monkeypatch):
    monkeypatch.setattr(tracking.store, "RETRY_DELAYS", (0.001, 0.001, 0.001))
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert tracking.store.retry(flaky) == "ok" and len(calls) == 3

    def broken():
        calls.append(1)
        raise RuntimeError("no such table: runs")

    calls.clear()
    with pytest.raises(RuntimeError, match="no such table"):
        tracking.store.retry(broken)
    assert len(calls) == 1


# ------------------------------------------------------------------ store and runs


def test_init_store_is_idempotent(store):
    first = tracking.init_store("demo")
    tracking.store._EXPERIMENTS.clear()  # as if a second process called it
    second = tracking.init_store("demo")
    assert first == second
    rows = _experiment_rows(store, "demo")
    assert rows == [(int(first), (store.parent / "artifacts").as_uri())]


@pytest.mark.parametrize("mode", ["live", "spool"])
def test_parent_with_two_children_found_by_search(store, tmp_path, monkeypatch, mode):
    """The same runs whether jobs log directly or record to a spool stored afterwards."""
    spool = tmp_path / "spool"
    if mode == "spool":
        monkeypatch.setenv("FSMIS_MLFLOW_SPOOL", str(spool))
    parent = tracking.start_parent("demo", tags={"invocation": "abc"})
    monkeypatch.setenv("FSMIS_MLFLOW_PARENT_RUN_ID", parent)
    config = {"train": {"lr": 1e-3, "steps": 3}, "model": {"name": "panet"}}
    for fold in (0, 1):
        wildcards = {"method": "panet", "setting": "1", "fold": fold}
        with tracking.job_run("train", "demo", params=config, tags={"rule": "train", "wildcards": wildcards}) as run:
            assert bool(run.run_id) == (mode == "live")
            for step in range(3):
                run.log_metrics({"loss": 1.0 / (step + 1 + fold), "lr": 1e-3}, step=step)
            run.log_params({"extra": {"fold": fold}})
            run.set_tags({"note": "hello"})
            run.log_dict({"dice": 0.5 + fold / 10}, "metrics.json")
            text = tmp_path / f"train_log{fold}.tsv"
            text.write_text("step\tloss\n0\t1.0\n")
            run.log_artifact(text, subdir="logs")
            text.write_text("changed after logging\n")  # the artifact is what the job saw then
    if mode == "spool":
        assert tracking.search("demo", "tags.stage = 'train'").empty  # nothing stored yet
        assert tracking.flush_spool(spool) == 2
        assert list(spool.iterdir()) == []  # stored records are removed
    log_file = tmp_path / "snakemake.log"
    log_file.write_text("all done\n")
    tracking.end_parent(parent, "FINISHED", log_file=log_file)

    runs = tracking.search("demo", "tags.stage = 'train'")
    assert len(runs) == 2
    assert list(runs["run_name"]) == ["train:method=panet,setting=1,fold=0", "train:method=panet,setting=1,fold=1"]
    assert set(runs["parent_run_id"]) == {parent}
    assert set(runs["status"]) == {"FINISHED"}
    assert set(runs["params.train.lr"]) == {"0.001"}
    assert list(runs["params.extra.fold"]) == ["0", "1"]
    assert list(runs["metrics.loss"]) == pytest.approx([1 / 3, 1 / 4])  # latest step
    assert set(runs["tags.config_hash"]) == {config_hash(config)}
    assert json.loads(runs["tags.wildcards"].iloc[1]) == {"method": "panet", "setting": "1", "fold": "1"}
    assert list(runs["tags.fold"]) == ["0", "1"]
    assert set(runs["tags.rule"]) == {"train"} and set(runs["tags.note"]) == {"hello"}
    assert runs["tags.git_commit"].str.len().min() > 0

    history = tracking.metric_history(runs["run_id"].iloc[0], "loss")
    assert list(history["step"]) == [0, 1, 2]
    assert list(history["value"]) == pytest.approx([1.0, 1 / 2, 1 / 3])

    # artifacts sit beside the database
    artifacts = store.parent / "artifacts"
    run_dir = next(artifacts.glob(f"{runs['run_id'].iloc[1]}/artifacts"))
    assert json.loads((run_dir / "metrics.json").read_text(encoding="utf-8")) == {"dice": 0.6}
    assert (run_dir / "logs" / "train_log1.tsv").read_text(encoding="utf-8") == "step\tloss\n0\t1.0\n"
    stored_log = next(artifacts.glob(f"{parent}/artifacts")) / "snakemake" / "snakemake.log"
    assert stored_log.read_text(encoding="utf-8") == "all done\n"

    everything = tracking.search("demo")
    parent_row = everything[everything["run_id"] == parent].iloc[0]
    assert parent_row["status"] == "FINISHED" and parent_row["tags.stage"] == "workflow"
    assert parent_row["tags.invocation"] == "abc"


def test_without_parent_env_the_run_is_top_level(store):
    with tracking.job_run("evaluate", "demo", params={"a": 1}, tags={}) as run:
        run.log_metrics({"dice": 0.8})
    runs = tracking.search("demo")
    assert len(runs) == 1
    row = runs.iloc[0]
    assert row["run_name"] == "evaluate" and row["parent_run_id"] is None
    assert row["tags.rule"] == "evaluate" and "tags.mlflow.parentRunId" not in runs
    assert row["metrics.dice"] == 0.8 and row["params.a"] == "1"


def test_exception_marks_run_failed_and_propagates(store):
    with pytest.raises(RuntimeError, match="boom"):
        with tracking.job_run("train", "demo", params={}, tags={"wildcards": {"fold": 0}}) as run:
            run.log_metrics({"loss": 2.0}, step=0)
            raise RuntimeError("boom")
    runs = tracking.search("demo")
    assert list(runs["status"]) == ["FAILED"]
    assert runs["tags.error"].iloc[0] == "RuntimeError: boom"
    assert runs["metrics.loss"].iloc[0] == 2.0


def test_tracking_off_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("FSMIS_TRACKING", "off")
    before = sorted(tmp_path.rglob("*"))
    assert tracking.init_store("demo") is None
    assert tracking.start_parent("demo", {"x": 1}) is None
    with tracking.job_run("train", "demo", params={"a": 1}, tags={"wildcards": {"fold": 0}}) as run:
        assert run.run_id is None and not run.active
        run.log_metrics({"loss": 1.0}, step=1)
        run.log_params({"b": 2})
        run.set_tags({"c": 3})
        run.log_dict({"d": 4}, "d.json")
        run.log_artifact(tmp_path / "missing.txt")
    tracking.end_parent(None)
    assert tracking.search("demo").empty
    assert sorted(tmp_path.rglob("*")) == before == []


def test_unreachable_store_warns_unless_strict(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    uri = f"sqlite:///{blocker}/mlflow.db"  # its parent is a file: the store cannot be created
    monkeypatch.setenv("FSMIS_TRACKING_STRICT", "0")
    ran = False
    with caplog.at_level(logging.WARNING, logger="fsmis.tracking"):
        with tracking.job_run("train", "demo", params={"a": 1}, tags={}, uri=uri) as run:
            run.log_metrics({"loss": 1.0})
            ran = True
    assert ran and run.run_id is None
    assert "goes on without it" in caplog.text
    with pytest.raises(OSError):
        with tracking.job_run("train", "demo", params={}, tags={}, uri=uri, strict=True):
            pass


def _worker(uri: str, index: int, barrier) -> None:
    from fsmis import tracking as t

    barrier.wait(timeout=120)  # every process opens the fresh store at the same moment
    with t.job_run("train", "race", params={"worker": index}, tags={"wildcards": {"fold": index}}, uri=uri,
                   strict=True) as run:
        for step in range(N_STEPS):
            run.log_metrics({"loss": float(index * 1000 + step), "lr": 0.1}, step=step)


def test_parallel_jobs_on_a_fresh_store_lose_nothing(tmp_path):
    """6 processes open an empty DB at once (the lock serialises the migration) and log together.

    The processes come from a fork server that has only imported MLflow (no store, engine
    or connection exists before the fork), so each one is as independent as a spawned
    process but does not pay the ~3 s of CPU for importing MLflow again.
    """
    db = tmp_path / "fresh" / "mlflow.db"
    uri = f"sqlite:///{db}"
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["mlflow", "mlflow.store.tracking.sqlalchemy_store", "fsmis.tracking"])
    barrier = ctx.Barrier(N_WORKERS)
    procs = [ctx.Process(target=_worker, args=(uri, i, barrier)) for i in range(N_WORKERS)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=180)
    assert [proc.exitcode for proc in procs] == [0] * N_WORKERS

    runs = tracking.search("race", uri=uri)
    assert len(runs) == N_WORKERS and set(runs["status"]) == {"FINISHED"}
    assert sorted(runs["params.worker"].astype(int)) == list(range(N_WORKERS))
    for run_id, worker in zip(runs["run_id"], runs["params.worker"].astype(int)):
        history = tracking.metric_history(run_id, "loss", uri=uri)
        assert list(history["step"]) == list(range(N_STEPS))
        assert list(history["value"]) == [worker * 1000.0 + s for s in range(N_STEPS)]
    assert len(_experiment_rows(db, "race")) == 1


def test_spooled_run_of_a_killed_job_is_stored_as_killed(store, tmp_path, monkeypatch):
    spool = tmp_path / "spool"
    monkeypatch.setenv("FSMIS_MLFLOW_SPOOL", str(spool))
    cm = tracking.job_run("train", "demo", params={"a": 1}, tags={"wildcards": {"fold": 3}})
    run = cm.__enter__()  # never exited: the process died mid-job
    run.log_metrics({"loss": 0.5}, step=10)
    with open(run.path, "a") as handle:
        handle.write('{"type": "metrics", "items": [["loss"')  # torn last line
    with pytest.raises(RuntimeError, match="boom"):
        with tracking.job_run("evaluate", "demo", params={}, tags={}):
            raise RuntimeError("boom")
    assert tracking.flush_spool(spool) == 2
    runs = tracking.search("demo").set_index("run_name")
    assert runs.loc["train:fold=3", "status"] == "KILLED"
    assert runs.loc["train:fold=3", "metrics.loss"] == 0.5
    assert "killed" in runs.loc["train:fold=3", "tags.error"]
    assert runs.loc["evaluate", "status"] == "FAILED" and "boom" in runs.loc["evaluate", "tags.error"]


def test_spool_record_that_cannot_be_stored_is_kept(tmp_path, monkeypatch, caplog):
    spool = tmp_path / "spool"
    monkeypatch.setenv("FSMIS_MLFLOW_SPOOL", str(spool))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'nodir' / 'x.db'}")
    with tracking.job_run("train", "demo", params={}, tags={}) as run:
        run.log_metrics({"loss": 1.0})
    (tmp_path / "nodir").write_text("a file where the store's folder should be")
    monkeypatch.setenv("FSMIS_TRACKING_STRICT", "0")
    with caplog.at_level(logging.WARNING, logger="fsmis.tracking"):
        assert tracking.flush_spool(spool) == 0
    assert "storing the recorded run" in caplog.text
    assert len(list(spool.glob("*.jsonl"))) == 1


def test_flatten_makes_keys_mlflow_accepts(store):
    flat = tracking.flatten({"groups": {"left_kidney+right_kidney": ["left_kidney", "right_kidney"]}})
    assert flat == {"groups.left_kidney_right_kidney": '["left_kidney", "right_kidney"]'}
    with tracking.job_run("evaluate", "demo", params={"groups": {"liver+spleen": ["liver"]}}, tags={}) as run:
        run.log_metrics({"oracle/mean_dice": 0.5})
    row = tracking.search("demo").iloc[0]
    assert row["params.groups.liver_spleen"] == '["liver"]' and row["status"] == "FINISHED"


def test_a_spooled_run_whose_logging_fails_is_stored_once_and_closed(store, tmp_path, monkeypatch):
    spool = tmp_path / "spool"
    monkeypatch.setenv("FSMIS_MLFLOW_SPOOL", str(spool))
    with tracking.job_run("evaluate", "demo", params={}, tags={}) as run:
        run.log_metrics({"oracle/mean_dice": 0.5})
        run._write({"type": "params", "items": {"bad+key": "1"}})  # refused by MLflow
    monkeypatch.setenv("FSMIS_TRACKING_STRICT", "0")
    assert tracking.flush_spool(spool) == 1
    assert tracking.flush_spool(spool) == 0  # nothing left to store again
    runs = tracking.search("demo")
    assert len(runs) == 1 and runs.iloc[0]["status"] == "FINISHED"
    assert runs.iloc[0]["metrics.oracle/mean_dice"] == 0.5


# ------------------------------------------------------------------ a server that does not answer


def test_bounded_http_bounds_mlflow_retries_unless_the_user_set_them(monkeypatch):
    for name in tracking.store.HTTP_BOUNDS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "300")  # the user's choice wins
    with tracking.store.bounded_http():
        from mlflow.environment_variables import (
            MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR,
            MLFLOW_HTTP_REQUEST_MAX_RETRIES,
            MLFLOW_HTTP_REQUEST_TIMEOUT,
        )

        assert MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == 2 and MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get() == 1
        assert MLFLOW_HTTP_REQUEST_TIMEOUT.get() == 300
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # jobs started later get MLflow's defaults
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300"


def _dead_server() -> str:
    """A URI on 127.0.0.1 where nothing listens (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_a_server_that_is_down_keeps_every_record_and_one_line_says_how_to_store_them(tmp_path, monkeypatch,
                                                                                       caplog):
    uri = _dead_server()
    spool = tmp_path / "spool"
    monkeypatch.setenv("FSMIS_MLFLOW_SPOOL", str(spool))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("FSMIS_TRACKING_STRICT", "0")
    for fold in range(3):
        with tracking.job_run("train", "demo", params={"a": fold}, tags={"wildcards": {"fold": fold}}) as run:
            run.log_metrics({"loss": 1.0})
    log_file = tmp_path / "snakemake.log"
    log_file.write_text("the invocation's log\n")
    tracking.spool.record_parent_end(spool, uri, "parent123", "FINISHED", 1234, log_file)
    log_file.write_text("changed afterwards\n")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="fsmis.tracking"):
        assert tracking.flush_spool(spool) == 0
    assert time.monotonic() - started < 15  # MLflow's own retries take ~4 min per request
    assert tracking.spool.waiting(spool) == 4
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("fsmis.tracking")]
    assert len(lines) == 1  # only the first record was tried: the line counts them all
    assert lines[0] == (
        f"MLflow tracking: the MLflow server {uri} could not be reached ([Errno 111] Connection refused); "
        f"3 job runs and the end of the parent run wait in {spool}. Nothing is lost: the next snakemake "
        f"invocation that runs a job stores them, or store them now with: python -m fsmis.tracking store-spool {spool}"
    )
    copies = list(spool.glob("*.files/snakemake.log"))  # taken when the end was recorded
    assert [c.read_text() for c in copies] == ["the invocation's log\n"]


def test_a_replay_cut_short_by_the_server_is_stored_once_on_the_retry(store, tmp_path, monkeypatch, caplog):
    import requests
    from mlflow import MlflowClient

    spool = tmp_path / "spool"
    monkeypatch.setenv("FSMIS_MLFLOW_SPOOL", str(spool))
    cm = tracking.job_run("train", "demo", params={"a": 1}, tags={"wildcards": {"fold": 0}})
    run = cm.__enter__()  # a killed job: no end, a torn last line
    run.log_metrics({"loss": 0.5}, step=3)
    with open(run.path, "a") as handle:
        handle.write('{"type": "metrics", "items": [["lo')
    real = MlflowClient.set_terminated

    def server_gone(self, *args, **kwargs):
        raise requests.exceptions.ConnectionError("[Errno 104] Connection reset by peer")

    monkeypatch.setattr(MlflowClient, "set_terminated", server_gone)
    monkeypatch.setenv("FSMIS_TRACKING_STRICT", "0")
    with caplog.at_level(logging.WARNING, logger="fsmis.tracking"):
        assert tracking.flush_spool(spool) == 0
    assert "could not be reached ([Errno 104] Connection reset by peer); 1 job run waits" in caplog.text
    lines = run.path.read_text().splitlines()
    assert json.loads(lines[-1])["type"] == "created"  # on its own line after the torn one
    partial = json.loads(lines[-1])["run_id"]

    monkeypatch.setattr(MlflowClient, "set_terminated", real)
    assert tracking.flush_spool(spool) == 1
    runs = tracking.search("demo")
    assert len(runs) == 1 and runs.iloc[0]["run_id"] != partial  # the partial run was deleted
    assert runs.iloc[0]["status"] == "KILLED" and runs.iloc[0]["metrics.loss"] == 0.5


def test_a_parent_end_the_store_refused_is_recorded_and_stored_later(store, tmp_path, monkeypatch):
    good = f"sqlite:///{store}"
    parent = tracking.start_parent("demo", {"x": 1})
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    bad = f"sqlite:///{blocker}/mlflow.db"
    spool = tmp_path / "spool"
    log_file = tmp_path / "snakemake.log"
    log_file.write_text("log\n")
    monkeypatch.setenv("FSMIS_TRACKING_STRICT", "0")
    tracking.end_parent(parent, "FAILED", uri=bad, log_file=log_file, spool=spool)
    assert tracking.spool.waiting(spool) == 1
    assert tracking.search("demo").iloc[0]["status"] == "RUNNING"
    # stored into another store than the one recorded (the CLI's --uri)
    assert tracking.flush_spool(spool, uri=good) == 1
    row = tracking.search("demo").iloc[0]
    assert row["run_id"] == parent and row["status"] == "FAILED"
    from mlflow import MlflowClient

    assert [a.path for a in MlflowClient(good).list_artifacts(parent, "snakemake")] == ["snakemake/snakemake.log"]


def test_store_spool_command(store, tmp_path, monkeypatch, capsys):
    from fsmis.tracking.__main__ import main

    assert main(["store-spool", str(tmp_path / "nowhere")]) == 2
    assert "spool folder" in capsys.readouterr().err
    spool = tmp_path / "spool"
    monkeypatch.setenv("FSMIS_MLFLOW_SPOOL", str(spool))
    with tracking.job_run("evaluate", "demo", params={}, tags={}) as run:
        run.log_metrics({"oracle/mean_dice": 0.25})
    assert main(["store-spool", str(spool), "--uri", "file:./mlruns"]) == 2
    assert "--uri" in capsys.readouterr().err
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the record names its store
    assert main(["store-spool", str(spool)]) == 0
    assert capsys.readouterr().out == f"stored 1 record(s) from {spool}; 0 still wait\n"
    assert tracking.search("demo", uri=f"sqlite:///{store}").iloc[0]["metrics.oracle/mean_dice"] == 0.25


def test_the_handlers_calls_give_up_on_a_dead_server_and_keep_the_parent_end(tmp_path, monkeypatch, caplog):
    # no retries here (the real bounds are timed above): only what each call does on failure
    monkeypatch.setattr(tracking.store, "HTTP_BOUNDS", {**tracking.store.HTTP_BOUNDS,
                                                        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    uri = _dead_server()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("FSMIS_TRACKING_STRICT", "0")
    spool = tmp_path / "spool"
    with caplog.at_level(logging.WARNING, logger="fsmis.tracking"):
        assert tracking.init_store("demo") is None
        assert tracking.start_parent("demo") is None
        tracking.end_parent("0123abcd", "FAILED", spool=spool)
    assert f"opening store {uri} failed ([Errno 111] Connection refused)" in caplog.text
    assert f"creating the parent run in {uri} failed ([Errno 111] Connection refused)" in caplog.text
    [record] = [json.loads(p.read_text()) for p in spool.glob("*.jsonl")]
    assert {k: record[k] for k in ("type", "uri", "run_id", "status", "log")} == {
        "type": "parent_end", "uri": uri, "run_id": "0123abcd", "status": "FAILED", "log": None}
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
