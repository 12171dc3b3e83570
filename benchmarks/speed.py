"""Speed and memory of training, evaluation and superpixels, ours beside the reference.

Figures (``--figures``, all by default):

- ``train``: one training step of each method and backbone/input size, exactly the
  step ``fsmis.train`` runs (``fsmis.train.training_step``: forward, weighted query
  cross-entropy + alignment loss + the method's own losses, backward, SGD step, then
  the scheduler step), on the synthetic volume of ``docs/benchmarks.md``
  ('Synthetic input volume': support slice 20, query slice 22, an organ-sized disk or ``--fg small``).
  Median and quartiles of ``--steps`` timed steps after ``--warmup``. Also reported:
  parameters, and parameters left without a gradient by a step (work for unused
  heads would show here).
- ``eval``: one query scan segmented for all four abdominal classes under the oracle
  protocol, through ``fsmis.evaluate.evaluate_scans`` with a ``ModelPredictor``, on
  two phantom cases (``fsmis.data.phantom``; support case 0, query case 1)
  preprocessed to the input size. Throughput = scored (class, query slice) pairs per
  second of the whole call; the metrics' share (surface distances) is given apart.
  Counts: slices encoded for the support and the query, support states computed.
- ``superpixels``: ``fsmis.data.superpixels.compute`` on the anchors' 40-slice volume
  with 1 and 2 worker processes (median per volume); labels must be identical.
- ``demo``: the whole ``snakemake all`` wall time, from a Snakemake log
  (``--demo path/to/.snakemake/log/x.snakemake.log``: last minus first timestamp) or
  a benchmark folder (``--demo results/benchmarks``: the sum of the jobs' ``s``
  column, which is job time, not wall time). Without ``--demo``, the newest log
  under ``.snakemake/log`` that ran to ``(100%) done`` is read, if there is one.

Every configuration runs in its own child process (``python speed.py --child``), so
its peak resident memory (``getrusage`` ``ru_maxrss``, Linux, in MB) belongs to it
alone: ``peak_rss_mb`` is that peak, which includes the import of torch;
``rss_increase_mb`` is the peak minus the resident size after imports and inputs,
before the model is built. On CUDA ``cuda_peak_mb`` is
``torch.cuda.max_memory_allocated``. Python's ``tracemalloc`` does not see torch's
allocations and is not used.

``--reference PATH`` (repeatable) times a checkout of the reference code, fetched by
the user (nothing of it is part of this project), in child processes of the same
run on the same inputs: SSL-ALPNet
(cheng-01037/Self-supervised-Fewshot-Medical-Image-Segmentation) or DSPNet
(tntek/DSPNet), recognised by ``util/seed_init.py``. Its training step is the one of
its ``training.py`` (SGD, MultiStepLR, weighted cross-entropy with ignore 255 +
alignment loss; DSPNet's per-tensor groups with ``cls_unit`` at 1e-4 x lr), its
evaluation the loop of ``validation.py`` (for each class, every slice of the query
scan: support + query through the whole model, argmax), and its superpixels the
``superpix_wrapper`` of ``data/pseudolabel_gen.ipynb`` (SSL-ALPNet's checkout). The
checkout is never edited; at run time, in the child only: ``Tensor.cuda`` and
``Module.cuda`` become the identity, torchvision's ``deeplabv3_resnet101`` builds
random weights without downloading (21 classes, aux head, as its COCO default), and,
where torchvision's compiled operators do not match the installed torch, their fake
registrations are skipped. The reference needs torchvision (and, for DSPNet,
opencv-python-headless < 5), which this project does not install: put them in a
separate folder (``pip install --no-deps --target DIR torchvision==<the version
matching torch> "opencv-python-headless<5"``) and pass ``--reference-libs DIR``. The
reference's trunk exists only as ResNet-101, so only ``deeplabv3_resnet101`` rows
get a reference row. For SSL-ALPNet, the reference model gets our model's weights
(same seed; the names map one to one), so the oracle predictions can be compared:
``note`` gives the share of identical predicted pixels on the scored slices.
``ratio`` is ours / reference time (lower is better; for ``eval`` the time per scan,
i.e. the inverse of the throughput ratio). On a machine that is busy with other work,
``--interleave`` runs our training step and the reference's round-robin in one
process, so both see the same load (times only, no per-model memory).

``--precision amp`` is the ``amp: true`` option: bf16 autocast of the encoder on a
CPU. It pays only on CPUs with native bf16 (AVX512-BF16 or AMX); elsewhere oneDNN
emulates bf16 and it is slower than float32. The table's header line says which
kind of CPU it ran on. ``+cl`` runs the encoder on channels-last tensors.

    python benchmarks/speed.py --out speed.csv                        # everything, defaults
    python benchmarks/speed.py --figures train --configs small_cnn@128 --steps 20
    python benchmarks/speed.py --configs deeplabv3_resnet101@256 --methods ssl_alpnet \\
        --precision fp32 amp --reference ~/src/Self-supervised-Fewshot-Medical-Image-Segmentation \\
        --reference-libs ~/reflibs --out speed.csv
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

DEFAULT_METHODS = ["ssl_alpnet", "panet", "dspnet:code", "dspnet:paper", "iplsl"]
DEFAULT_CONFIGS = ["small_cnn@128", "deeplabv3_resnet101@256"]
FIGURES = ["train", "eval", "superpixels", "demo"]
CLASSES = ["liver", "spleen", "left_kidney", "right_kidney"]
COLUMNS = ["figure", "impl", "method", "backbone", "size", "precision", "threads", "device", "median", "q1", "q3",
           "unit", "throughput", "peak_rss_mb", "rss_increase_mb", "cuda_peak_mb", "counts", "ratio", "note"]
RESULT = "@@speed-result "


# -- arguments ---------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--figures", nargs="+", default=FIGURES, choices=FIGURES)
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS,
                   help="method specs as benchmarks/train_step.py: name[:variant][,key=value...]")
    p.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS,
                   help="backbone@size pairs (small_cnn, resnet50, deeplabv3_resnet101)")
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "amp", "fp32+cl", "amp+cl"],
                   help="amp = the train/evaluate `amp: true` option (bf16 on a CPU); +cl = channels-last "
                        "encoder (model.channels_last)")
    p.add_argument("--steps", type=int, default=7, help="timed training steps (anchors: 7)")
    p.add_argument("--warmup", type=int, default=2, help="untimed training steps first (anchors: 2)")
    p.add_argument("--eval-repeats", type=int, default=1, help="timed evaluations of the scan (after one warm-up)")
    p.add_argument("--eval-warmup", type=int, default=1, help="untimed evaluations first")
    p.add_argument("--fg", choices=["organ", "small"], default="organ",
                   help="training foreground: organ-sized disk (20%% of the slice) or superpixel-sized "
                        "(~1.5k px at 256)")
    p.add_argument("--slices", type=int, default=40, help="slices of the synthetic volume (train, superpixels)")
    p.add_argument("--superpixel-size", type=int, nargs="+", default=[256], help="slice sides for superpixels")
    p.add_argument("--superpixel-repeats", type=int, default=3)
    p.add_argument("--superpixel-workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (anchors: 2)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--phantom-seed", type=int, default=2024, help="the demo dataset's seed by default")
    p.add_argument("--eval-cases", type=int, nargs=2, default=[0, 1], metavar=("SUPPORT", "QUERY"),
                   help="phantom case indices of the support and the query scan")
    p.add_argument("--checkpoint", default=None,
                   help="eval: a trained model.pt (e.g. the demo's) instead of random weights; its method, "
                        "backbone and normalisation are used (pick --configs at its input size, --eval-cases "
                        "outside its training cases)")
    p.add_argument("--demo", default=None, help="Snakemake log file or benchmark folder of a demo `all` run")
    p.add_argument("--reference", action="append", default=[], metavar="PATH",
                   help="checkout of SSL-ALPNet's or DSPNet's reference repository (repeatable)")
    p.add_argument("--reference-libs", default=None, metavar="DIR",
                   help="folder with torchvision (and opencv for DSPNet) for the reference children only")
    p.add_argument("--interleave", action="store_true",
                   help="train figure with --reference: run our precisions and the reference in one process, "
                        "one step each per round (robust ratios on a busy machine; no per-model memory)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per child process")
    p.add_argument("--out", default=None, help="CSV file for the table")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def parse_config(text: str) -> tuple[str, int]:
    backbone, _, size = text.partition("@")
    if not size:
        raise SystemExit(f"--configs: expected backbone@size, got {text!r}")
    return backbone, int(size)


# -- shared inputs ---------------------------------------------------------------------------

def make_volume(n_slices=40, h=256, w=256, seed=0):
    """The synthetic volume of docs/benchmarks.md, 'Synthetic input volume' (0..255 float32)."""
    import numpy as np
    import scipy.ndimage

    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(np.linspace(-1, 1, n_slices), np.linspace(-1, 1, h),
                          np.linspace(-1, 1, w), indexing="ij")
    vol = np.zeros((n_slices, h, w), np.float32)
    body = (y / 0.75) ** 2 + (x / 0.9) ** 2 <= 1.0
    vol[body] = 0.35
    for _ in range(10):
        cz, cy, cx = rng.uniform(-0.8, 0.8), rng.uniform(-0.5, 0.5), rng.uniform(-0.6, 0.6)
        rz, ry, rx = rng.uniform(0.3, 0.9), rng.uniform(0.08, 0.3), rng.uniform(0.08, 0.3)
        blob = ((z - cz) / rz) ** 2 + ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0
        vol[blob & body] = rng.uniform(0.45, 0.8)
    vol[((y - 0.45) / 0.1) ** 2 + (x / 0.08) ** 2 <= 1.0] = 1.0
    vol = scipy.ndimage.gaussian_filter(vol, sigma=(0.5, 2.0, 2.0))
    vol += rng.normal(0.0, 0.04, vol.shape).astype(np.float32)
    return ((vol - vol.min()) / (vol.max() - vol.min()) * 255.0).astype(np.float32)


def disk(size: int, cy: float, cx: float, r: float):
    import numpy as np

    yy, xx = np.mgrid[:size, :size]
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= r ** 2).astype(np.float32)


def train_inputs(size: int, fg: str, n_slices: int, seed: int) -> dict:
    """z-normalised support/query slices tiled to 3 channels, support foreground and
    query label (docs/benchmarks.md) as torch tensors on the CPU."""
    import math

    import torch

    vol = make_volume(n_slices, size, size, seed)
    vol = (vol - vol.mean()) / vol.std()
    r = 0.25 * size if fg == "organ" else math.sqrt(1517.0 / math.pi) * size / 256
    cy = cx = 0.625 * size
    sup_fg = disk(size, cy, cx, r)
    qry = disk(size, cy - 0.03 * size, cx - 0.02 * size, r)
    z_s, z_q = n_slices // 2, n_slices // 2 + 2

    def tile(a):
        return torch.from_numpy(a)[None, None].expand(1, 3, size, size).contiguous()

    return {"sup_img": tile(vol[z_s]), "qry_img": tile(vol[z_q]), "sup_fg": torch.from_numpy(sup_fg)[None],
            "qry_label": torch.from_numpy(qry)[None]}


def eval_scans(size: int, phantom_seed: int, cases=(0, 1), stats=None):
    """Support and query phantom cases as ``fsmis.evaluate.Scan``, preprocessed to
    ``size`` and z-normalised with ``stats`` (default: their joint statistics)."""
    import numpy as np
    import SimpleITK as sitk

    from fsmis.data import normalize, phantom
    from fsmis.data.preprocess import preprocess_case
    from fsmis.evaluate import Scan
    from fsmis.labels import class_id

    lut = np.zeros(256, np.uint8)
    for raw, name in phantom.PHANTOM_LABEL_MAP.items():
        lut[raw] = class_id(name)
    raw = []
    for index in cases:
        image, label = phantom.generate_case(index, phantom_seed)
        image, label = preprocess_case(image, label, "CT", {"image_size": size})
        sx, sy, sz = label.GetSpacing()
        raw.append((sitk.GetArrayFromImage(image).astype(np.float32), lut[sitk.GetArrayFromImage(label)],
                    (sz, sy, sx)))
    stats = stats or normalize.ct_statistics([r[0] for r in raw])
    return [Scan(f"phantom_{i:03d}", normalize.normalize(img, "CT", stats), lab, spacing)
            for i, (img, lab, spacing) in zip(cases, raw)]


# -- child side ------------------------------------------------------------------------------

def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def quartiles(values):
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return med, q1, q3


def sync(device):
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def memory(job: dict, base: float) -> dict:
    import torch

    out = {"peak_rss_mb": round(peak_rss_mb(), 1), "rss_increase_mb": round(peak_rss_mb() - base, 1)}
    if str(job["device"]).startswith("cuda"):
        out["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    return out


def method_params(spec: str) -> tuple[str, dict]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_step import method_params as parse

    return parse(spec)


def build_ours(spec: str, backbone: str, seed: int):
    import torch

    from fsmis.models import registry

    name, params = method_params(spec)
    dim = 64 if backbone == "small_cnn" else 256
    torch.manual_seed(seed)
    return registry.build(name, {"backbone": backbone, "feature_dim": dim}, params)


TRAIN_CFG = {"lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4, "lr_step": 1000, "lr_gamma": 0.95, "steps": 100000,
             "bg_weight": 0.05, "fg_weight": 1.0, "align_weight": 1.0}


def ours_stepper(job: dict, ep: dict, stack):
    """Our model for ``job`` and a function running one training step of it (the
    encoder's precision context is entered on ``stack``)."""
    import torch

    from fsmis import precision as P
    from fsmis import train as T

    device = torch.device(job["device"])
    model = build_ours(job["method"], job["backbone"], job["seed"]).to(device).train()
    opt, sched = T.make_optimizer(model, TRAIN_CFG)
    dtype = P.amp_dtype(job["precision"].startswith("amp"), device)
    scaler = P.make_grad_scaler(dtype, device)
    with_label = bool(getattr(model, "takes_query_label", False))
    stack.enter_context(P.autocast_encoder(model, dtype, job["precision"].endswith("+cl")))

    def step():
        T.training_step(model, ep, TRAIN_CFG, opt, scaler, with_label)
        sched.step()
    return model, step


def timed_steps(steps: dict, job: dict, device) -> dict:
    """Round-robin: each round runs one step of every stepper; ``{name: [ms, ...]}``
    of the timed rounds (a failing step, the reference's "faulty batch", is skipped)."""
    times = {name: [] for name in steps}
    errors = {name: [0, None] for name in steps}
    for i in range(job["warmup"] + job["steps"]):
        for name, step in steps.items():
            sync(device)
            t0 = time.perf_counter()
            try:
                step()
            except Exception as exc:  # noqa: BLE001 (the reference's own handler catches everything)
                errors[name] = [errors[name][0] + 1, exc]
                continue
            sync(device)
            if i >= job["warmup"]:
                times[name].append((time.perf_counter() - t0) * 1e3)
    for name, values in times.items():
        if not values:
            raise RuntimeError(f"every {name} step failed; last error: {errors[name][1]!r}")
    return times, {name: e[0] for name, e in errors.items()}


def child_train_ours(job: dict) -> dict:
    import contextlib

    import torch

    device = torch.device(job["device"])
    ep = {k: v.to(device) for k, v in train_inputs(job["size"], job["fg"], job["slices"], job["seed"]).items()}
    base = rss_mb()
    with contextlib.ExitStack() as stack:
        model, step = ours_stepper(job, ep, stack)
        step()
        no_grad = sum(p.numel() for p in model.parameters() if p.grad is None)
        times, _ = timed_steps({"ours": step}, job, device)
    med, q1, q3 = quartiles(times["ours"])
    n_params = sum(p.numel() for p in model.parameters())
    return {"median": med, "q1": q1, "q3": q3, "unit": "ms/step", **memory(job, base),
            "counts": f"params={n_params} params_without_grad={no_grad}"}


def child_eval_ours(job: dict) -> dict:
    import numpy as np
    import torch

    from fsmis import checkpoint as ckpt
    from fsmis import evaluate as E
    from fsmis.labels import class_id
    from fsmis.models import registry

    state = ckpt.load(job["checkpoint"]) if job.get("checkpoint") else None
    stats = state["meta"].get("norm") if state else None
    support, query = eval_scans(job["size"], job["phantom_seed"], job["eval_cases"], stats)
    classes = {n: class_id(n) for n in CLASSES}
    base = rss_mb()
    if state:
        meta = state["meta"]
        model = registry.build(meta["architecture"], meta["model"], meta["method_params"])
        model.load_state_dict(state["state_dict"])
    else:
        model = build_ours(job["method"], job["backbone"], job["seed"])
    device = torch.device(job["device"])
    amp, channels_last = job["precision"].startswith("amp"), job["precision"].endswith("+cl")
    metric_time = [0.0]
    plain_metrics = E.M.case_metrics

    def timed_metrics(*a, **k):
        t0 = time.perf_counter()
        try:
            return plain_metrics(*a, **k)
        finally:
            metric_time[0] += time.perf_counter() - t0

    E.M.case_metrics = timed_metrics
    times, metrics, predictor, rows, preds = [], [], None, None, None
    for i in range(job["eval_warmup"] + job["eval_repeats"]):
        predictor = E.ModelPredictor(model, device, amp=amp, channels_last=channels_last)
        metric_time[0] = 0.0
        sync(device)
        t0 = time.perf_counter()
        rows, preds = E.evaluate_scans(predictor, support, [query], classes, ("oracle",), n_parts=3)
        sync(device)
        if i >= job["eval_warmup"]:
            times.append(time.perf_counter() - t0)
            metrics.append(metric_time[0])
    scored = sum(r["slices_scored"] for r in rows)
    med = statistics.median(times)
    if job.get("save_predictions"):
        np.save(job["save_predictions"], preds["oracle"][query.case])
    dice = {r["class"]: round(float(r["dice"]), 3) for r in rows}
    return {"median": med, "q1": min(times), "q3": max(times), "unit": "s/scan", "throughput": scored / med,
            **memory(job, base),
            "counts": (f"scored={scored} support_encoded={predictor.encoded['support']} "
                       f"query_encoded={predictor.encoded['query']} support_states={predictor.support_states} "
                       f"query_slices={query.label.shape[0]}"),
            "note": f"metrics {statistics.median(metrics):.2f} s of it; Dice {dice}"}


def child_superpixels_ours(job: dict) -> dict:
    import numpy as np

    from fsmis.data import superpixels as S

    vol = make_volume(job["slices"], job["size"], job["size"], job["seed"])
    base = rss_mb()
    S.compute(vol[:3], "CT", {}, workers=1)  # warm-up
    out, rows = {}, []
    for w in job["workers"]:
        S.compute(vol, "CT", {}, workers=w)
        times = []
        for _ in range(job["repeats"]):
            t0 = time.perf_counter()
            out[w] = S.compute(vol, "CT", {}, workers=w)
            times.append((time.perf_counter() - t0) * 1e3)
        med, q1, q3 = quartiles(times)
        rows.append({"workers": w, "median": med, "q1": q1, "q3": q3})
    first = out[job["workers"][0]]
    same = all(np.array_equal(first, o) for o in out.values())
    if job.get("save_labels"):
        np.save(job["save_labels"], first)
    summary = S.summary(first)
    return {"rows": rows, "identical": same, **memory(job, base),
            "note": f"{summary['per_slice_mean']:.1f} superpixels/slice, median {summary['median_size_px']:.0f} px"}


# -- reference (child side) ----------------------------------------------------------------

def reference_method(spec: str) -> str | None:
    """The reference a method spec is timed against: SSL-ALPNet's for ssl_alpnet,
    DSPNet's for dspnet's code variant (the default); none for the others."""
    name, params = method_params(spec)
    if name == "dspnet" and params.get("variant", "code") != "code":
        return None
    return name if name in ("ssl_alpnet", "dspnet") else None


def reference_kind(path: str) -> str:
    root = Path(path)
    if not (root / "models" / "grid_proto_fewshot.py").exists():
        raise SystemExit(f"--reference {path}: no models/grid_proto_fewshot.py there; expected a checkout of "
                         "cheng-01037/Self-supervised-Fewshot-Medical-Image-Segmentation or tntek/DSPNet")
    return "dspnet" if (root / "util" / "seed_init.py").exists() else "ssl_alpnet"


def import_reference(path: str, libs: str | None):
    """``FewShotSeg`` of the checkout, with the run-time shims of the module docstring."""
    import torch
    from torch import nn

    if libs:
        sys.path.insert(0, str(Path(libs).resolve()))
    kind = reference_kind(path)
    from parity.common import import_torchvision  # the parity harness's tolerant import

    missing = [] if import_torchvision() is not None else ["torchvision"]
    if kind == "dspnet":
        try:
            import cv2  # noqa: F401
        except ImportError:
            missing.append("opencv-python-headless<5 (cv2)")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        missing.append("matplotlib")
    if missing:
        raise SystemExit(
            f"--reference {path} ({kind}) needs {', '.join(missing)}, which this project does not install. "
            f"Install into a separate folder, e.g. `pip install --no-deps --target DIR "
            f"torchvision=={tv_version(torch.__version__)} \"opencv-python-headless<5\"` (torchvision matching torch "
            f"{torch.__version__}), and pass --reference-libs DIR.")
    import torchvision

    segmentation = torchvision.models.segmentation
    plain_builder = segmentation.deeplabv3_resnet101

    def builder(*_a, **_k):  # random init, no download, the COCO default's layout
        return plain_builder(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)

    segmentation.deeplabv3_resnet101 = builder
    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self
    sys.path.insert(0, str(Path(path).resolve()))
    import importlib

    module = importlib.import_module("models.grid_proto_fewshot")
    return kind, module.FewShotSeg


def tv_version(torch_version: str) -> str:
    """The torchvision release built with a torch 2.x release (0.(x+15).*)."""
    m = re.match(r"2\.(\d+)", torch_version)
    return f"0.{int(m.group(1)) + 15}.*" if m else "<matching>"


def build_reference(path, libs, size, seed, copy_ours: str | None):
    import torch

    kind, FewShotSeg = import_reference(path, libs)
    cfg = {"which_model": "dlfcn_res101", "cls_name": "grid_proto", "align": True, "proto_grid_size": 8,
           "feature_hw": [32, 32], "use_coco_init": False}
    torch.manual_seed(seed)
    model = FewShotSeg(pretrained_path=None, cfg=cfg)
    note = "random init"
    if copy_ours:
        ours = build_ours(copy_ours, "deeplabv3_resnet101", seed).state_dict()
        mapped = {}
        for k, v in ours.items():
            if k.startswith("backbone.localconv."):
                mapped["encoder." + k[len("backbone."):]] = v
            elif k.startswith("backbone."):
                mapped["encoder.backbone." + k[len("backbone."):]] = v
        missing = model.load_state_dict(mapped, strict=False)
        bad = [k for k in missing.missing_keys
               if k.startswith("encoder.backbone.") and not k.startswith(("encoder.backbone.aux",))
               or k == "encoder.localconv.weight"]
        if bad or missing.unexpected_keys:
            raise RuntimeError(f"weight copy failed: missing {bad[:5]}, unexpected {missing.unexpected_keys[:5]}")
        note = f"trunk weights of our {copy_ours}" + ("" if kind == "ssl_alpnet" else ", own head init")
    return kind, model, note


def reference_optimizer(kind, model):
    import torch

    groups = []
    for k, v in model.named_parameters():
        lr = 1e-3 * (1e-4 if kind == "dspnet" and k.startswith("cls_unit") else 1.0)
        groups.append({"params": v, "lr": lr, "momentum": 0.9, "weight_decay": 5e-4})
    if kind == "ssl_alpnet":
        groups = [{"params": list(model.parameters()), "lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4}]
    opt = torch.optim.SGD(groups)
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(range(1000, 100001, 1000)), gamma=0.95)


def reference_stepper(job: dict, ep: dict):
    """The reference model and one step of its ``training.py``; a random-init model may
    leave no background cell for the alignment loss (the reference skips such "faulty
    batches"), so it is first primed with steps without that loss until a full step
    runs (at most 30), as the reference measurements did (docs/benchmarks.md)."""
    import torch
    from torch import nn

    kind, model, note = build_reference(job["reference"], job["libs"], job["size"], job["seed"], None)
    model.train()
    opt, sched = reference_optimizer(kind, model)
    criterion = nn.CrossEntropyLoss(ignore_index=255, weight=torch.tensor([0.05, 1.0]))
    fg = ep["sup_fg"]
    sup, fgm, bgm, qry = [[ep["sup_img"]]], [[fg]], [[1.0 - fg]], [ep["qry_img"]]
    label = ep["qry_label"].long()

    def step(align=True):
        model.config["align"] = align
        opt.zero_grad()
        pred, align_loss, _, _ = model(sup, fgm, bgm, qry, isval=False, val_wsize=None)
        loss = criterion(pred, label) + align_loss
        loss.backward()
        opt.step()
        sched.step()

    primed = 0
    while primed < 30:
        try:
            step()
            break
        except Exception:  # noqa: BLE001
            for _ in range(3):
                step(align=False)
            primed += 3
    return kind, model, note, step, primed


def child_train_reference(job: dict) -> dict:
    ep = train_inputs(job["size"], job["fg"], job["slices"], job["seed"])
    base = rss_mb()
    kind, model, note, step, primed = reference_stepper(job, ep)
    times, skipped = timed_steps({"reference": step}, job, "cpu")
    med, q1, q3 = quartiles(times["reference"])
    n_params = sum(p.numel() for p in model.parameters())
    return {"median": med, "q1": q1, "q3": q3, "unit": "ms/step", **memory(job, base),
            "counts": f"params={n_params} skipped={skipped['reference']} primed={primed}", "note": f"{kind}, {note}"}


def child_train_pair(job: dict) -> dict:
    """``--interleave``: our precisions and the reference in one process, one step of
    each per round, so a busy machine slows them alike (no per-model memory)."""
    import contextlib

    ep = train_inputs(job["size"], job["fg"], job["slices"], job["seed"])
    with contextlib.ExitStack() as stack:
        steps = {}
        for precision in job["precisions"]:
            _, steps[precision] = ours_stepper({**job, "precision": precision}, ep, stack)
        kind, _, note, steps["reference"], primed = reference_stepper(job, ep)
        times, skipped = timed_steps(steps, job, "cpu")
    out = {}
    for name, values in times.items():
        med, q1, q3 = quartiles(values)
        out[name] = {"median": med, "q1": q1, "q3": q3, "unit": "ms/step", "note": "interleaved round-robin"}
    out["reference"]["counts"] = f"skipped={skipped['reference']} primed={primed}"
    out["reference"]["note"] += f"; {kind}, {note}"
    return out


def child_eval_reference(job: dict) -> dict:
    """The loop of the reference ``validation.py`` on the same two scans."""
    import numpy as np
    import torch

    from fsmis.labels import class_id
    from fsmis.protocols import chunk_of, extent, support_slices

    support, query = eval_scans(job["size"], job["phantom_seed"], job["eval_cases"])
    base = rss_mb()
    kind, model, note = build_reference(job["reference"], job["libs"], job["size"], job["seed"], job["method"])
    model.eval()

    def tile(a):
        return torch.from_numpy(np.ascontiguousarray(a))[None].expand(3, *a.shape).contiguous()

    def run():
        pred_vol = np.zeros(query.label.shape, np.uint8)
        forwards = scored = 0
        with torch.no_grad():
            for name in CLASSES:
                cid = class_id(name)
                zs = support_slices(support.label, cid, 3)
                s_img = [tile(support.image[z]) for z in zs]
                s_fg = [torch.from_numpy((support.label[z] == cid).astype(np.float32)) for z in zs]
                ext = extent(query.label, cid)
                for z in range(query.label.shape[0]):  # every slice of the query scan
                    part = chunk_of(z, ext[0], ext[1], 3) if ext else 0
                    fg = s_fg[part][None]
                    out = model([[s_img[part][None]]], [[fg]], [[1.0 - fg]], [tile(query.image[z])[None]],
                                isval=True, val_wsize=2)[0]
                    pred = np.array(out.argmax(dim=1)[0].cpu())
                    forwards += 1
                    if ext and ext[0] <= z <= ext[1]:  # scored only inside the class's extent
                        pred_vol[z][pred == 1] = cid
                        scored += 1
        return pred_vol, forwards, scored

    times = []
    for i in range(job["eval_warmup"] + job["eval_repeats"]):
        t0 = time.perf_counter()
        pred_vol, forwards, scored = run()
        if i >= job["eval_warmup"]:
            times.append(time.perf_counter() - t0)
    if job.get("save_predictions"):
        np.save(job["save_predictions"], pred_vol)
    med = statistics.median(times)
    return {"median": med, "q1": min(times), "q3": max(times), "unit": "s/scan", "throughput": scored / med,
            **memory(job, base), "counts": f"scored={scored} forwards={forwards}", "note": f"{kind}, {note}"}


def child_superpixels_reference(job: dict) -> dict:
    """``superpix_wrapper`` of the checkout's notebook, executed from its cells."""
    import numpy as np

    nb = Path(job["reference"]) / "data" / "pseudolabel_gen.ipynb"
    if not nb.exists():
        raise SystemExit(f"{nb} not found: the reference superpixels come from SSL-ALPNet's checkout")
    cells = [c for c in json.loads(nb.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"]
    code = ["".join(c["source"]) for c in cells]
    setup = next(c for c in code if "import skimage" in c)
    wrapper = next(c for c in code if "def superpix_wrapper" in c)
    ns: dict = {}
    exec("\n".join(line for line in setup.splitlines() if not line.lstrip().startswith("%")), ns)
    exec(wrapper, ns)
    vol = make_volume(job["slices"], job["size"], job["size"], job["seed"])
    base = rss_mb()
    ns["superpix_wrapper"](vol[:3])
    times = []
    for _ in range(job["repeats"]):
        t0 = time.perf_counter()
        _, seg = ns["superpix_wrapper"](vol, fg_thresh=1e-4)
        times.append((time.perf_counter() - t0) * 1e3)
    if job.get("save_labels"):
        np.save(job["save_labels"], seg.astype(np.int32))
    med, q1, q3 = quartiles(times)
    return {"rows": [{"workers": 1, "median": med, "q1": q1, "q3": q3}], **memory(job, base)}


CHILDREN = {
    ("train", "ours"): child_train_ours, ("eval", "ours"): child_eval_ours,
    ("superpixels", "ours"): child_superpixels_ours, ("train", "reference"): child_train_reference,
    ("eval", "reference"): child_eval_reference,
    ("train", "pair"): child_train_pair, ("superpixels", "reference"): child_superpixels_reference,
}


def run_child(job: dict) -> dict:
    import torch

    torch.set_num_threads(job["threads"])
    return CHILDREN[job["figure"], job["impl"]](job)


# -- parent side ---------------------------------------------------------------------------

def spawn(job: dict, timeout: float) -> dict:
    env = dict(os.environ)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace",
                              timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT):])
    tail = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {proc.returncode}: {tail}"}


def row_of(job: dict, result: dict, **extra) -> dict:
    row = {c: "" for c in COLUMNS}
    row.update({k: job.get(k, "") for k in ("figure", "impl", "method", "backbone", "size", "precision", "threads",
                                            "device")})
    for k in ("median", "q1", "q3", "unit", "throughput", "peak_rss_mb", "rss_increase_mb", "cuda_peak_mb",
              "counts", "note"):
        if k in result:
            row[k] = result[k]
    if "error" in result:
        row["note"] = f"FAILED: {result['error']}"
    row.update(extra)
    return row


def same_partition(a, b) -> bool:
    """Two label maps split the pixels into the same regions (ids may differ)."""
    import numpy as np

    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1).shape[1]
    return pairs == np.unique(a).size == np.unique(b).size


def compare_predictions(ours_path: str, other_path: str, other: str = "reference") -> str:
    """Agreement of two oracle label volumes on the slices either predicts on."""
    import numpy as np

    a, b = np.load(ours_path), np.load(other_path)
    used = ((a > 0) | (b > 0)).reshape(a.shape[0], -1).any(1)
    same = float((a[used] == b[used]).mean()) if used.any() else 1.0
    if other == "reference":
        return (f"predictions identical to ours on {100 * same:.3f}% of the voxels of {int(used.sum())} slices "
                f"(reference foreground {100 * float((b > 0).mean()):.1f}%)")
    return f"identical on {100 * same:.3f}% of the voxels of {int(used.sum())} slices, {int((a != b).sum())} differ"


def demo_row(path: str | None) -> dict | None:
    row = {c: "" for c in COLUMNS}
    row.update({"figure": "demo", "impl": "ours", "method": "all", "unit": "s"})
    if path is None:
        logs = sorted(glob.glob(".snakemake/log/*.snakemake.log"), key=os.path.getmtime, reverse=True)
        finished = [p for p in logs if "(100%) done" in Path(p).read_text(errors="replace")]
        path = next((p for p in finished if re.search(r"^all\s+1\s*$", Path(p).read_text(errors="replace"), re.M)),
                    None)
        if path is None:
            return None
    p = Path(path)
    if p.is_dir():
        seconds, by_rule = 0.0, {}
        for tsv in p.rglob("*.tsv"):
            lines = tsv.read_text(encoding="utf-8").splitlines()
            if len(lines) < 2:
                continue
            s = float(dict(zip(lines[0].split("\t"), lines[1].split("\t")))["s"])
            seconds += s
            rule = tsv.relative_to(p).parts[0]
            by_rule[rule] = by_rule.get(rule, 0.0) + s
        top = ", ".join(f"{k} {v:.0f}" for k, v in sorted(by_rule.items(), key=lambda kv: -kv[1])[:4])
        row.update({"median": round(seconds, 1), "note": f"sum of job seconds in {p} (not wall time): {top}"})
        return row
    text = p.read_text(errors="replace")
    stamps = [datetime.strptime(m, "%a %b %d %H:%M:%S %Y") for m in re.findall(r"^\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]",
                                                                              text, re.M)]
    command = re.search(r"Command: (.*)", text)
    if len(stamps) < 2:
        row["note"] = f"{p}: no job timestamps"
        return row
    done = re.findall(r"(\d+) of (\d+) steps \((\d+)%\) done", text)
    cores = re.search(r"Provided cores: (\d+)", text)
    row.update({"median": (stamps[-1] - stamps[0]).total_seconds(), "threads": cores.group(1) if cores else "",
                "counts": f"jobs={done[-1][0]}/{done[-1][1]}" if done else "",
                "note": f"wall time of {p}" + (f" ({command.group(1).split('__main__.py')[-1].strip()})"
                                               if command else "")})
    return row


def fmt(v, digits=1):
    if v == "" or v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def print_table(rows: list[dict], machine: str) -> None:
    print(f"\nspeed benchmark on {machine}")
    head = (f"{'figure':<12}{'impl':<10}{'method':<14}{'backbone':<21}{'size':>5} {'prec':<8}{'median':>10}"
            f"{'q1':>9}{'q3':>9} {'unit':<9}{'thru/s':>8}{'peakMB':>8}{'+MB':>7}{'ratio':>7}  counts / note")
    print(head)
    print("-" * len(head))
    for r in rows:
        digits = 2 if r["unit"] in ("s/scan", "s") else 1
        print(f"{r['figure']:<12}{r['impl']:<10}{str(r['method'])[:13]:<14}{str(r['backbone'])[:20]:<21}"
              f"{fmt(r['size']):>5} {str(r['precision'])[:7]:<8}{fmt(r['median'], digits):>10}{fmt(r['q1'], digits):>9}"
              f"{fmt(r['q3'], digits):>9} {r['unit']:<9}{fmt(r['throughput'], 2):>8}{fmt(r['peak_rss_mb'], 0):>8}"
              f"{fmt(r['rss_increase_mb'], 0):>7}{fmt(r['ratio'], 3):>7}  "
              f"{' '.join(x for x in (r['counts'], r['note']) if x)}")


def machine_line(device: str) -> str:
    import platform

    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    dev = torch.cuda.get_device_name(0) if device.startswith("cuda") and torch.cuda.is_available() else "no GPU used"
    from fsmis.precision import cpu_has_fast_bf16

    bf16 = "native bf16 (AVX512-BF16/AMX)" if cpu_has_fast_bf16() else "no native bf16 (no AVX512-BF16, no AMX)"
    return (f"{cpu}, {os.cpu_count()} cores, {bf16}, {dev}, torch {torch.__version__}, "
            f"python {platform.python_version()}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        result = run_child(json.loads(args.child))
        print(RESULT + json.dumps(result), flush=True)
        return 0
    refs = [(path, reference_kind(path)) for path in args.reference]
    common = {"threads": args.threads, "device": args.device, "seed": args.seed, "fg": args.fg, "slices": args.slices,
              "phantom_seed": args.phantom_seed, "steps": args.steps, "warmup": args.warmup,
              "eval_repeats": args.eval_repeats, "eval_warmup": args.eval_warmup, "libs": args.reference_libs,
              "eval_cases": args.eval_cases}
    configs = [parse_config(c) for c in args.configs]
    rows: list[dict] = []
    tmp = Path(tempfile.mkdtemp(prefix="fsmis-speed-"))

    def run(job):
        t0 = time.perf_counter()
        label = " ".join(str(job.get(k, "")) for k in ("figure", "impl", "method", "backbone", "size", "precision"))
        print(f"... {label}", end="", flush=True)
        result = spawn(job, args.timeout)
        print(f" ({time.perf_counter() - t0:.0f} s){' FAILED: ' + result['error'] if 'error' in result else ''}",
              flush=True)
        return result

    for figure in ("train", "eval"):
        if figure not in args.figures:
            continue
        for backbone, size in configs:
            for spec in args.methods:
                pair_refs = [(path, kind) for path, kind in refs
                             if backbone == "deeplabv3_resnet101" and reference_method(spec) == kind]
                if figure == "train" and args.interleave and pair_refs:
                    for path, kind in pair_refs:
                        job = {**common, "figure": "train", "impl": "pair", "method": spec, "backbone": backbone,
                               "size": size, "precision": "fp32", "precisions": args.precision, "reference": path,
                               "kind": kind}
                        res = run(job)
                        if "error" in res:
                            rows.append(row_of(job, res))
                            continue
                        ref = res["reference"]
                        for precision in args.precision:
                            r = res[precision]
                            rows.append(row_of({**job, "impl": "ours", "precision": precision}, r,
                                               ratio=round(r["median"] / ref["median"], 3)))
                        rows.append(row_of({**job, "impl": "reference"}, ref))
                    continue
                ours = {}
                for precision in args.precision:
                    job = {**common, "figure": figure, "impl": "ours", "method": spec, "backbone": backbone,
                           "size": size, "precision": precision}
                    if figure == "eval" and args.checkpoint:
                        job["checkpoint"] = args.checkpoint
                        job["method"] = f"{spec} (model.pt)"
                    if figure == "eval":
                        job["save_predictions"] = str(tmp / f"ours-{spec}-{backbone}-{size}-{precision}.npy")
                    ours[precision] = (job, run(job))
                if figure == "eval" and "median" in ours.get("fp32", ({}, {}))[1]:
                    for precision, (ojob, res) in ours.items():
                        if precision != "fp32" and "median" in res:
                            res["note"] += "; vs fp32: " + compare_predictions(ours["fp32"][0]["save_predictions"],
                                                                             ojob["save_predictions"], "fp32")
                ref_rows = []
                for path, kind in refs:
                    if backbone != "deeplabv3_resnet101" or reference_method(spec) != kind:
                        continue
                    job = {**common, "figure": figure, "impl": "reference", "method": spec, "backbone": backbone,
                           "size": size, "precision": "fp32", "reference": path, "kind": kind}
                    if figure == "eval":
                        job["save_predictions"] = str(tmp / f"ref-{spec}-{backbone}-{size}.npy")
                    ref = run(job)
                    ref_rows.append(row_of(job, ref))
                    for _, res in ours.values():
                        if "median" in res and "median" in ref:
                            res["ratio"] = round(res["median"] / ref["median"], 3)
                    if figure == "eval" and "median" in ref and "median" in ours.get("fp32", ({}, {}))[1] \
                            and not args.checkpoint:
                        ref_rows[-1]["note"] += "; " + compare_predictions(ours["fp32"][0]["save_predictions"],
                                                                           job["save_predictions"])
                rows += [row_of(ojob, res, ratio=res.get("ratio", "")) for ojob, res in ours.values()] + ref_rows

    if "superpixels" in args.figures:
        for size in args.superpixel_size:
            job = {**common, "figure": "superpixels", "impl": "ours", "method": "felzenszwalb", "backbone": "",
                   "size": size, "precision": "", "workers": args.superpixel_workers,
                   "repeats": args.superpixel_repeats, "save_labels": str(tmp / f"sp-ours-{size}.npy")}
            res = run(job)
            ref_res = None
            for path, kind in refs:
                if kind == "ssl_alpnet":
                    rjob = {**job, "impl": "reference", "reference": path,
                            "save_labels": str(tmp / f"sp-ref-{size}.npy")}
                    ref_res = run(rjob)
            if "error" in res:
                rows.append(row_of(job, res))
            for r in res.get("rows", []):
                extra = {"threads": r["workers"], "median": r["median"], "q1": r["q1"], "q3": r["q3"],
                         "unit": "ms/volume",
                         "note": f"workers={r['workers']}; labels identical across workers: {res['identical']}; "
                                 f"{res['note']}"}
                if ref_res and "rows" in ref_res:
                    extra["ratio"] = round(r["median"] / ref_res["rows"][0]["median"], 3)
                rows.append(row_of(job, res, **extra))
            if ref_res is not None:
                rjob = {**job, "impl": "reference"}
                if "rows" in ref_res:
                    import numpy as np

                    ours_sp, ref_sp = np.load(job["save_labels"]), np.load(str(tmp / f"sp-ref-{size}.npy"))
                    inside = ref_sp > 0
                    same = all(same_partition(o[m], r[m]) for o, r, m in zip(ours_sp, ref_sp, inside))
                    r = ref_res["rows"][0]
                    rows.append(row_of(rjob, ref_res, threads=1, median=r["median"], q1=r["q1"], q3=r["q3"],
                                       unit="ms/volume",
                                       note="superpix_wrapper (felzenszwalb + body mask + relabel loop); same "
                                            f"superpixels as ours where the reference keeps them: {same}"
                                            + ("" if size == 256 else
                                               f" (min_size 400 there, {400 * size * size // 65536} here)")))
                else:
                    rows.append(row_of(rjob, ref_res))

    if "demo" in args.figures:
        row = demo_row(args.demo)
        if row is not None:
            rows.append(row)
        else:
            print("demo: no finished Snakemake log found (pass --demo LOG_OR_BENCHMARK_DIR)")

    print_table(rows, machine_line(args.device))
    if args.out:
        with open(args.out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
