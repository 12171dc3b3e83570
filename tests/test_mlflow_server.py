"""The workflow against a real ``mlflow server`` (SQLite backend, artifacts served by it).

One server on 127.0.0.1 (a free port, files in a temporary folder) for the module:
a tiny experiment (3 phantom cases, fold 0, SSL-ALPNet and mask transfer, 2 steps, two
jobs at a time) stores every job's run through it; jobs logging live from parallel
processes lose nothing; and a server stopped in the middle of an invocation loses no
run: the runs wait in the spool, the output says so, and the command it names stores
them once the server is back.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest
from conftest import run_workflow, tiny_config

from fsmis import tracking

pytestmark = pytest.mark.slow

MLFLOW = Path(sys.executable).with_name("mlflow")
CONFIG = tiny_config(
    dataset={"name": "phantom", "n_cases": 3},  # the fewest that make a fold
    baselines=["mask_transfer"],
    train={"steps": 2, "checkpoint_every": 2, "log_every": 1},
)
FOLD = "results/tiny/{method}/setting1/seed1234/fold0"
CASES = ("phantom_000", "phantom_001", "phantom_002")
TRAIN = "train:exp=tiny,fold=0,group=all,method=ssl_alpnet,seed=1234,setting=1"
EVALUATE = "evaluate:exp=tiny,fold=0,method={method},seed=1234,setting=1"
# one run per job: 1 fetch, per case canonical, preprocess and superpixels, 1 classmap,
# 1 splits, 1 train (mask transfer trains nothing), 2 evaluate, 1 report
JOB_RUNS = {
    "fetch", "classmap:ds=phantom", "splits:exp=tiny", TRAIN, "report",
    *(f"{stage}:case={case},ds=phantom" for stage in ("canonical", "preprocess", "superpixels") for case in CASES),
    *(EVALUATE.format(method=method) for method in ("ssl_alpnet", "mask_transfer")),
}
# what `--forcerun train` runs again (mask transfer's evaluation does not depend on it)
RERUN = {TRAIN, EVALUATE.format(method="ssl_alpnet"), "report"}
ENV = {"MLFLOW_DISABLE_TELEMETRY": "true"}
N_LIVE = 4
LIVE_STEPS = 20


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class MlflowServer:
    """``mlflow server`` in its own process group; start() waits until /health answers."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = folder / "server.log"

    def start(self, timeout: float = 240.0) -> None:
        cmd = [str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
               "--artifacts-destination", str(self.folder / "artifacts")]
        # no job-runner process: this server only tracks
        env = {**os.environ, **ENV, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"mlflow server exited with {self.proc.returncode}:\n{self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        raise AssertionError(f"mlflow server did not answer on {self.uri} within {timeout:.0f} s:\n{self._log_tail()}")

    def stop(self) -> None:
        """Stop the whole process group (the CLI and its uvicorn worker); wait until the port is free."""
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and (self.proc.poll() is None or _listening(self.port)):
                time.sleep(0.1)
            if self.proc.poll() is not None and not _listening(self.port):
                break
        self.proc = None

    def _log_tail(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-3000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow_server")
    srv = MlflowServer(folder)
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def client(server):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=server.uri)


@pytest.fixture(scope="module")
def first_run(server, tmp_path_factory):
    wd = tmp_path_factory.mktemp("server_run")
    result = run_workflow(wd, "--cores", "2", config=CONFIG, env={**ENV, "MLFLOW_TRACKING_URI": server.uri})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return wd, result.stdout + result.stderr


def _runs(client, experiment: str = "tiny") -> list:
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} on the server"
    return client.search_runs([found.experiment_id], max_results=1000)


def _mean_dice(wd: Path, method: str) -> float:
    metrics = json.loads((wd / FOLD.format(method=method) / "metrics.json").read_text(encoding="utf-8"))
    return metrics["protocols"]["oracle"]["mean_dice"]


def _check_children(client, wd: Path, children: dict, parent_id: str) -> None:
    """Every run in ``children`` (name -> run): a finished child of ``parent_id`` with the
    job's params and metrics, evaluation metrics equal to the job's metrics.json."""
    for name, run in children.items():
        assert run.info.status == "FINISHED", name
        assert run.data.tags["mlflow.parentRunId"] == parent_id, name
        assert run.data.params, name
        assert run.data.metrics or name == "report", name  # the report job logs its files only
    if TRAIN in children:
        train = children[TRAIN]
        assert train.data.params["train.steps"] == "2" and train.data.params["method"] == "ssl_alpnet"
        loss = client.get_metric_history(train.info.run_id, "loss")
        assert sorted(m.step for m in loss) == [1, 2]
    for method in ("ssl_alpnet", "mask_transfer"):
        name = EVALUATE.format(method=method)
        if name in children:
            assert children[name].data.metrics["oracle/mean_dice"] == pytest.approx(_mean_dice(wd, method))


def test_every_job_run_reaches_the_server_with_params_metrics_and_parent(first_run, server, client, tmp_path):
    wd, output = first_run
    # the end of the run points at the server, and MLflow printed no URL per stored run
    assert f"MLflow runs: open {server.uri} (experiment tiny)" in output
    assert "View run" not in output and "MLflow tracking:" not in output
    runs = _runs(client)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.tags["stage"] == "workflow" and parent.info.status == "FINISHED"
    children = {r.info.run_name: r for r in runs if r is not parent}
    assert len(children) == len(runs) - 1  # one run per job name: nothing stored twice
    assert set(children) == JOB_RUNS
    _check_children(client, wd, children, parent.info.run_id)
    assert {r.data.tags["config_hash"] for r in runs} == {parent.data.tags["config_hash"]}
    # artifacts travel through the server both ways: the report's table as the job wrote it
    report = children["report"].info.run_id
    table = client.download_artifacts(report, "dice_setting1_oracle.csv", str(tmp_path))
    assert Path(table).read_bytes() == (wd / "results/tiny/report/dice_setting1_oracle.csv").read_bytes()
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "snakemake")]
    assert not list((wd / "results/mlflow/spool").glob("*.jsonl"))


def _live_worker(uri: str, index: int, barrier) -> None:
    from fsmis import tracking as t

    barrier.wait(timeout=120)  # all at once, on an experiment the server does not have yet
    with t.job_run("train", "live", params={"worker": index}, tags={"wildcards": {"fold": index}}, uri=uri,
                   strict=True) as run:
        for step in range(LIVE_STEPS):
            run.log_metrics({"loss": float(index * 1000 + step)}, step=step)


def test_parallel_jobs_logging_live_lose_nothing(server, client):
    """FSMIS_MLFLOW_LIVE's path: several processes create the experiment and log at once."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["mlflow", "fsmis.tracking"])
    barrier = ctx.Barrier(N_LIVE)
    procs = [ctx.Process(target=_live_worker, args=(server.uri, i, barrier)) for i in range(N_LIVE)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=180)
    assert [proc.exitcode for proc in procs] == [0] * N_LIVE
    runs = _runs(client, "live")
    assert sorted(int(r.data.params["worker"]) for r in runs) == list(range(N_LIVE))
    for run in runs:
        worker = int(run.data.params["worker"])
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss"))
        assert history == [(s, worker * 1000.0 + s) for s in range(LIVE_STEPS)]
    assert [e.name for e in client.search_experiments(filter_string="name = 'live'")] == ["live"]


def _last_timestamp(output: str) -> datetime:
    stamps = [line.strip()[1:-1] for line in output.splitlines() if line.startswith("[") and line.strip().endswith("]")]
    for stamp in reversed(stamps):
        try:
            return datetime.strptime(stamp, "%a %b %d %H:%M:%S %Y")
        except ValueError:
            continue
    raise AssertionError(f"no job timestamp in the output:\n{output[-3000:]}")


def test_a_server_outage_loses_no_run_and_says_how_to_store_it(first_run, server, client):
    wd, _ = first_run
    spool = wd / "results/mlflow/spool"
    before = {r.info.run_id for r in _runs(client)}
    result = {}

    def invoke():
        result["run"] = run_workflow(wd, "--cores", "2", "--forcerun", "train", config=wd / "tiny.yaml",
                                     env={**ENV, "MLFLOW_TRACKING_URI": server.uri})
        result["ended"] = datetime.now()

    worker = threading.Thread(target=invoke)
    worker.start()
    try:
        # the train job has started (its record is in the spool): the server goes away
        while worker.is_alive() and not list(spool.glob("*.jsonl")):
            time.sleep(0.1)
        assert worker.is_alive(), "the invocation ended before its first job started"
        server.stop()
    finally:
        worker.join(timeout=600)
    out = result["run"].stdout + result["run"].stderr
    assert result["run"].returncode == 0, out[-6000:]

    # nothing stored, nothing lost, and the user told where it waits and how to store it
    assert tracking.spool.waiting(spool) == len(RERUN) + 1  # the job runs and the parent's end
    line = next((li for li in out.splitlines() if "MLflow tracking:" in li and server.uri in li), None)
    assert line is not None, out[-6000:]
    assert "could not be reached" in line and "Connection refused" in line
    assert f"{len(RERUN)} job runs and the end of the parent run wait in {spool}" in line
    assert f"python -m fsmis.tracking store-spool {spool}" in line
    # the end-of-run store gave up in seconds (MLflow's default retries take ~4 min a request)
    store_seconds = (result["ended"] - _last_timestamp(out)).total_seconds()
    assert store_seconds < 60, f"the end-of-run store took {store_seconds:.0f} s"

    back = time.time() * 1000
    server.start()
    command = line.split("or store them now with: ", 1)[1].split()
    assert command[:3] == ["python", "-m", "fsmis.tracking"]
    stored = subprocess.run([sys.executable, *command[1:]], capture_output=True, text=True, timeout=300,
                            env={**os.environ, **ENV})
    assert stored.returncode == 0, stored.stdout + stored.stderr
    assert stored.stdout == f"stored {len(RERUN) + 1} record(s) from {spool}; 0 still wait\n"
    assert tracking.spool.waiting(spool) == 0 and not list(spool.iterdir())

    new = [r for r in _runs(client) if r.info.run_id not in before]
    parents = [r for r in new if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].info.end_time < back  # when the invocation ended, not when it was stored
    assert [a.path for a in client.list_artifacts(parents[0].info.run_id, "snakemake")]
    children = {r.info.run_name: r for r in new if r is not parents[0]}
    assert len(children) == len(new) - 1 and set(children) == RERUN
    _check_children(client, wd, children, parents[0].info.run_id)
