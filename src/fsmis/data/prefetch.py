"""Training episodes produced ahead of the step, by worker processes.

:class:`EpisodeStream` yields ``episodes.episode(i)`` for ``i = start .. stop - 1``, in
that order, on the training device. What it guarantees:

- the same episodes, bit for bit, with 0 or N workers: an episode is a function of
  the sampler's seed and its index alone (``fsmis.data.episodes.episode_generator``),
  so which process draws it does not matter;
- the training process's global torch random state is not touched (the loader's
  worker seeds come from a private generator), so a method that draws at training
  time also trains the same with 0 or N workers;
- ``workers > 0``: a ``torch.utils.data.DataLoader`` over the step indices, each
  worker keeping ``prefetch`` episodes ready; the workers start when the stream is
  created and stop when it is closed (a context manager), so one stream serves one
  training run and the loader's ``persistent_workers`` (which keeps workers across
  passes) has nothing to keep;
- on CUDA the episodes arrive in pinned memory (the loader's pin thread, or pinned
  here with 0 workers) and are copied with ``non_blocking=True``, so the copy does
  not hold up the host while the device computes; elsewhere tensors move with
  ``.to(device)`` as before (on a CPU they are the produced tensors themselves);
- a failure while producing an episode, in a worker or here, raises
  :class:`EpisodeError` naming the step and the cause (the original exception, with
  the worker's traceback, is chained); a worker that dies (a signal, out of memory)
  is reported the same way at the step that was waiting when it was noticed, or,
  when the loader's own watch (a SIGCHLD handler) notices it first, wherever the
  training process is, as the loader's RuntimeError "DataLoader worker (pid N)
  exited unexpectedly with exit code C" (or "is killed by signal"). Either way the
  job stops with the worker's fate in one line.

``resolve_workers`` turns the ``train.workers`` setting into a count.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset

MAX_AUTO_WORKERS = 4  # an episode costs a few ms to tens of ms; more workers only hold memory


class EpisodeError(RuntimeError):
    """An episode could not be produced."""


def resolve_workers(setting, threads: int) -> int:
    """``train.workers`` -> worker processes: an integer >= 0 as given; ``"auto"`` (or
    absent, None) = ``min(threads - 1, 4)``, so a 1-thread job draws its episodes
    itself and a larger job leaves one of its threads to the step."""
    if setting is None or setting == "auto":
        return max(0, min(int(threads) - 1, MAX_AUTO_WORKERS))
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 0:
        raise ValueError(f"train.workers must be an integer >= 0 or 'auto', got {setting!r}")
    return setting


def to_device(batch: dict, device) -> dict:
    """The tensors of ``batch`` on ``device`` (non-blocking: from pinned memory on CUDA
    the copy returns at once)."""
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def _pinned(batch: dict) -> dict:
    return {k: (v.pin_memory() if torch.is_tensor(v) else v) for k, v in batch.items()}


def _as_is(item):
    """No collation: an item is one whole episode (module level, so workers can pickle it)."""
    return item


_ALIGN = 64  # bytes: every tensor of a packed episode starts on a cache line


class _Spec(NamedTuple):
    """Where one tensor of a packed episode lies in its buffer."""

    dtype: torch.dtype
    shape: tuple
    offset: int
    nbytes: int


class _Packed:
    """A packed episode: ``buf`` (uint8) and ``layout`` (``[(key, _Spec or value)]``).
    The loader's pin thread calls :meth:`pin_memory`, which pins the buffer and leaves
    the layout as it is (its generic pinning would walk into the layout)."""

    def __init__(self, buf: torch.Tensor, layout: list):
        self.buf, self.layout = buf, layout

    def pin_memory(self, *_args, **_kwargs) -> _Packed:
        return _Packed(self.buf.pin_memory(), self.layout)


def _pack(batch: dict) -> _Packed:
    """One episode as one byte tensor plus its layout. A worker hands each tensor over
    through shared memory with a round trip to the worker per tensor; measured here,
    the four tensors of an episode took longer to receive (about 12 ms on a loaded
    2-core machine) than to draw, one buffer takes one round trip."""
    parts, layout, offset = [], [], 0
    for key, value in batch.items():
        if not torch.is_tensor(value):
            layout.append((key, value))
            continue
        raw = value.detach().contiguous().reshape(-1).view(torch.uint8)
        pad = -offset % _ALIGN
        if pad:
            parts.append(torch.zeros(pad, dtype=torch.uint8))
        offset += pad
        layout.append((key, _Spec(value.dtype, tuple(value.shape), offset, raw.numel())))
        parts.append(raw)
        offset += raw.numel()
    return _Packed(torch.cat(parts) if parts else torch.zeros(0, dtype=torch.uint8), layout)


def _unpack(packed: _Packed, copy: bool) -> dict:
    """The episode of :func:`_pack`; ``copy``: each tensor in memory of its own (as the
    training process's own draw would be) rather than a view of the buffer."""
    out = {}
    for key, item in packed.layout:
        if isinstance(item, _Spec):
            value = packed.buf[item.offset:item.offset + item.nbytes].view(item.dtype).view(item.shape)
            out[key] = value.clone() if copy else value
        else:
            out[key] = item
    return out


class _Steps(Dataset):
    """Episode ``i`` of ``episodes``, packed (:func:`_pack`), at index ``i``."""

    def __init__(self, episodes, stop: int):
        self.episodes, self.stop = episodes, stop

    def __len__(self) -> int:
        return self.stop

    def __getitem__(self, index: int):
        return _pack(self.episodes.episode(index))


def _one_line(exc: BaseException) -> str:
    """The cause in one line: a worker's error arrives as "Caught X in DataLoader worker
    process N. Original Traceback ... X: message"; its last line is the message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    last = lines[-1]
    return last if len(lines) > 1 else f"{type(exc).__name__}: {last}"


def _dead_workers(source, exc: BaseException, wait_s: float = 2.0) -> str:
    """"an episode worker process died (...)" when one has, else "": the loader's own
    message for a dead worker depends on what it was doing (a lost connection, a
    timeout), its exit status does not. A worker's Python error ("Caught ...") is no
    death; otherwise the dying worker may still be exiting, so wait a little for it."""
    workers = list(getattr(source, "_workers", ()))
    if not workers or str(exc).startswith("Caught "):
        return ""
    deadline = time.monotonic() + wait_s
    while True:
        codes = [p.exitcode for p in workers if p.exitcode not in (None, 0)]
        if codes or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    if not codes:
        return ""
    how = ", ".join(f"killed by signal {-c}" if c < 0 else f"exit code {c}" for c in codes)
    return f"an episode worker process died ({how})"


class EpisodeStream:
    """Episodes ``start .. stop - 1`` of ``episodes`` (anything with ``episode(i)``), in
    order, on ``device``; ``workers`` processes produce them ahead when > 0.

    ``last_wait_s``/``waited_s``: seconds the caller waited for the last episode / for
    all of them (producing it, with 0 workers)."""

    def __init__(self, episodes, start: int, stop: int, device="cpu", workers: int = 0, prefetch: int = 2):
        self.device = torch.device(device)
        self.workers = int(workers)
        self.index, self.stop = int(start), int(stop)
        self.last_wait_s = self.waited_s = 0.0
        self._pin = self.device.type == "cuda"
        if self.workers > 0 and self.index < self.stop:
            loader = DataLoader(_Steps(episodes, self.stop), batch_size=None, sampler=range(self.index, self.stop),
                                num_workers=self.workers, prefetch_factor=int(prefetch), pin_memory=self._pin,
                                collate_fn=_as_is, generator=torch.Generator())
            self._source = iter(loader)  # starts the workers
        else:
            self._source = (episodes.episode(i) for i in range(self.index, self.stop))

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self.index >= self.stop:
            raise StopIteration
        t0 = time.perf_counter()
        try:
            batch = next(self._source)
        except Exception as exc:
            # a worker's Python error arrives at the index it failed on; a worker that died
            # is noticed while this step waits, whichever episode it was drawing
            where = f"an episode worker process (of {self.workers})" if self.workers else "the training process"
            died = _dead_workers(self._source, exc)
            self.close()
            cause = f"{died}; {_one_line(exc)}" if died else f"{_one_line(exc)} (in {where})"
            raise EpisodeError(f"training step {self.index + 1} got no episode: {cause}") from exc
        if self.workers:
            # on CUDA the views of the pinned buffer are copied to the device anyway
            batch = _unpack(batch, copy=not self._pin)
        elif self._pin:
            batch = _pinned(batch)
        self.last_wait_s = time.perf_counter() - t0
        self.waited_s += self.last_wait_s
        self.index += 1
        return to_device(batch, self.device)

    def close(self) -> None:
        """Stop the workers (at once, not when the loader is garbage-collected: an
        exception's traceback may hold it for a while)."""
        source, self._source = self._source, iter(())
        shutdown = getattr(source, "_shutdown_workers", None)  # the DataLoader iterator's own clean-up
        if shutdown is not None:
            shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
