"""GPU check: what one training step and one evaluation of each method cost on this
machine, in float32 and in mixed precision, as a Markdown table.

Meant for a user (or a CI machine with a GPU) before a paper run: at the papers'
settings (DeepLabV3-ResNet101 trunk, random weights, 256x256, every registered method)
it is sized for well under five minutes on a recent GPU (an estimate: not yet run on
one). It runs on a CPU too; there ``--quick`` (small_cnn at 128x128, 3 steps, 16
slices) answers in about a minute for all methods, the paper settings take seconds
per step (minutes with emulated bf16).

Per method and precision row:

- ``step_ms``: median of ``--steps`` timed training steps after ``--warmup``
  (``fsmis.train.training_step``: forward, losses, backward, SGD step; then the
  scheduler step), the device synchronised around each; ``x_fp32``: that median over
  the fp32 row's.
- ``episode_ms``: median time to produce one episode in the training process (the
  sampler's ``episode(i)``: slice and pseudo-label draw, the two augmentations, and the
  copy to the device), which each step waits for with ``train.workers: 0``;
  ``wait_pct``: that over ``step_ms``, in percent. With workers the wait is hidden
  behind the step (``benchmarks/episode_wait.py`` measures that). Episodes are real: the
  method's own sampler (``SuperpixelEpisodes`` or ``SupervoxelEpisodes``, with the
  schema's augmentation) on phantom case 0 preprocessed at the input size, with its
  superpixels or 3D supervoxels computed here (seconds, once per lineage). Every row
  of a run trains on the same episodes.
- ``eval_slices_per_s``: query slices segmented per second by
  ``fsmis.evaluate.evaluate_scans`` (phantom case 1 as the query, case 0 as the
  support, four organs, oracle protocol, metrics included), after one untimed run
  (none with ``--quick``).
- ``peak_mb``: peak memory of the row (its training steps and evaluation): on CUDA
  ``torch.cuda.max_memory_allocated``; on a CPU the process's peak resident set
  (Linux ``VmHWM``, reset before the row), which includes the imports; ``n/a`` where
  it cannot be read or with ``--interleave`` (the rows then share the process).

Precision rows (``--precision``, default ``fp32 amp``): ``fp32``; ``amp``: what
``amp: auto`` runs where the device computes bf16 natively (bf16 autocast of the
encoder, channels-last), and elsewhere the nearest thing (fp16 with a gradient scaler
on a GPU without native bf16, emulated bf16 on such a CPU) so that the row still says
what mixed precision would cost there; ``bf16``, ``fp16`` (CUDA only) and any of them
with ``+cl`` (channels-last) as given. The header says what ``amp: auto`` resolves to on
this device and why (``fsmis.precision.resolve_amp``), the device, torch and CUDA.

    python benchmarks/gpu_check.py                                  # paper settings, all methods
    python benchmarks/gpu_check.py --methods ssl_alpnet adnet --out gpu_check.md
    python benchmarks/gpu_check.py --precision fp32 amp bf16        # does channels-last pay here?
    python benchmarks/gpu_check.py --quick                          # a CPU, in seconds
    python benchmarks/gpu_check.py --methods ssl_alpnet --no-eval --interleave --steps 5   # busy machine
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from fsmis import precision as P
from fsmis import train as T
from fsmis.models import registry
from fsmis.models.fewshot import EmptyPrototypeSet
from fsmis.models.resolve import training_data

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
COLUMNS = ["method", "precision", "path", "steps", "step_ms", "x_fp32", "episode_ms", "wait_pct", "eval_slices_per_s",
           "peak_mb"]
PRECISIONS = ["fp32", "amp", "bf16", "fp16", "fp32+cl", "amp+cl", "bf16+cl", "fp16+cl"]
CLASSES = ["liver", "spleen", "left_kidney", "right_kidney"]
PAPER = {"backbone": "deeplabv3_resnet101", "size": 256, "feature_dim": 256, "steps": 10, "warmup": 3,
         "eval_warmup": 1, "slices": 0}
QUICK = {"backbone": "small_cnn", "size": 128, "feature_dim": 64, "steps": 3, "warmup": 1, "eval_warmup": 0,
         "slices": 16}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(registry.METHODS), help="registered methods (default: all)")
    p.add_argument("--precision", nargs="+", default=["fp32", "amp"], choices=PRECISIONS)
    p.add_argument("--quick", action="store_true",
                   help="small_cnn at 128x128, 3 steps, the 16 central slices of each case, no evaluation warm-up")
    p.add_argument("--backbone", default=None, help="default: deeplabv3_resnet101 (small_cnn with --quick)")
    p.add_argument("--size", type=int, default=None, help="image side in px (default 256; 128 with --quick)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps (default 10; 3 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; 1 with --quick)")
    p.add_argument("--eval-warmup", type=int, default=None, help="untimed evaluations first (default 1; 0 quick)")
    p.add_argument("--slices", type=int, default=None,
                   help="use only this many central slices of each phantom case (0, the default: all; 16 quick)")
    p.add_argument("--no-eval", action="store_true", help="training steps only")
    p.add_argument("--interleave", action="store_true",
                   help="one training step of each precision row per round (fair ratios on a busy machine; "
                        "no per-row peak memory)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--phantom-seed", type=int, default=2024, help="the demo dataset's seed by default")
    p.add_argument("--out", default=None, help="also write the Markdown to this file")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else PAPER).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    unknown = [m for m in args.methods if m not in registry.methods()]
    if unknown:
        p.error(f"--methods: unknown {', '.join(unknown)}; registered: {', '.join(registry.methods())}")
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    return args


# -- memory ------------------------------------------------------------------------------

def _reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):  # Linux: 5 resets the peak resident set (VmHWM) to the current one
        Path("/proc/self/clear_refs").write_text("5")


def _peak_mb(device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- inputs --------------------------------------------------------------------------------

def _schema_config() -> dict:
    """The schema's defaults (the papers' training, augmentation and pseudo-label settings)."""
    from fsmis.config import validate

    cfg = {"experiment": "gpu_check", "dataset": {"name": "phantom"}}
    validate(cfg, SCHEMA)
    return cfg


def _phantom(index: int, args, cfg: dict):
    """Phantom case ``index`` preprocessed (CT) at the input size: ``(0..255 image,
    canonical label ids, spacing z, y, x)``."""
    import SimpleITK as sitk

    from fsmis.data import phantom
    from fsmis.data.preprocess import preprocess_case
    from fsmis.labels import class_id

    lut = np.zeros(256, np.uint8)
    for raw, name in phantom.PHANTOM_LABEL_MAP.items():
        lut[raw] = class_id(name)
    image, label = phantom.generate_case(index, args.phantom_seed)
    depth = image.GetSize()[2]
    if 0 < args.slices < depth:  # a central slab: cheaper preprocessing, pseudo-labels and evaluation
        start = (depth - args.slices) // 2
        image, label = image[:, :, start:start + args.slices], label[:, :, start:start + args.slices]
    image, label = preprocess_case(image, label, "CT", {**cfg["preprocess"], "image_size": args.size})
    sx, sy, sz = label.GetSpacing()
    return sitk.GetArrayFromImage(image).astype(np.float32), lut[sitk.GetArrayFromImage(label)], (sz, sy, sx)


class Inputs:
    """Per lineage (its pseudo-labels and normalisation): the episodes every row trains
    on with the time each took to make, and the support and query scans."""

    def __init__(self, args, cfg: dict):
        self.args, self.cfg = args, cfg
        self.cases = [_phantom(i, args, cfg) for i in (0, 1)]
        self._made: dict = {}

    def stats(self, normalisation: str):
        from fsmis.data import normalize

        return normalize.PER_SCAN if normalisation == "per_scan" else normalize.ct_statistics([self.cases[0][0]])

    def for_method(self, name: str) -> dict:
        data = training_data(name, self.cfg)
        key = (data["pseudo_labels"], data["normalisation"])
        if key not in self._made:
            self._made[key] = self._make(*key)
        return self._made[key]

    def _make(self, pseudo_labels: str, normalisation: str) -> dict:
        from fsmis.data import normalize
        from fsmis.evaluate import Scan

        image, _, spacing = self.cases[0]
        stats = self.stats(normalisation)
        normed = normalize.normalize(image, "CT", stats)
        t0 = time.perf_counter()
        train, seed = self.cfg["train"], self.args.seed
        if pseudo_labels == "supervoxels3d":
            from fsmis.data.supervoxels import supervoxels_3d
            from fsmis.data.volume_episodes import SupervoxelEpisodes

            maps = supervoxels_3d(image, spacing, **self.cfg["supervoxels"])
            sampler = SupervoxelEpisodes([normed], [maps], train["augment"], seed=seed,
                                         sampling=train["supervoxel_sampling"], min_size=train["supervoxel_min_size"],
                                         shear_about=train["augment"]["shear_about"])
        else:
            from fsmis.data import superpixels
            from fsmis.data.episodes import SuperpixelEpisodes

            maps = superpixels.compute(image, "CT", self.cfg["superpixels"], workers=1)
            sampler = SuperpixelEpisodes([normed], [maps], train["augment"], seed=seed,
                                         sampling=train["superpixel_sampling"])
        made_s = time.perf_counter() - t0
        episodes, sample_ms = [], []
        for i in range(self.args.warmup + self.args.steps):
            t0 = time.perf_counter()
            episode = sampler.episode(i)  # what fsmis.train draws for step i + 1
            sample_ms.append((time.perf_counter() - t0) * 1e3)
            episodes.append({k: v for k, v in episode.items() if torch.is_tensor(v)})
        scans = [Scan(f"phantom_{i:03d}", normalize.normalize(img, "CT", stats), lab, sp)
                 for i, (img, lab, sp) in enumerate(self.cases)]
        return {"episodes": episodes, "sample_ms": sample_ms, "support": scans[0], "query": scans[1],
                "what": f"{pseudo_labels} ({made_s:.1f} s to compute)"}


# -- rows ----------------------------------------------------------------------------------

def plan_of(spec: str, device) -> P.AmpPlan:
    """The precision a ``--precision`` row runs (``fsmis.precision.resolve_amp``)."""
    kind, cl = spec.removesuffix("+cl"), spec.endswith("+cl")
    if kind == "amp":
        auto = P.resolve_amp("auto", device)
        if auto.dtype is not None:
            return P.resolve_amp("auto", device, True if cl else None)
        # no native bf16: what mixed precision would be here (fp16 on a GPU, emulated bf16 on a CPU)
        return P.resolve_amp("fp16" if device.type == "cuda" else "bf16", device, True)
    if kind == "fp16" and device.type != "cuda":
        raise SystemExit("--precision fp16 needs a CUDA device")
    return P.resolve_amp(False if kind == "fp32" else kind, device, cl)


class Row:
    """One method at one precision: its model, optimiser and encoder precision, stepped
    on the lineage's episodes."""

    def __init__(self, name: str, spec: str, args, cfg: dict, device):
        self.name, self.spec, self.device, self.cfg = name, spec, device, cfg["train"]
        self.plan = plan_of(spec, device)
        torch.manual_seed(args.seed)
        model_cfg = {"backbone": args.backbone, "feature_dim": args.feature_dim, "pretrained": None}
        # methods that read the image at a fixed side (GMRD's descriptors) are told the input size
        sized = {"image_size": args.size} if "image_size" in {f.name for f in dataclasses.fields(
            registry.params_class(name))} else {}
        self.model = registry.build(name, model_cfg, sized).to(device).train()
        self.opt, self.sched = T.make_optimizer(self.model, self.cfg)
        self.scaler = P.make_grad_scaler(self.plan.dtype, device)
        self.with_label = bool(getattr(self.model, "takes_query_label", False))
        self.stack = contextlib.ExitStack()
        self.stack.enter_context(P.autocast_encoder(self.model, self.plan.dtype, self.plan.channels_last))
        self.step_ms: list[float] = []
        self.wait_ms: list[float] = []
        self.skipped = 0

    def step(self, episode: dict, sample_ms: float, timed: bool) -> None:
        """One step on ``episode``, which took ``sample_ms`` to make; timed or warm-up."""
        _sync(self.device)
        t0 = time.perf_counter()
        batch = {k: v.to(self.device, non_blocking=True) for k, v in episode.items()}
        _sync(self.device)
        t1 = time.perf_counter()
        if timed:
            self.wait_ms.append(sample_ms + (t1 - t0) * 1e3)
        try:
            T.training_step(self.model, batch, self.cfg, self.opt, self.scaler, self.with_label)
        except EmptyPrototypeSet:  # fsmis.train skips such an episode; so does the check
            self.skipped += 1
            self.sched.step()
            return
        self.sched.step()
        _sync(self.device)
        ms = (time.perf_counter() - t1) * 1e3
        if timed:
            self.step_ms.append(ms)
        if ms > 1000:  # slow steps (a CPU at paper settings): show progress
            print(f"  {self.name} {self.spec}: step {ms:.0f} ms{'' if timed else ' (warm-up)'}", file=sys.stderr,
                  flush=True)

    def evaluate(self, data: dict, warmup: int) -> float:
        """Query slices per second of one oracle evaluation of the query scan."""
        from fsmis import evaluate as E
        from fsmis.labels import class_id

        self.stack.close()  # the predictor enters the encoder's precision itself
        classes = {n: class_id(n) for n in CLASSES}
        seconds = []
        for i in range(warmup + 1):
            predictor = E.ModelPredictor(self.model, self.device, amp=self.plan.amp,
                                         channels_last=self.plan.channels_last)
            _sync(self.device)
            t0 = time.perf_counter()
            E.evaluate_scans(predictor, data["support"], [data["query"]], classes, ("oracle",), n_parts=3)
            _sync(self.device)
            if i >= warmup:
                seconds.append(time.perf_counter() - t0)
        return predictor.encoded["query"] / statistics.median(seconds)

    def result(self) -> dict:
        if not self.step_ms:
            raise RuntimeError(f"{self.name} {self.spec}: every timed step was skipped (no background prototype)")
        step, episode = statistics.median(self.step_ms), statistics.median(self.wait_ms)
        return {"method": self.name, "precision": self.spec, "path": self.plan.path, "steps": len(self.step_ms),
                "step_ms": step, "episode_ms": episode, "wait_pct": 100.0 * episode / step}

    def close(self) -> None:
        self.stack.close()
        del self.model, self.opt, self.sched
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def check_method(name: str, inputs: Inputs, args, cfg: dict, device) -> list[dict]:
    data = inputs.for_method(name)
    episodes, sample_ms, n = data["episodes"], data["sample_ms"], args.warmup + args.steps
    out = []
    if args.interleave:
        rows = [Row(name, spec, args, cfg, device) for spec in args.precision]
        for i in range(n):
            for row in rows:
                row.step(episodes[i], sample_ms[i], i >= args.warmup)
        for row in rows:
            result = row.result()
            result["eval_slices_per_s"] = None if args.no_eval else row.evaluate(data, args.eval_warmup)
            result["peak_mb"] = None
            out.append(result)
            row.close()
        return out
    for spec in args.precision:
        _reset_peak(device)
        row = Row(name, spec, args, cfg, device)
        for i in range(n):
            row.step(episodes[i], sample_ms[i], i >= args.warmup)
        result = row.result()
        result["eval_slices_per_s"] = None if args.no_eval else row.evaluate(data, args.eval_warmup)
        result["peak_mb"] = _peak_mb(device)
        row.close()
        out.append(result)
    return out


# -- report --------------------------------------------------------------------------------

def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def header(args, device) -> list[str]:
    auto = P.resolve_amp("auto", device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        where = (f"{torch.cuda.get_device_name(device)} ({device}, compute capability {props.major}.{props.minor}, "
                 f"{props.total_memory / 2**30:.0f} GiB); CUDA {torch.version.cuda}, "
                 f"cuDNN {torch.backends.cudnn.version()}; host CPU {_cpu_name()}")
        memory = "torch.cuda.max_memory_allocated"
    else:
        where = f"CPU {_cpu_name()}, {torch.get_num_threads()} torch threads, no GPU used"
        memory = "peak resident set of the process (VmHWM, imports included)"
    amp_rows = {spec: plan_of(spec, device) for spec in args.precision if spec.startswith("amp")}
    lines = [
        "# fsmis GPU check",
        "",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- device: {where}",
        f"- torch {torch.__version__}, Python {platform.python_version()}",
        f"- `amp: auto` here: **{auto.path}** ({auto.reason})",
    ]
    for spec, plan in amp_rows.items():
        note = "" if auto.dtype is not None else " (not what auto runs here: bf16 is not native on this device)"
        lines.append(f"- row `{spec}` runs: {plan.path}{note}")
    options = [f"{args.slices} central slices of each" * bool(args.slices), "no evaluation" * args.no_eval,
               "rows interleaved step by step" * args.interleave]
    lines += [
        f"- settings: {args.backbone} at {args.size}x{args.size}, feature_dim {args.feature_dim}, random weights; "
        f"median of {args.steps} steps after {args.warmup}; episodes from phantom case 0, evaluation of case 1 "
        f"(4 organs, oracle protocol)" + "".join(f", {o}" for o in options if o),
        f"- peak_mb: {memory}",
    ]
    if device.type == "cpu":
        with contextlib.suppress(OSError):
            lines.append(f"- load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on "
                         f"{os.cpu_count()} CPUs at the start")
    return lines


def _cell(value, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(results: list[dict]) -> list[str]:
    fp32 = {r["method"]: r["step_ms"] for r in results if r["precision"] == "fp32"}
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in results:
        r = dict(r, x_fp32=r["step_ms"] / fp32[r["method"]] if r["method"] in fp32 else None)
        cells = [_cell(r[c], 3 if c == "x_fp32" else 1) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device) if args.device else P.pick_device()
    cfg = _schema_config()
    lines = header(args, device)
    print("\n".join(lines), flush=True)
    inputs = Inputs(args, cfg)
    results = []
    for name in args.methods:
        t0 = time.perf_counter()
        results += check_method(name, inputs, args, cfg, device)
        print(f"  {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    made = sorted({d["what"] for d in inputs._made.values()})
    wall = time.perf_counter() - t_start
    tail = [f"- pseudo-labels: {'; '.join(made)}", f"- wall time: {wall:.0f} s", "", *table(results)]
    if wall > 300:
        tail.append(f"\nThe check took {wall:.0f} s, over the 5 minutes it is sized for on a GPU.")
    print("\n".join(tail))
    text = "\n".join(lines + tail) + "\n"
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
