"""One GPU job per device (fsmis.devices), tested without a GPU: the lease logic only
sees device ids, so a faked device list (FSMIS_DEVICES) exercises it as real GPUs would.
Jobs are separate processes here, as in the workflow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, run_workflow, tiny_config

from fsmis import devices

# A job in miniature: lease a device as a job script does, report when it held it, hold it.
HOLDER = textwrap.dedent("""
    import json, os, sys, time
    from fsmis import devices
    start_at, hold = float(sys.argv[1]), float(sys.argv[2])
    time.sleep(max(0.0, start_at - time.time()))
    device = devices.lease_for_job()
    t0 = time.monotonic()
    time.sleep(hold)
    t1 = time.monotonic()
    print(json.dumps({"pid": os.getpid(), "device": device, "start": t0, "end": t1,
                      "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}))
""")

# Leases a device, optionally forks a worker that outlives it, says so, then sleeps.
SLEEPER = textwrap.dedent("""
    import os, sys, time
    from fsmis import devices
    device = devices.lease_for_job()
    worker = 0
    if sys.argv[1] == "fork":
        worker = os.fork()
        if worker == 0:
            time.sleep(60)
            os._exit(0)
    print(device, worker, flush=True)
    time.sleep(60)
""")


def job_env(lease_dir: Path, device_list: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", devices.FSMIS_DEVICE_WAIT)}
    env.update({devices.FSMIS_DEVICES: device_list, devices.FSMIS_LEASE_DIR: str(lease_dir),
                "PYTHONPATH": str(REPO / "src")})
    return env


@pytest.fixture
def fresh_job_lease(monkeypatch):
    """lease_for_job in this process without a lease left from another test."""
    monkeypatch.setattr(devices, "_JOB_LEASE", None)
    yield
    if devices._JOB_LEASE is not None:
        devices._JOB_LEASE.release()


# --- the lease -----------------------------------------------------------------------


def test_eight_jobs_on_four_devices_never_share_one_and_use_all(tmp_path):
    hold = 0.6
    start_at = time.time() + 1.5  # every process started and waiting before the first lease
    procs = [subprocess.Popen([sys.executable, "-c", HOLDER, str(start_at), str(hold)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=job_env(tmp_path, "0,1,2,3"))
             for _ in range(8)]
    records = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        records.append(json.loads(out))
    assert {r["device"] for r in records} == {"0", "1", "2", "3"}
    for r in records:  # each job sees only its own device
        assert r["cuda"] == r["device"]
    for device in "0123":
        spans = sorted((r["start"], r["end"]) for r in records if r["device"] == device)
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert start >= end, f"device {device} held by two jobs at once: {spans}"
    # 8 jobs, 4 devices: the second four waited for a device rather than doubling up
    starts = sorted(r["start"] for r in records)
    assert starts[4] - starts[0] >= hold * 0.9


@pytest.mark.parametrize("fork", [False, True], ids=["job", "job-with-forked-worker"])
def test_a_killed_job_frees_its_device_at_once(tmp_path, fork):
    proc = subprocess.Popen([sys.executable, "-c", SLEEPER, "fork" if fork else "no"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=job_env(tmp_path, "0,1"))
    worker = 0
    try:
        held, worker = proc.stdout.readline().split()
        worker = int(worker)
        assert held == "0"
        with devices.take(["0", "1"], tmp_path, timeout=0) as other:
            assert other.device == "1"  # device 0 is the job's
            with pytest.raises(devices.DeviceError, match=f"all 2 devices .*pid {proc.pid} "):
                devices.take(["0", "1"], tmp_path, timeout=0)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            t0 = time.monotonic()
            # a forked worker of the job is still alive and must not keep the device
            if fork:
                os.kill(worker, 0)
            with devices.take(["0", "1"], tmp_path, timeout=0) as freed:
                assert freed.device == "0"
            assert time.monotonic() - t0 < 0.5
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if worker:
            os.kill(worker, signal.SIGKILL)


def test_a_waiting_job_gets_the_first_device_released(tmp_path):
    first, second = devices.take(["a0", "a1"], tmp_path, timeout=0), None
    try:
        assert first.device == "a0"
        second = devices.take(["a0", "a1"], tmp_path, timeout=0)
        timer = threading.Timer(0.3, first.release)
        timer.start()
        t0 = time.monotonic()
        with devices.take(["a0", "a1"], tmp_path, timeout=10, poll=0.05) as third:
            waited = time.monotonic() - t0
        timer.join()
        assert third.device == "a0" and 0.2 < waited < 3
    finally:
        first.release()
        if second is not None:
            second.release()


def test_all_devices_taken_stops_after_the_wait_naming_the_holders(tmp_path):
    held = [devices.take(["0", "1"], tmp_path, timeout=0) for _ in range(2)]
    try:
        t0 = time.monotonic()
        with pytest.raises(devices.DeviceError) as err:
            devices.take(["0", "1"], tmp_path, timeout=0.4, poll=0.05)
        assert time.monotonic() - t0 >= 0.4
        message = str(err.value)
        assert f"all 2 devices (0,1) are leased in {tmp_path}" in message
        assert message.count(f"pid {os.getpid()} on ") == 2 and "FSMIS_DEVICE_WAIT" in message
    finally:
        for lease in held:
            lease.release()
    with devices.take(["0", "1"], tmp_path, timeout=0) as again:  # released: free again
        assert again.device == "0"


def test_one_or_no_device_takes_no_lock(tmp_path):
    assert devices.take(["3"], tmp_path / "leases", timeout=0).device == "3"
    assert devices.take([], tmp_path / "leases", timeout=0).device is None
    assert not (tmp_path / "leases").exists()


def test_job_lease_pins_the_job_to_its_device(tmp_path, fresh_job_lease):
    env = {devices.FSMIS_DEVICES: "4,5", devices.FSMIS_LEASE_DIR: str(tmp_path)}
    assert devices.lease_for_job(env) == "4"
    assert env["CUDA_VISIBLE_DEVICES"] == "4"
    assert devices.lease_for_job(env) == "4"  # one lease per process, held for its life
    assert (tmp_path / "device-4.lock").exists() and not (tmp_path / "device-5.lock").exists()


def test_job_lease_without_a_gpu(tmp_path, fresh_job_lease):
    env = {devices.FSMIS_DEVICES: "", devices.FSMIS_LEASE_DIR: str(tmp_path)}
    assert devices.lease_for_job(env) is None
    assert env["CUDA_VISIBLE_DEVICES"] == ""  # FSMIS_DEVICES= means the CPU, even on a GPU machine


def test_job_script_leases_only_for_gpu_jobs(tmp_path):
    """workflow/scripts/fsmis_job.start: a rule with `gpu` > 0 leases and hands the
    device to the stage (tracking["device_id"]); mask_transfer's evaluate (gpu=0) does not."""
    script = textwrap.dedent(f"""
        import json, os, sys, types
        sys.path.insert(0, {str(REPO / "workflow" / "scripts")!r})
        import fsmis_job
        out = {{}}
        for gpu in (1, 0):
            smk = types.SimpleNamespace(log=[f"job{{gpu}}.log"], rule="train", wildcards={{"fold": "0"}}, threads=1,
                                        config={{"experiment": "x"}}, resources={{"gpu": gpu}})
            out[gpu] = fsmis_job.start(smk).get("device_id")
        out["cuda"] = os.environ.get("CUDA_VISIBLE_DEVICES")
        open("out.json", "w").write(json.dumps(out))
    """)
    env = job_env(tmp_path / "leases", "6,7")
    env["FSMIS_CONFIG_HASH"] = "abc"
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "out.json").read_text()) == {"1": "6", "0": None, "cuda": "6"}
    assert "device 6" in (tmp_path / "job1.log").read_text()


# --- which devices are visible ---------------------------------------------------------


@pytest.mark.parametrize("env, expected", [
    ({"CUDA_VISIBLE_DEVICES": "2,3"}, ["2", "3"]),  # physical ids kept
    ({"CUDA_VISIBLE_DEVICES": " 1 , 0 "}, ["1", "0"]),
    ({"CUDA_VISIBLE_DEVICES": ""}, []),
    ({"CUDA_VISIBLE_DEVICES": "-1"}, []),
    ({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, []),
    ({"CUDA_VISIBLE_DEVICES": "0,-1,2"}, ["0"]),  # CUDA stops at the first invalid id
    ({"CUDA_VISIBLE_DEVICES": "0,1,0"}, ["0", "1"]),
    ({"CUDA_VISIBLE_DEVICES": "GPU-8e1c7a2b-aa,MIG-5f/1/0"}, ["GPU-8e1c7a2b-aa", "MIG-5f/1/0"]),
    ({"FSMIS_DEVICES": "0,1,2,3", "CUDA_VISIBLE_DEVICES": "5"}, ["0", "1", "2", "3"]),  # the override wins
    ({"FSMIS_DEVICES": "", "CUDA_VISIBLE_DEVICES": "5"}, []),
    ({"FSMIS_DEVICES": "1,"}, ["1"]),
])
def test_visible_devices(env, expected):
    assert devices.visible_devices(env) == expected


@pytest.mark.parametrize("text, problem", [("0,x", "'x' is not a device index"), ("0,0", "'0' is repeated"),
                                           ("-1", "'-1' is not a device index")])
def test_a_bad_override_is_named(text, problem):
    with pytest.raises(devices.DeviceError, match=f"FSMIS_DEVICES='{text}': {problem}"):
        devices.visible_devices({"FSMIS_DEVICES": text})


def test_without_a_list_every_gpu_of_the_machine(monkeypatch, tmp_path):
    fake = tmp_path / "nvidia-smi"  # what nvidia-smi -L prints on a 2-GPU machine with MIG on one
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-1)'\necho '  MIG 1g.10gb Device 0: (UUID: MIG-2)'\n"
                    "echo 'GPU 1: NVIDIA H100 (UUID: GPU-3)'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert devices.visible_devices({}) == ["0", "1"]
    fake.unlink()  # no nvidia-smi and no GPU device node: no GPU, and torch is not asked
    monkeypatch.setattr(devices, "GPU_DEVICE_NODES", (str(tmp_path / "nvidiactl"),))
    monkeypatch.setattr(devices.subprocess, "run", lambda *a, **k: pytest.fail("no process may be started"))
    assert devices.visible_devices({}) == []


@pytest.mark.parametrize("text, expected", [(None, 600.0), ("", 600.0), ("30", 30.0), ("0", 0.0)])
def test_wait_seconds(text, expected):
    assert devices.wait_seconds({} if text is None else {"FSMIS_DEVICE_WAIT": text}) == expected


@pytest.mark.parametrize("text", ["soon", "-5", "nan"])
def test_a_bad_wait_is_named(text):
    with pytest.raises(devices.DeviceError, match=f"FSMIS_DEVICE_WAIT='{text}': expected a number of seconds"):
        devices.wait_seconds({"FSMIS_DEVICE_WAIT": text})


def test_lease_folder_is_node_local_and_per_user():
    assert devices.lease_dir({}) == Path(f"/tmp/fsmis-leases-{os.getuid()}")
    assert devices.lease_dir({"FSMIS_LEASE_DIR": "/x/y", "TMPDIR": "/job/tmp"}) == Path("/x/y")


# --- the workflow's gpu limit ----------------------------------------------------------


def test_gpu_limit_is_the_device_count_on_a_local_run_only(monkeypatch):
    monkeypatch.setenv("FSMIS_DEVICES", "0,1,2,3")
    assert devices.local_gpu_limit(True, 8, None) == 4  # --cores 8 (or -j 8, read as --cores)
    assert devices.local_gpu_limit(True, 8, 8) == 4  # --cores 8 --jobs 8 locally
    assert devices.local_gpu_limit(True, None, 50) == 0  # --jobs 50 for a cluster executor
    assert devices.local_gpu_limit(False, 8, None) == 0  # a cluster job parsing the workflow
    monkeypatch.setenv("FSMIS_DEVICES", "")
    assert devices.local_gpu_limit(True, 8, None) == 0  # CPU only: no limit


@pytest.mark.slow
def test_workflow_limits_gpu_jobs_to_the_visible_devices(tmp_path):
    """The limit common.smk sets at parse time (its line reports the resource's value;
    a parse is enough, no dry-run needed), and --resources overriding it."""
    env = {"FSMIS_DEVICES": "0,1,2,3"}
    listing = run_workflow(tmp_path, "--list-rules", config=tiny_config(), env=env)
    assert listing.returncode == 0, listing.stderr
    output = listing.stdout + listing.stderr
    assert "4 GPU(s) visible: at most 4 GPU jobs at once" in output
    fewer = run_workflow(tmp_path, "--list-rules", "--resources", "gpu=2", config=tiny_config(), env=env)
    assert "4 GPU(s) visible: at most 2 GPU jobs at once" in fewer.stdout + fewer.stderr
