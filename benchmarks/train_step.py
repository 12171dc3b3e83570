"""Time one training step of each method side by side, in one process.

A step is ``fsmis.train.training_step`` itself: forward (support + query through the
backbone, method scores, alignment loss), weighted query cross-entropy + alignment
loss plus any other loss the method returns (IPLSL's self-learning loss, given the query
label), backward, SGD step (lr 1e-3, momentum 0.9, weight decay 5e-4). Every method
sees the same random episode (images, a support mask and a query label); the methods
run round-robin, one step each per round, so drifts in machine speed hit them alike.
Reported: the median of ``--steps`` timed rounds after ``--warmup`` rounds, the
quartiles, and the ratio of each median to SSL-ALPNet's.

    python benchmarks/train_step.py                       # demo: small_cnn, 128 px, 1 thread
    python benchmarks/train_step.py --backbone deeplabv3_resnet101 --size 256 --steps 5
    python benchmarks/train_step.py --methods ssl_alpnet iplsl iplsl,deep_path=false \
        iplsl,interaction=false iplsl,self_learning=false iplsl,boundary=false   # IPLSL ablation rows
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time

import torch
from speed import TRAIN_CFG  # one definition of the paper's step settings in benchmarks/

from fsmis import train as training_loop
from fsmis.models import registry

DEFAULT_METHODS = ["ssl_alpnet", "panet", "dspnet:code", "dspnet:paper", "iplsl"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=128, help="image side in pixels")
    p.add_argument("--backbone", default="small_cnn", help="small_cnn | deeplabv3_resnet101 | resnet50")
    p.add_argument("--feature-dim", type=int, default=None,
                   help="feature channels (default: 64 for small_cnn, 256 otherwise)")
    p.add_argument("--steps", type=int, default=30, help="timed rounds")
    p.add_argument("--warmup", type=int, default=5, help="untimed rounds first")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--fg-fraction", type=float, default=0.2,
                   help="support/query foreground area as a fraction of the image (0.2 at 32x32 "
                        "features gives 2 DSPNet clusters; below ~0.15 DSPNet uses its one-prototype path)")
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS,
                   help="method names; 'dspnet:<variant>' for a DSPNet variant, ',key=value' appended "
                        "for other constructor keywords (e.g. dspnet:code,ran_grad=false)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="CSV file for the table")
    return p.parse_args(argv)


def episode(size: int, fg_fraction: float, device, seed: int) -> dict:
    """Random images and an elliptic foreground of about ``fg_fraction`` of the image,
    shifted between support and query."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    # ellipse with semi-axes a, 1.3a: area pi * 1.3 a^2 = fraction * size^2
    a = (fg_fraction * size * size / (torch.pi * 1.3)) ** 0.5

    def blob(cy, cx):
        return ((((yy - cy) / (1.3 * a)) ** 2 + ((xx - cx) / a) ** 2) <= 1).float()[None]

    c = size / 2
    return {
        "sup_img": torch.randn(1, 3, size, size, generator=g).to(device),
        "qry_img": torch.randn(1, 3, size, size, generator=g).to(device),
        "sup_fg": blob(c, c).to(device),
        "qry_label": blob(c + size / 16, c - size / 16).to(device),
    }


def method_params(spec: str) -> tuple[str, dict]:
    """``name[:variant][,key=value...]`` -> ``(name, constructor keywords)``."""
    head, *pairs = spec.split(",")
    name, _, variant = head.partition(":")
    params = {"variant": variant} if variant else {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        params[key] = {"true": True, "false": False}.get(value.lower(), value)
        if isinstance(params[key], str):
            try:
                params[key] = float(value) if any(ch in value for ch in ".e") else int(value)
            except ValueError:
                pass
    return name, params


def build(spec: str, args):
    name, params = method_params(spec)
    dim = args.feature_dim or (64 if args.backbone == "small_cnn" else 256)
    torch.manual_seed(args.seed)
    model = registry.build(name, {"backbone": args.backbone, "feature_dim": dim}, params).to(args.device).train()
    opt, _ = training_loop.make_optimizer(model, TRAIN_CFG)  # the paper's SGD, as fsmis.train builds it
    return model, opt


def step(model, opt, ep) -> float:
    """One ``fsmis.train.training_step`` (the library's own step), timed."""
    if ep["sup_img"].is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    training_loop.training_step(model, ep, TRAIN_CFG, opt, with_label=model.takes_query_label)
    if ep["sup_img"].is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    ep = episode(args.size, args.fg_fraction, args.device, args.seed)
    runs = {spec: build(spec, args) for spec in args.methods}
    times = {spec: [] for spec in args.methods}
    for r in range(args.warmup + args.steps):
        for spec, (model, opt) in runs.items():
            t = step(model, opt, ep)
            if r >= args.warmup:
                times[spec].append(t * 1e3)
    base = statistics.median(times["ssl_alpnet"]) if "ssl_alpnet" in times else None
    rows = []
    for spec in args.methods:
        q1, med, q3 = statistics.quantiles(times[spec], n=4) if len(times[spec]) > 1 else [times[spec][0]] * 3
        rows.append({"method": spec, "backbone": args.backbone, "size": args.size, "threads": args.threads,
                     "median_ms": round(med, 2), "q1_ms": round(q1, 2), "q3_ms": round(q3, 2),
                     "ratio_to_ssl_alpnet": round(med / base, 3) if base else ""})
    print(f"training step, {args.backbone} at {args.size}x{args.size}, {args.threads} thread(s), "
          f"median of {args.steps} after {args.warmup} warm-up, device {args.device}")
    width = max(14, max(len(s) for s in args.methods) + 2)
    print(f"{'method':<{width}}{'median ms':>11}{'q1':>9}{'q3':>9}{'x ssl_alpnet':>14}")
    for row in rows:
        ratio = f"{row['ratio_to_ssl_alpnet']:.3f}" if row["ratio_to_ssl_alpnet"] != "" else "-"
        print(f"{row['method']:<{width}}{row['median_ms']:>11.2f}{row['q1_ms']:>9.2f}{row['q3_ms']:>9.2f}{ratio:>14}")
    if args.out:
        with open(args.out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
