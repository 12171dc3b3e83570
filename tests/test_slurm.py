"""The SLURM profiles, and a tiny experiment on a real single-node SLURM cluster.

Fast: the slurm and slurm-cpu profiles differ only in the GPU requests and partitions,
the entries a user fills in are marked, the grouped rules exist. Slow: a cluster on
127.0.0.1 (tests/slurm_cluster.py: slurmctld + slurmd, two fake GPUs, partitions
``cpu`` and ``gpu``) runs the tiny experiment with workflow/profiles/slurm, filled in for
that cluster; the controller's records show that every non-local job ran as a SLURM
job with the resources the profile asks for, that GPU jobs asked for a GPU and at most
two ran at once, and the report and the MLflow store are complete; one model trained
with workflow/profiles/slurm-cpu asks for no GPU. Skipped, with the reason, only where
the machine cannot install SLURM or the executor plugin, or runs a SLURM of its own.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from conftest import job_counts, run_workflow, tiny_config
from slurm_cluster import ClusterUnavailable, SlurmCluster, install_executor_plugin, plugin_pins

REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "workflow" / "profiles"

# Settings 1 and 2: three training jobs (one model in setting 1, one per label group in
# setting 2) become ready together, one more than the cluster's two GPUs. 3 cases in 3
# folds, the fewest that split (fold 0 tests one case).
TINY = tiny_config(dataset={"name": "phantom", "n_cases": 3}, settings=["1", "2"])
# rules that never reach SLURM (the Snakefile's localrules)
LOCAL_RULES = {"all", "splits", "case_table"}
GPU_RULES = {"train", "evaluate"}
DATA_GROUP = {"generate_phantom", "canonical", "preprocess", "classmap", "superpixels"}


def load_profile(name: str) -> dict:
    return yaml.safe_load((PROFILES / name / "profile.yaml").read_text(encoding="utf-8"))


def change_me_entries(profile: dict, prefix: str = "") -> set[str]:
    """Dotted keys whose value is the CHANGE_ME placeholder."""
    found = set()
    for key, value in profile.items():
        if isinstance(value, dict):
            found |= change_me_entries(value, f"{prefix}{key}.")
        elif value == "CHANGE_ME":
            found.add(f"{prefix}{key}")
    return found


# --- the profiles (fast) ---------------------------------------------------------------


def test_slurm_profile_marks_what_a_user_fills_in():
    slurm = load_profile("slurm")
    assert slurm["executor"] == "slurm"
    assert change_me_entries(slurm) == {
        "default-resources.slurm_account",
        "default-resources.slurm_partition",
        "set-resources.train.slurm_partition",
        "set-resources.evaluate.slurm_partition",
    }
    # docs/cluster.md: squeue works with or without slurmdbd
    assert slurm["slurm-status-command"] == "squeue"
    # the local limits of common.smk (torch jobs per CPU, GPU jobs per visible GPU of the
    # submitting machine) must not throttle the cluster
    assert slurm["resources"]["cpu_jobs"] >= slurm["jobs"]
    assert slurm["resources"]["gpu"] >= slurm["jobs"]
    assert "gres" not in str(slurm)  # GPUs through the `gpu` resource only (--gpus)


def test_cpu_profile_differs_only_in_the_gpu_requests_and_partitions():
    slurm, cpu = load_profile("slurm"), load_profile("slurm-cpu")
    for rule in GPU_RULES:
        assert cpu["set-resources"][rule]["gpu"] == 0
        assert "slurm_partition" not in cpu["set-resources"][rule]  # the default (CPU) partition
        slurm_rule = dict(slurm["set-resources"][rule])
        slurm_rule.pop("slurm_partition")
        slurm_rule.pop("gpu", None)
        cpu_rule = dict(cpu["set-resources"][rule])
        cpu_rule.pop("gpu")
        assert cpu_rule == slurm_rule, rule
    rest = {k: v for k, v in slurm.items() if k != "set-resources"}
    assert {k: v for k, v in cpu.items() if k != "set-resources"} == rest
    others = {r: v for r, v in slurm["set-resources"].items() if r not in GPU_RULES}
    assert {r: v for r, v in cpu["set-resources"].items() if r not in GPU_RULES} == others


def test_grouped_rules_exist_and_are_not_local():
    rules = set()
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        rules |= set(re.findall(r"^\s*(?:rule|checkpoint) (\w+):", smk.read_text(encoding="utf-8"), re.M))
    local = re.search(r"^localrules:\n((?:\s+\w+,?\n)+)", (REPO / "Snakefile").read_text(encoding="utf-8"), re.M)
    assert set(re.findall(r"\w+", local[1])) == LOCAL_RULES
    for name in ("slurm", "slurm-cpu"):
        profile = load_profile(name)
        assert set(profile["groups"]) == DATA_GROUP, name
        assert DATA_GROUP <= rules
        assert not DATA_GROUP & LOCAL_RULES
        assert set(profile["groups"].values()) == set(profile["group-components"]) == {"data"}
        # the plugin runs a group's jobs one after another: one `serial` slot per group
        # job makes Snakemake size the group's SLURM job for one data job at a time
        assert profile["resources"]["serial"] == 1 and profile["set-resource-scopes"] == {"serial": "local"}
        assert all(profile["set-resources"][rule]["serial"] == 1 for rule in DATA_GROUP), name


def test_executor_plugin_is_pinned_with_the_rest():
    # the profiles use the plugin's options (slurm-status-command): it belongs in the
    # environment that parses them, envs/requirements.txt (written for 2.8)
    pins = plugin_pins()
    assert pins["snakemake-executor-plugin-slurm"].startswith("2.8.")


# --- the cluster (slow) ----------------------------------------------------------------


def for_test_cluster(profile: dict, gpu_partition: str) -> dict:
    """``profile`` filled in for the test cluster and sized for a 2-core machine; the
    rest (groups and their serial slot, status command, GPU requests, runtimes, the
    lifted local limits) as written."""
    p = yaml.safe_load(yaml.safe_dump(profile))
    # no accounting here: the plugin checks a given account with sacctmgr/sshare
    p["default-resources"].pop("slurm_account")
    p["default-resources"]["slurm_partition"] = "cpu"
    p["default-resources"]["mem_mb"] = 1000
    for rule in GPU_RULES:
        p["set-resources"][rule]["slurm_partition"] = gpu_partition
        p["set-resources"][rule]["mem_mb"] = 1500
    p["set-threads"] = {rule: 1 for rule in p["set-threads"]}
    # fail fast and poll often: minutes matter in a test, not on a cluster
    p.update({"retries": 0, "keep-going": False, "latency-wait": 5, "seconds-between-status-checks": 1,
              "slurm-init-seconds-before-status-checks": 1})
    return p


def write_profile(folder: Path, profile: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "profile.yaml").write_text(yaml.safe_dump(profile, sort_keys=False), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def cluster():
    # two fake GPUs and at least 4 CPUs (bookkeeping only): on a 2-core machine the
    # CPUs would otherwise hold back the third GPU job as well, and the test could not
    # tell that SLURM enforces the GPU count
    node = SlurmCluster(cpus=max(os.cpu_count() or 1, 4), gpus=2)
    try:
        install_executor_plugin()
        node.__enter__()
    except ClusterUnavailable as err:
        pytest.skip(f"no SLURM test cluster on this machine: {err}")
    try:
        yield node
    finally:
        node.__exit__(None, None, None)


@pytest.fixture(scope="module")
def run(cluster, tmp_path_factory):
    wd = tmp_path_factory.mktemp("slurm")
    profile = for_test_cluster(load_profile("slurm"), gpu_partition="gpu")
    folder = write_profile(wd / "profile-slurm", profile)
    started = time.monotonic()
    # the later --workflow-profile replaces run_workflow's `none`
    result = run_workflow(wd, "--workflow-profile", str(folder), config=TINY,
                          env={"SLURM_CONF": cluster.env["SLURM_CONF"]})
    seconds = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:] + "\nslurmctld:\n" + cluster.log("slurmctld")
    print(f"tiny experiment on the SLURM test cluster: {seconds:.0f} s")
    run_id = re.search(r"SLURM run ID: (\S+)", output)[1]
    jobs = [j for j in cluster.jobs() if j["JobName"] == run_id]
    # the controller's records beside the run, for a look after a failed assertion
    (wd / "slurm_jobs.json").write_text(json.dumps(jobs, indent=1), encoding="utf-8")
    return {"wd": wd, "output": output, "profile": profile, "jobs": jobs, "seconds": seconds}


def rule_of(job: dict) -> str:
    """The rule (or the group, for a group job) from the comment the plugin gives a job:
    rule_<name>[_wildcards_<values>]."""
    name = job["Comment"].removeprefix("rule_").split("_wildcards_")[0]
    return "data" if name.startswith("data_") else name


def minutes(limit: str) -> int:
    days, _, hms = limit.rpartition("-")
    h, m, s = (int(x) for x in hms.split(":"))
    return int(days or 0) * 1440 + h * 60 + m + (s > 0)


def megabytes(memory: str) -> int:
    value, unit = float(memory[:-1]), memory[-1]
    return round(value * {"M": 1, "G": 1024, "T": 1024 * 1024}[unit])


def at(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


@pytest.mark.slow
def test_report_exists(run):
    report = run["wd"] / "results" / "tiny" / "report"
    for name in ("dice_setting1_oracle.csv", "dice_setting2_oracle.csv", "dice_setting1_oracle.md"):
        assert (report / name).stat().st_size > 0, name


@pytest.mark.slow
def test_every_job_ran_as_a_slurm_job_with_the_profile_resources(run):
    profile, jobs = run["profile"], run["jobs"]
    planned = job_counts(run["output"])
    grouped = {rule: n for rule, n in planned.items() if rule in DATA_GROUP}
    assert sum(grouped.values()) == 11  # phantom, 3 x (canonical, preprocess, superpixels), classmap
    # one SLURM job per non-local job, except the data jobs: all in one
    expected = {rule: n for rule, n in planned.items() if rule not in LOCAL_RULES | DATA_GROUP}
    expected["data"] = 1
    seen = {}
    for job in jobs:
        seen[rule_of(job)] = seen.get(rule_of(job), 0) + 1
    assert seen == expected == {"data": 1, "train": 3, "evaluate": 2, "report": 1}
    for job in jobs:
        rule = rule_of(job)
        assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), job
        asked = {**profile["default-resources"], **profile["set-resources"].get(rule, {})}
        assert job["Partition"] == asked["slurm_partition"], (rule, job["Partition"])
        if rule == "data":
            # one data job at a time: the largest CPUs and memory, the sum of the runtimes
            per_job = {r: {**profile["default-resources"], **profile["set-resources"][r]} for r in DATA_GROUP}
            assert int(job["NumCPUs"]) == max(profile["set-threads"].get(r, 1) for r in DATA_GROUP)
            assert megabytes(job["MinMemoryNode"]) == max(r["mem_mb"] for r in per_job.values())
            assert minutes(job["TimeLimit"]) == sum(n * per_job[r]["runtime"] for r, n in grouped.items())
            continue
        assert int(job["NumCPUs"]) == profile["set-threads"].get(rule, 1), rule
        assert megabytes(job["MinMemoryNode"]) == asked["mem_mb"], rule
        assert minutes(job["TimeLimit"]) == asked["runtime"], rule
        assert (job.get("TresPerJob") == "gres:gpu:1") == (rule in GPU_RULES), (rule, job.get("TresPerJob"))


@pytest.mark.slow
def test_gpu_jobs_never_exceeded_the_two_gpus(run):
    gpu_jobs = [j for j in run["jobs"] if j.get("TresPerJob") == "gres:gpu:1"]
    assert len(gpu_jobs) == 5  # 3 train, 2 evaluate
    spans = [(at(j["StartTime"]), at(j["EndTime"])) for j in gpu_jobs]

    def running_at(t, jobs):
        return [j for j in jobs if at(j["StartTime"]) <= t < at(j["EndTime"])]

    most = max(len(running_at(start, gpu_jobs)) for start, _ in spans)
    # never more than the two GPUs; that a job also *waited* for one depends on how fast
    # Snakemake submits on a loaded machine, so it is not asserted (it failed once in CI
    # with every GPU job starting a second after submission)
    assert 1 <= most <= 2, "at most the two GPUs in use at once"


@pytest.mark.slow
def test_mlflow_holds_every_run(run):
    db = run["wd"] / "results" / "mlflow" / "mlflow.db"
    con = sqlite3.connect(db)
    tags = con.execute("select run_uuid, key, value from tags").fetchall()
    parents = {v for _, k, v in tags if k == "mlflow.parentRunId"}
    assert len(parents) == 1
    children = {r for r, k, _ in tags if k == "mlflow.parentRunId"}
    stages = {v for _, k, v in tags if k == "stage"}
    assert {"fetch", "canonical", "preprocess", "superpixels", "splits", "train", "evaluate", "report"} <= stages
    # 1 fetch + 3 canonical + 3 preprocess + 1 classmap + 3 superpixels + 1 splits
    # + 3 train + 2 evaluate + 1 report: the jobs that ran on the node recorded theirs too
    assert len(children) == 18
    status = dict(con.execute("select run_uuid, status from runs").fetchall())
    assert set(status.values()) == {"FINISHED"}
    keys = {k for (k,) in con.execute("select distinct key from metrics")}
    assert {"loss", "oracle/mean_dice"} <= keys
    assert not list((run["wd"] / "results" / "mlflow" / "spool").glob("*.jsonl"))


@pytest.mark.slow
def test_cpu_profile_trains_without_asking_for_a_gpu(run, cluster):
    profile = for_test_cluster(load_profile("slurm-cpu"), gpu_partition="cpu")
    for rule in GPU_RULES:  # no GPU partition in this profile: the default one
        profile["set-resources"][rule].pop("slurm_partition")
    folder = write_profile(run["wd"] / "profile-slurm-cpu", profile)
    model = "results/tiny/ssl_alpnet/setting1/seed1234/fold0/all/model.pt"
    before = {j["JobId"] for j in cluster.jobs()}
    result = run_workflow(run["wd"], model, "--forcerun", "train", "--workflow-profile", str(folder), config=TINY,
                          env={"SLURM_CONF": cluster.env["SLURM_CONF"]})
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    new = [j for j in cluster.jobs() if j["JobId"] not in before]
    assert [rule_of(j) for j in new] == ["train"]
    assert new[0]["Partition"] == "cpu" and "TresPerJob" not in new[0]
    assert new[0]["JobState"] == "COMPLETED"
