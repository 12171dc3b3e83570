"""How long a training step waits for its episode, with and without episode workers.

For each ``backbone@size`` and each worker count, one SSL-ALPNet model is trained for
``--warmup`` + ``--steps`` steps exactly as ``fsmis.train`` does it: the episodes come
from ``fsmis.data.prefetch.EpisodeStream`` over a ``SuperpixelEpisodes`` sampler (the
synthetic volume of ``speed.py``, normalised, cut into a grid of square superpixels;
the reference's augmentation), each step is ``fsmis.train.training_step``. Timed per
step: the wait (``next()`` on the stream: drawing the episode in this process with 0
workers, fetching a ready one otherwise) and the step itself. The worker counts run
in turns of ``--block`` steps each, repeated until every count has its steps, so a
drift in machine load hits them alike; a fresh stream (and its workers) starts each
turn, and the first ``--warmup`` steps of every turn are not timed (a new stream's
first episode cannot have been drawn ahead).

Reported per configuration and worker count: median wait, median step, the wait as a
percentage of the step, and the median of wait + step (the time per step the run
sees). Pass: with workers, the wait is under 5 % of the step and wait + step is not
above the 0-worker row's.

    python benchmarks/episode_wait.py                        # ResNet-101 @ 256 and small_cnn @ 128
    python benchmarks/episode_wait.py --configs small_cnn@128 --steps 40 --block 10
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch
from speed import TRAIN_CFG, make_volume, parse_config  # the paper's step settings and input volume

from fsmis import train as training_loop
from fsmis.data.episodes import SuperpixelEpisodes
from fsmis.data.prefetch import EpisodeStream
from fsmis.models import registry

AUGMENT = {"rotate_deg": 5, "translate_px": 5, "shear_deg": 5, "zoom": [0.9, 1.2], "elastic_alpha": 10,
           "elastic_sigma": 5, "gamma": [0.5, 1.5]}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=["deeplabv3_resnet101@256", "small_cnn@128"],
                   help="backbone@size pairs")
    p.add_argument("--workers", nargs="+", type=int, default=[0, 2], help="episode worker counts to compare")
    p.add_argument("--steps", type=int, default=6, help="timed steps per configuration and worker count")
    p.add_argument("--block", type=int, default=3, help="timed steps per turn")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of every turn")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch threads of the step")
    p.add_argument("--slices", type=int, default=12, help="slices of the synthetic training volume")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (the step is timed to the device's end)")
    return p.parse_args(argv)


def sampler(size: int, slices: int, seed: int) -> SuperpixelEpisodes:
    """Superpixel episodes of one synthetic ``slices x size x size`` volume, z-scored,
    with an 8 x 8 grid of square superpixels on every slice."""
    vol = make_volume(slices, size, size, seed)
    vol = (vol - vol.mean()) / vol.std()
    yy, xx = np.mgrid[:size, :size]
    cell = max(size // 8, 1)
    grid = ((yy // cell) * 8 + xx // cell + 1).astype(np.int32)
    return SuperpixelEpisodes([vol], [np.broadcast_to(grid, vol.shape).copy()], AUGMENT, seed=seed)


def build(backbone: str, seed: int, device):
    torch.manual_seed(seed)
    dim = 64 if backbone == "small_cnn" else 256
    model = registry.build("ssl_alpnet", {"backbone": backbone, "feature_dim": dim}).to(device).train()
    opt, _ = training_loop.make_optimizer(model, TRAIN_CFG)
    return model, opt


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_turn(model, opt, episodes, start: int, n: int, warmup: int, workers: int, times: dict, device) -> int:
    """``warmup + n`` steps from episode ``start`` with a fresh stream; appends the timed
    (wait, step) seconds to ``times``; returns the next episode index."""
    stop = start + warmup + n
    with EpisodeStream(episodes, start, stop, device, workers) as stream:
        for i, batch in enumerate(stream):
            t0 = time.perf_counter()
            training_loop.training_step(model, batch, TRAIN_CFG, opt)
            _sync(device)
            step = time.perf_counter() - t0
            if i >= warmup:
                times["wait"].append(stream.last_wait_s)
                times["step"].append(step)
                times["total"].append(stream.last_wait_s + step)
    return stop


def cpu_line() -> str:
    name = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores, torch {torch.__version__}, python {platform.python_version()}"


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for text in args.configs:
        backbone, size = parse_config(text)
        episodes = sampler(size, args.slices, args.seed)
        runs = {w: (*build(backbone, args.seed, device), {"wait": [], "step": [], "total": []}, [0])
                for w in args.workers}
        while any(len(r[2]["step"]) < args.steps for r in runs.values()):
            for w, (model, opt, times, nxt) in runs.items():
                n = min(args.block, args.steps - len(times["step"]))
                if n > 0:
                    nxt[0] = run_turn(model, opt, episodes, nxt[0], n, args.warmup, w, times, device)
        for w, (_, _, times, _) in runs.items():
            wait, step, total = (1e3 * statistics.median(times[k]) for k in ("wait", "step", "total"))
            rows.append({"config": text, "workers": w, "wait_ms": wait, "step_ms": step, "wait_pct": 100 * wait / step,
                         "total_ms": total, "steps": len(times["step"])})
    print(f"episode wait per training step (SSL-ALPNet, {args.threads} torch thread(s), medians of {args.steps} "
          f"steps in turns of {args.block}, {args.warmup} warm-up step(s) a turn, device {device})")
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ", no GPU used"
    print(cpu_line() + gpu)
    print(f"{'config':<26}{'workers':>8}{'wait ms':>10}{'step ms':>10}{'wait %':>8}{'wait+step ms':>14}")
    for r in rows:
        print(f"{r['config']:<26}{r['workers']:>8}{r['wait_ms']:>10.2f}{r['step_ms']:>10.1f}{r['wait_pct']:>8.2f}"
              f"{r['total_ms']:>14.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
