"""A single-node SLURM cluster on 127.0.0.1 for the tests (tests/test_slurm.py).

``with SlurmCluster() as cluster:`` installs Debian's ``slurm-wlm`` and ``munge`` with
apt when the daemons are missing, starts munged (unless one runs), writes a
configuration for one node on 127.0.0.1 and starts slurmctld and slurmd; on leaving,
every job is cancelled, every daemon it started is stopped (by the process id it
recorded) and /etc/slurm holds again exactly what it held before. ``ClusterUnavailable``
(raised before anything is changed) says why a cluster cannot be had here: no root, no
apt, packages that do not install, a SLURM installation already configured.
``install_executor_plugin()`` puts the executor plugin, at the versions pinned in
envs/requirements.txt, into this Python's environment when it is missing there.

The node: the machine's CPUs (or more, ``cpus``: bookkeeping only, nothing binds a
job to a CPU), its memory, two fake GPUs (``Gres=gpu:2``, two plain files) and two
partitions, ``cpu`` (the default) and ``gpu``. The choices that make it start in
seconds on a bare machine or container: ``proctrack/linuxproc`` and ``task/none`` (no
cgroups, so no cgroup.conf is needed), ``select/cons_tres`` (per-job ``--gpus``), no
accounting (no slurmdbd; ``sacct`` answers "accounting storage is disabled", so
clients must use ``squeue``), ``MinJobAge`` of an hour so that the controller still
describes every finished job (``jobs()``) when the test checks them.

The jobs' own ``srun`` reads the default configuration path whatever ``SLURM_CONF`` the
submitter exports, so the configuration is written to /etc/slurm/slurm.conf (and
gres.conf); what was there is kept in the state folder (/var/tmp/fsmis-slurm-test,
which also holds the daemons' logs of the last cluster) and put back, also after a run
that was killed (the next start restores it first). One cluster at a time per machine
(a lock in the state folder); ports are free ones picked at start.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REQUIREMENTS = REPO / "envs" / "requirements.txt"
# the SLURM executor plugin and what it needs beyond snakemake (pinned in REQUIREMENTS)
PLUGIN = ("snakemake-executor-plugin-slurm", "snakemake-executor-plugin-slurm-jobstep", "throttler")

ETC = Path("/etc/slurm")
CONFIG_FILES = ("slurm.conf", "gres.conf")
MARKER = "# fsmis test cluster (tests/slurm_cluster.py): removed when the test ends"
STATE = Path("/var/tmp/fsmis-slurm-test")
COMMANDS = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "munged", "munge")
PACKAGES = ("slurm-wlm", "munge")
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")


class ClusterUnavailable(RuntimeError):
    """This machine cannot run the test cluster; the message says why."""


def _run(cmd, timeout=60, check=True, env=None) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return result


def install_packages() -> None:
    """slurm-wlm and munge from the distribution's archive when a daemon or client is
    missing; ClusterUnavailable where that cannot be done."""
    missing = [name for name in COMMANDS if shutil.which(name) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        raise ClusterUnavailable(f"SLURM is not installed ({', '.join(missing)} missing) and installing "
                                 "slurm-wlm and munge needs root")
    if shutil.which("apt-get") is None:
        raise ClusterUnavailable(f"SLURM is not installed ({', '.join(missing)} missing) and there is no apt-get "
                                 "to install slurm-wlm and munge")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    result = subprocess.run(install, capture_output=True, text=True, timeout=900, env=env)
    if result.returncode != 0:  # stale or empty package lists: refresh once
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, timeout=600, env=env)
        result = subprocess.run(install, capture_output=True, text=True, timeout=900, env=env)
    still = [name for name in COMMANDS if shutil.which(name) is None]
    if result.returncode != 0 or still:
        raise ClusterUnavailable(f"apt-get could not install {' '.join(PACKAGES)}: "
                                 f"{(result.stderr or result.stdout).strip()[-500:]}")


def plugin_pins(path: Path = REQUIREMENTS) -> dict[str, str]:
    """{distribution: version} of the executor plugin's ``name==version`` lines in
    envs/requirements.txt; ValueError naming the file when one is missing."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        name, sep, version = line.split("#", 1)[0].strip().partition("==")
        if sep and name.strip().lower() in PLUGIN:
            pins[name.strip().lower()] = version.strip()
    missing = [name for name in PLUGIN if name not in pins]
    if missing:
        raise ValueError(f"{path} pins no {', '.join(missing)} (name==version)")
    return pins


def install_executor_plugin() -> dict[str, str]:
    """The pinned SLURM executor plugin in this Python's environment: pip installs the
    pins of envs/requirements.txt where a package is missing or another version (a
    venv made before the pins were added). Returns the pins."""
    from importlib import metadata

    pins = plugin_pins()

    def installed(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    if all(installed(n) == v for n, v in pins.items()):
        return pins
    result = subprocess.run([sys.executable, "-m", "pip", "install", "-q", *(f"{n}=={v}" for n, v in pins.items())],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise ClusterUnavailable(f"pip could not install {', '.join(pins)}: {result.stderr.strip()[-500:]}")
    return pins


def machine_resources() -> tuple[int, int]:
    """(CPUs, memory in MB) of this machine as slurmd sees them (``slurmd -C``)."""
    text = _run(["slurmd", "-C"]).stdout
    cpus = int(re.search(r"\bCPUs=(\d+)", text)[1])
    memory = int(re.search(r"\bRealMemory=(\d+)", text)[1])
    return cpus, memory


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int, name: str) -> bool:
    """Whether process ``pid`` runs and is ``name`` (a recorded id may have been reused;
    a zombie has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    comm, state = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()[0]
    return comm == name[:15] and state != "Z"


def _stop(pid: int, name: str, timeout: float = 15.0) -> None:
    if not _alive(pid, name):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid, name):
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def _munge_works() -> bool:
    if shutil.which("munge") is None:
        return False
    encode = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
    if encode.returncode != 0:
        return False
    return subprocess.run(["unmunge"], input=encode.stdout, capture_output=True, timeout=10).returncode == 0


class SlurmCluster:
    """One slurmctld and one slurmd on 127.0.0.1 (module docstring). ``cpus``: CPUs the
    node declares (default: the machine's); ``gpus``: fake GPUs; ``min_job_age``:
    seconds the controller keeps a finished job."""

    def __init__(self, cpus: int | None = None, gpus: int = 2, min_job_age: int = 3600, start_timeout: float = 60):
        self.cpus_wanted = cpus
        self.gpus = gpus
        self.min_job_age = min_job_age
        self.start_timeout = start_timeout
        self.state = STATE
        self.node = "fsmis-node"
        self.partitions = ("cpu", "gpu")
        self._lock = None
        self._restore = False
        self._pids: dict[str, int] = {}
        self.env = {**os.environ, "SLURM_CONF": str(ETC / "slurm.conf")}

    # --- set-up --------------------------------------------------------------------

    def __enter__(self) -> SlurmCluster:
        install_packages()
        self.state.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.state / "lock", "w")  # noqa: SIM115 (held until __exit__)
        deadline = time.monotonic() + 1800  # another test's cluster runs at most that long
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ClusterUnavailable(f"another test cluster holds {self.state / 'lock'}") from None
                time.sleep(1)
        try:
            self._clean_up_after_a_killed_run()
            self._check_no_foreign_installation()
            self._start()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def _clean_up_after_a_killed_run(self) -> None:
        """Daemons recorded by a run that never reached __exit__ are stopped, and the
        configuration it replaced is put back."""
        pids = self.state / "pids.json"
        if pids.exists():
            for name, pid in json.loads(pids.read_text()).items():
                _stop(pid, name)
            pids.unlink()
        if (self.state / "backup" / "manifest.json").exists():
            self._restore_config()

    def _check_no_foreign_installation(self) -> None:
        conf = ETC / "slurm.conf"
        if conf.exists() and MARKER not in conf.read_text(errors="replace"):
            running = [n for n in ("slurmctld", "slurmd") if _run(["pgrep", "-x", n], check=False).returncode == 0]
            if running:
                raise ClusterUnavailable(f"SLURM is configured here ({conf}) and {', '.join(running)} runs: "
                                         "the test cluster would replace its configuration")

    def _start(self) -> None:
        for sub in ("ctld", "spool", "log"):
            shutil.rmtree(self.state / sub, ignore_errors=True)
            (self.state / sub).mkdir(parents=True)
        machine_cpus, memory = machine_resources()
        self.cpus = max(machine_cpus, self.cpus_wanted or 0)
        self.memory_mb = memory
        self.gpu_files = [self.state / f"fake-gpu{i}" for i in range(self.gpus)]
        for f in self.gpu_files:
            f.touch()
        self._start_munge()
        self._backup_config()
        self._write_config()
        self._daemon("slurmctld", ["slurmctld", "-c"])  # -c: no state of an earlier cluster
        self._daemon("slurmd", ["slurmd", "-N", self.node])
        self._wait_idle()

    def _start_munge(self) -> None:
        if _munge_works():
            return
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            _run(["mungekey", "--create"] if shutil.which("mungekey") else
                 ["create-munge-key"])
        for folder in ("/run/munge", "/var/lib/munge", "/var/log/munge"):
            Path(folder).mkdir(parents=True, exist_ok=True)
            shutil.chown(folder, "munge", "munge")
        _run(["runuser", "-u", "munge", "--", "munged"])
        pid = int(Path("/run/munge/munged.pid").read_text().strip())
        self._record("munged", pid)
        deadline = time.monotonic() + 10
        while not _munge_works():
            if time.monotonic() > deadline:
                raise RuntimeError("munged started but munge -n | unmunge fails")
            time.sleep(0.1)

    def _daemon(self, name: str, cmd: list[str]) -> None:
        """Start a daemon that forks into the background and writes its pid file."""
        pidfile = self.state / f"{name}.pid"
        pidfile.unlink(missing_ok=True)
        _run(cmd, env=self.env)
        deadline = time.monotonic() + 15
        while not pidfile.exists() or not pidfile.read_text().strip():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} wrote no pid file; its log:\n{self.log(name)}")
            time.sleep(0.1)
        self._record(name, int(pidfile.read_text().strip()))

    def _record(self, name: str, pid: int) -> None:
        self._pids[name] = pid
        (self.state / "pids.json").write_text(json.dumps(self._pids))

    def _backup_config(self) -> None:
        backup = self.state / "backup"
        shutil.rmtree(backup, ignore_errors=True)
        backup.mkdir()
        existed = {}
        for name in CONFIG_FILES:
            path = ETC / name
            existed[name] = path.exists()
            if path.exists():
                shutil.copy2(path, backup / name)
        existed["etc"] = ETC.exists()
        (backup / "manifest.json").write_text(json.dumps(existed))
        self._restore = True

    def _restore_config(self) -> None:
        backup = self.state / "backup"
        manifest = json.loads((backup / "manifest.json").read_text())
        for name in CONFIG_FILES:
            if manifest[name]:
                shutil.copy2(backup / name, ETC / name)
            else:
                (ETC / name).unlink(missing_ok=True)
        if not manifest["etc"] and ETC.exists() and not any(ETC.iterdir()):
            ETC.rmdir()
        shutil.rmtree(backup)

    def _write_config(self) -> None:
        host = socket.gethostname().split(".")[0]
        self.ports = (_free_port(), _free_port())
        gres = ",".join(str(f) for f in self.gpu_files)
        log = self.state / "log"
        lines = [
            MARKER,
            "ClusterName=fsmistest",
            f"SlurmctldHost={host}(127.0.0.1)",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"SlurmctldPort={self.ports[0]}",
            f"SlurmdPort={self.ports[1]}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"StateSaveLocation={self.state / 'ctld'}",
            f"SlurmdSpoolDir={self.state / 'spool'}",
            f"SlurmctldPidFile={self.state / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.state / 'slurmd.pid'}",
            f"SlurmctldLogFile={log / 'slurmctld.log'}",
            f"SlurmdLogFile={log / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "GresTypes=gpu",
            "SchedulerType=sched/backfill",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "MailProg=/bin/true",
            f"MinJobAge={self.min_job_age}",
            "ReturnToService=2",
            # the node may declare more CPUs than the machine has (SlurmCluster(cpus=...))
            "SlurmdParameters=config_overrides",
            f"NodeName={self.node} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={self.cpus} "
            f"RealMemory={self.memory_mb} Gres=gpu:{self.gpus} State=UNKNOWN",
            f"PartitionName=cpu Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
            f"PartitionName=gpu Nodes={self.node} MaxTime=INFINITE State=UP",
        ]
        ETC.mkdir(parents=True, exist_ok=True)
        (ETC / "slurm.conf").write_text("\n".join(lines) + "\n")
        (ETC / "gres.conf").write_text(f"{MARKER}\nNodeName={self.node} Name=gpu File={gres}\n")

    def _wait_idle(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        state = ""
        while time.monotonic() < deadline:
            result = _run(["sinfo", "-h", "-N", "-n", self.node, "-o", "%T"], check=False, env=self.env)
            state = result.stdout.strip()
            if result.returncode == 0 and state.split() and all(s == "idle" for s in state.split()):
                return
            time.sleep(0.2)
        raise RuntimeError(f"node {self.node} not idle after {self.start_timeout} s (state '{state}');\n"
                           f"slurmctld log:\n{self.log('slurmctld')}\nslurmd log:\n{self.log('slurmd')}")

    # --- use -----------------------------------------------------------------------

    def log(self, daemon: str, lines: int = 30) -> str:
        path = self.state / "log" / f"{daemon}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"

    def jobs(self) -> list[dict[str, str]]:
        """Every job the controller knows (finished ones for ``min_job_age`` s), as
        ``scontrol show job`` fields: JobId, JobState, Partition, NumCPUs, MinMemoryNode,
        TimeLimit, TresPerJob, Comment, SubmitTime, StartTime, EndTime, ..."""
        out = _run(["scontrol", "-o", "show", "job"], env=self.env).stdout
        jobs = []
        for line in out.splitlines():
            if line.startswith("JobId="):
                # values hold no spaces except Comment, whose next key is StdErr
                fields = dict(re.findall(r"(\S+?)=(.*?)(?=\s+\S+?=|\s*$)", line))
                jobs.append(fields)
        return jobs

    # --- tear-down -----------------------------------------------------------------

    def __exit__(self, *exc) -> None:
        try:
            if "slurmctld" in self._pids:
                subprocess.run(["scancel", "--full", "--user", "root"], capture_output=True, timeout=30, env=self.env)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    q = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=30,
                                       env=self.env)
                    if q.returncode != 0 or not q.stdout.strip():
                        break
                    time.sleep(0.2)
            for name in ("slurmd", "slurmctld", "munged"):
                if name in self._pids:
                    _stop(self._pids.pop(name), name)
            (self.state / "pids.json").unlink(missing_ok=True)
        finally:
            if self._restore:
                self._restore_config()
                self._restore = False
            if self._lock is not None:
                self._lock.close()  # releases the lock
                self._lock = None
