"""Which GPUs a job may use, and a lease that gives each GPU job a device of its own.

Snakemake counts GPU jobs against the ``gpu`` resource but never says which device a
job should take; without more, every job on a multi-GPU machine would run on cuda:0.
A job that asks for a GPU therefore takes a *lease* before torch touches CUDA
(:func:`lease_for_job`): it locks the first free ``device-<id>.lock`` of the lease
folder with an exclusive, non-blocking ``flock`` and keeps the file open for the rest
of its life, then sets ``CUDA_VISIBLE_DEVICES`` to that one device, which the job sees
as ``cuda:0``.

What the lease guarantees:

* Two live processes never hold the same device (the kernel's ``flock``).
* A job that ends in any way frees its device at once, with no cleanup: the kernel
  drops a ``flock`` when the last descriptor of the locked file closes, which happens
  when the process exits, crashes or is killed (SIGKILL included). Lock files stay in
  the folder; an unlocked file is a free device.
* Processes the job forks (episode workers) do not keep its lease: the descriptor is
  closed in every forked child (``os.register_at_fork``) and not inherited across
  ``exec``, so a killed job's orphaned workers cannot block its device.
* One or no visible device: nothing to share, no lock is taken.
* All devices taken (only when more GPU jobs run than there are devices: a second
  invocation on the same machine, a ``--resources gpu=K`` above the device count): the
  job waits, up to ``FSMIS_DEVICE_WAIT`` seconds, then stops with a message naming the
  processes that hold the devices.

The lease folder is node-local, ``/tmp/fsmis-leases-<uid>`` (or ``FSMIS_LEASE_DIR``):
all jobs of one machine must see the same lock files, and jobs on other machines must
not (``flock`` over a network file system is unreliable, and a device id means a
different card on every machine). It is shared by every checkout and invocation of the
same user, so two experiments run side by side on one machine do not double up on a
device. Not ``$TMPDIR``: Snakemake may give every job its own.

Visible devices (:func:`visible_devices`), first that applies:

* ``FSMIS_DEVICES``: comma-separated device ids, for tests and for running on a subset
  (``FSMIS_DEVICES=2,3``); empty means no GPU (jobs run on the CPU).
* ``CUDA_VISIBLE_DEVICES``, read as CUDA reads it (its ids are kept: ``2,3`` leases
  physical devices 2 and 3).
* the GPUs ``nvidia-smi -L`` lists; without it, where a GPU device node exists,
  ``torch.cuda.device_count()`` in a child process, so that CUDA is never initialised
  in the job before it chose its device. No GPU device node: no GPU, at no cost.

Standard library only: the workflow imports this module at parse time
(:func:`local_gpu_limit`), when torch may not be installed.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fsmis.envvars import FSMIS_DEVICE_WAIT, FSMIS_DEVICES, FSMIS_LEASE_DIR

log = logging.getLogger(__name__)

CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"

DEFAULT_WAIT_S = 600.0
POLL_S = 0.25
# Nodes the NVIDIA (and ROCm, and WSL) drivers create: without any of them there is no
# GPU to count, and no process is started to ask torch.
GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/kfd", "/dev/dxg")

# A CUDA device id: an index, or a GPU-/MIG- UUID (as nvidia-smi -L prints them).
_DEVICE_ID = re.compile(r"\d+|(GPU|MIG)-[0-9A-Za-z/-]+")


class DeviceError(RuntimeError):
    """A device setting that cannot be used, or no device free in time."""


def parse_device_list(text: str, source: str = FSMIS_DEVICES) -> list[str]:
    """Device ids of a comma-separated list such as ``"0,1"`` or ``"GPU-8e1c..,GPU-2f0a.."``.
    For ``FSMIS_DEVICES`` a bad or repeated id is an error; ``CUDA_VISIBLE_DEVICES`` is
    read as CUDA reads it: the list ends at the first invalid id (``-1`` or
    ``NoDevFiles`` hides every device)."""
    ids = []
    for item in (part.strip() for part in text.split(",")):
        if not item and source == FSMIS_DEVICES:
            continue
        if not _DEVICE_ID.fullmatch(item) or item in ids:
            if source == CUDA_VISIBLE_DEVICES:
                break
            problem = "repeated" if item in ids else "not a device index or GPU-/MIG- UUID"
            raise DeviceError(f"{source}={text!r}: {item!r} is {problem}; expected e.g. {source}=0,1,2,3")
        ids.append(item)
    return ids


def count_gpus() -> int:
    """GPUs of this machine, without initialising CUDA in this process."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
        except (OSError, subprocess.SubprocessError) as err:
            log.warning("nvidia-smi -L failed (%s); counting the GPUs with torch", err)
        else:
            return sum(1 for line in out.splitlines() if line.startswith("GPU "))
    if not any(os.path.exists(node) for node in GPU_DEVICE_NODES):
        return 0
    probe = "import torch; print(torch.cuda.device_count())"
    try:
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
        return int(out.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as err:
        log.warning("could not count the GPUs with torch (%s); assuming none", err)
        return 0


def visible_devices(environ=None) -> list[str]:
    """The device ids GPU jobs share (see the module docstring for the order)."""
    env = os.environ if environ is None else environ
    if FSMIS_DEVICES in env:
        return parse_device_list(env[FSMIS_DEVICES], FSMIS_DEVICES)
    if CUDA_VISIBLE_DEVICES in env:
        return parse_device_list(env[CUDA_VISIBLE_DEVICES], CUDA_VISIBLE_DEVICES)
    return [str(i) for i in range(count_gpus())]


def lease_dir(environ=None) -> Path:
    """The lease folder: ``FSMIS_LEASE_DIR``, else ``/tmp/fsmis-leases-<uid>``."""
    env = os.environ if environ is None else environ
    return Path(env.get(FSMIS_LEASE_DIR) or f"/tmp/fsmis-leases-{os.getuid()}")


def wait_seconds(environ=None) -> float:
    """How long a job waits for a free device: ``FSMIS_DEVICE_WAIT`` seconds (default 600)."""
    env = os.environ if environ is None else environ
    text = env.get(FSMIS_DEVICE_WAIT, "").strip()
    if not text:
        return DEFAULT_WAIT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also catches nan
        raise DeviceError(f"{FSMIS_DEVICE_WAIT}={text!r}: expected a number of seconds >= 0")
    return value


def local_gpu_limit(main_process: bool, cores, nodes) -> int:
    """The ``gpu`` limit for the workflow: the number of visible devices on a local run,
    else 0 (no limit: a cluster's scheduler places GPU jobs; a CPU-only machine must not
    hold back the jobs that ask for a GPU). ``cores``/``nodes``: Snakemake's resource
    settings. The executor is not known when the workflow is parsed; a run is local
    unless it has ``nodes`` (``--jobs`` with a cluster executor; locally ``--jobs`` is
    read as ``--cores``) and no ``cores``. A local run given both still counts as local:
    without the limit its extra GPU jobs would wait for a device."""
    if not main_process or (nodes is not None and cores is None):
        return 0
    return len(visible_devices())


@dataclass
class Lease:
    """A device held by this process (``device`` None: no GPU). ``path``/``fd`` are
    None when no lock was needed (one or no device)."""

    device: str | None
    path: Path | None = None
    fd: int | None = None
    pid: int = field(default_factory=os.getpid)

    def release(self) -> None:
        """Unlock and close, in the process that took the lease only (a forked child's
        copy of the descriptor is closed at fork; unlocking there would free the
        parent's device)."""
        if self.fd is None or os.getpid() != self.pid:
            return
        fd, self.fd = self.fd, None
        _HELD_FDS.discard(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


# Descriptors of the leases this process holds, closed in every forked child.
_HELD_FDS: set[int] = set()


def _close_in_child() -> None:
    # Closing (not unlocking) drops only the child's reference: the parent's lock stays.
    for fd in list(_HELD_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_FDS.clear()


os.register_at_fork(after_in_child=_close_in_child)


def _lock_file(directory: Path, device: str) -> Path:
    return directory / f"device-{re.sub(r'[^0-9A-Za-z._-]', '_', device)}.lock"


def _prepare(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    owner = directory.stat().st_uid
    if owner != os.getuid():
        raise DeviceError(f"lease folder {directory} belongs to user id {owner}, not to this user; "
                          f"set {FSMIS_LEASE_DIR} to a folder of yours")


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    # Who holds it, for the message of a job that finds every device taken.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}\n".encode(), 0)
    return fd


def _holders(directory: Path, devices: list[str]) -> str:
    parts = []
    for device in devices:
        try:
            text = _lock_file(directory, device).read_text(encoding="utf-8").strip()
        except OSError:
            text = ""
        parts.append(f"{device}: {text or 'unknown holder'}")
    return "; ".join(parts)


def take(devices: list[str], directory: Path | str, timeout: float = DEFAULT_WAIT_S, poll: float = POLL_S) -> Lease:
    """Lease the first free device of ``devices`` in ``directory``; wait up to
    ``timeout`` seconds while all are held. One or no device: a Lease without a lock."""
    devices = list(devices)
    if len(devices) <= 1:
        return Lease(devices[0] if devices else None)
    directory = Path(directory)
    _prepare(directory)
    deadline = time.monotonic() + timeout
    warned = False
    while True:
        for device in devices:
            path = _lock_file(directory, device)
            fd = _try_lock(path)
            if fd is not None:
                _HELD_FDS.add(fd)
                return Lease(device, path, fd)
        if time.monotonic() >= deadline:
            raise DeviceError(
                f"all {len(devices)} devices ({','.join(devices)}) are leased in {directory} "
                f"({_holders(directory, devices)}); gave up after {timeout:g} s ({FSMIS_DEVICE_WAIT}). "
                "More GPU jobs run on this machine than it has devices: another snakemake invocation, "
                "or --resources gpu= above the device count")
        if not warned:
            log.warning("all %d devices are leased (%s); waiting up to %g s for one to become free",
                        len(devices), _holders(directory, devices), timeout)
            warned = True
        time.sleep(poll)


# The lease of this process's job: kept referenced until the process exits (a collected
# Lease would not unlock, but its descriptor must stay open for the job's life).
_JOB_LEASE: Lease | None = None


def lease_for_job(environ=None) -> str | None:
    """Lease a device for the GPU job running in this process and make it the only one
    the job sees (``CUDA_VISIBLE_DEVICES``, so it is ``cuda:0``); returns its id, or None
    without a GPU. Call before anything asks torch about CUDA: CUDA reads
    ``CUDA_VISIBLE_DEVICES`` once, when first initialised. The lease is held until the
    process exits; a second call returns the same device."""
    global _JOB_LEASE
    env = os.environ if environ is None else environ
    if _JOB_LEASE is None:
        devices = visible_devices(env)
        _JOB_LEASE = take(devices, lease_dir(env), wait_seconds(env))
        if _JOB_LEASE.device is not None:
            env[CUDA_VISIBLE_DEVICES] = _JOB_LEASE.device
        elif FSMIS_DEVICES in env:  # FSMIS_DEVICES= (empty): run on the CPU
            env[CUDA_VISIBLE_DEVICES] = ""
        if len(devices) > 1:
            log.info("leased device %s of %s (%s)", _JOB_LEASE.device, ",".join(devices), _JOB_LEASE.path)
    return _JOB_LEASE.device
