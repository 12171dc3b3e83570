"""Parity of ``fsmis.models.qnet.QNet`` with the reference Q-Net (ZJLAB-AMMI/Q-Net ``models/fewshot.py``).

Builds the reference ``FewShotSeg`` from a checkout and ours (ResNet-101 lineage trunk), copies the
reference's weights into ours (``encoder.*`` -> ``backbone.*``, every key), feeds both the same episode
(support image, support mask, query image, query label) and prints the largest absolute and relative
difference (``max|ours - ref| / max|ref|``) of:

- training mode (``train=True``): the foreground probability, the query loss (the reference's weighted
  NLLLoss vs our trainer's weighted cross-entropy of the logits), the alignment loss, their sum, and the
  gradients of every shared parameter after ``backward`` of the sum;
- evaluation mode (``model.eval()``, ``torch.no_grad()``, as the reference's ``test.py``): the foreground
  probability without refinement (``n_iters=0``) and with ``--n-iters`` refinement steps (the reference's
  default 7), and the share of pixels whose predicted class agrees.

Weights are random (no download) unless ``--weights`` names a torchvision DeepLabV3-ResNet101 file: the
reference then gets it as its ``pretrained_weights`` dict and ours is checked to load the same trunk. Random
weights are made informative: BatchNorm statistics are set from one pass over the episode (so evaluation
mode is well scaled) and ``reduce1d``'s bias puts the query threshold at the median similarity (so about
half the query is foreground, not all or nothing). The episode's images are noise plus a bright blob where
the masks are.

Run-time shims (the checkout is never edited): the reference's hard-coded ``cuda`` device is replaced by
the CPU on the built model; its absolute checkpoint paths are avoided by passing the weights (or ``None``)
as ``pretrained_weights``; where torchvision's compiled operators do not match the installed torch, their
fake registrations are skipped (the ResNet needs none).

    pip install --no-deps --target ~/reflibs "torchvision==0.28.*"     # the torchvision of torch 2.13
    python benchmarks/parity/qnet.py --reference ~/src/Q-Net --reference-libs ~/reflibs
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

if __package__:
    from . import common
else:
    import common


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", required=True, help="checkout of ZJLAB-AMMI/Q-Net")
    p.add_argument("--reference-libs", default=None, metavar="DIR",
                   help="folder with torchvision (pip install --no-deps --target DIR ...)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--alpha", type=float, default=0.9, help="weight of the layer3 path (reference default 0.9)")
    p.add_argument("--n-iters", type=int, default=7, help="test-time refinement steps (reference config: 7)")
    p.add_argument("--weights", default=None, help="optional deeplabv3_resnet101 COCO state dict file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def import_reference(path: str, libs: str | None):
    """The checkout's ``FewShotSeg``, torchvision from ``libs``."""
    common.load_torchvision(libs)
    if libs:
        sys.path.insert(0, str(Path(libs).resolve()))
    sys.path.insert(0, str(Path(path).resolve()))
    return importlib.import_module("models.fewshot").FewShotSeg


def episode(size: int, seed: int):
    """Support and query images (noise + a bright ellipse), the support mask and the query label."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")

    def blob(cy, cx):
        return ((((yy - cy) / (0.22 * size)) ** 2 + ((xx - cx) / (0.16 * size)) ** 2) <= 1).float()[None]

    sup_fg, qry_fg = blob(0.5 * size, 0.5 * size), blob(0.56 * size, 0.44 * size)
    sup = torch.randn(1, 3, size, size, generator=g) + 2.0 * sup_fg[:, None]
    qry = torch.randn(1, 3, size, size, generator=g) + 2.0 * qry_fg[:, None]
    return sup, sup_fg, qry, qry_fg.long()


@torch.no_grad()
def make_informative(ref, sup, sup_fg, qry, calibrate_bn: bool):
    """BatchNorm running statistics from one pass over the episode (random weights only); ``reduce1d``'s
    bias so the query's ``t`` is the median similarity of its layer3 features to the support prototype."""
    if calibrate_bn:
        bns = [m for m in ref.modules() if isinstance(m, nn.BatchNorm2d)]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one pass sets the statistics of this batch
        ref.encoder.train()
        ref.encoder(torch.cat([sup, qry]))
        for m in bns:
            m.momentum = 0.1
    ref.encoder.eval()
    fts, tao = ref.encoder(torch.cat([sup, qry]))
    proto = ref.getFeatures(fts["down2"][:1], sup_fg)
    sim = -F.cosine_similarity(fts["down2"][1:], proto[..., None, None], dim=1) * ref.scaler
    ref.encoder.reduce1d.bias += sim.median() - tao[1]


def build(args, FewShotSeg, sup, sup_fg, qry):
    from fsmis.models.lineage import LineageEncoder
    from fsmis.models.qnet import QNet, QNetParams

    weights = None
    if args.weights:
        weights = torch.load(args.weights, map_location="cpu", weights_only=True)
    torch.manual_seed(args.seed)
    ref = FewShotSeg(pretrained_weights=weights, alpha=args.alpha)
    ref.device = torch.device("cpu")  # the reference hard-codes cuda for its loss accumulators
    notes = []
    if args.weights:
        own = LineageEncoder(pretrained=args.weights).state_dict()
        diff = max((own[k] - v).abs().max().item() for k, v in ref.encoder.state_dict().items()
                   if k.startswith("backbone.") and not k.startswith("backbone.fc.") and v.is_floating_point())
        notes.append(f"our loader vs the reference's on {args.weights}: trunk max |diff| {diff:.3g}")
    make_informative(ref, sup, sup_fg, qry, calibrate_bn=not args.weights)
    ours = QNet(LineageEncoder(), QNetParams(alpha=args.alpha, refine_iters=args.n_iters))
    mapped = {"backbone." + k[len("encoder."):]: v for k, v in ref.state_dict().items()}
    ours.load_state_dict(mapped, strict=True)  # every key of both, one to one
    return ref, ours, notes


def diff(name, ref, ours) -> str:
    ref, ours = ref.detach().double(), ours.detach().double()
    d = (ref - ours).abs().max().item()
    scale = ref.abs().max().item()
    return f"{name:<44}{d:>12.3e}{d / scale if scale else float('nan'):>12.3e}   (max |ref| {scale:.3e})"


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    FewShotSeg = import_reference(args.reference, args.reference_libs)
    from fsmis.models.prototypes import segmentation_loss

    sup, sup_fg, qry, qry_label = episode(args.size, args.seed)
    ref, ours, notes = build(args, FewShotSeg, sup, sup_fg, qry)
    eps = torch.finfo(torch.float32).eps
    lines = [f"Q-Net parity: ResNet-101 trunk, {args.size}x{args.size}, alpha {args.alpha}, seed {args.seed}, "
             f"torch {torch.__version__}, {args.threads} thread(s)", *notes,
             f"{'quantity':<44}{'max |diff|':>12}{'relative':>12}"]

    # -- evaluation mode (first: the BatchNorm statistics are still the calibrated ones) --------------------------
    ref.eval()
    ours.eval()
    ref_probs = {}
    for iters in (0, args.n_iters):
        ours.params = dataclasses.replace(ours.params, refine_iters=iters)
        with torch.no_grad():
            t0 = time.perf_counter()
            ref_out, _ = ref([[sup]], [[sup_fg]], [qry], train=False, n_iters=iters)
            t1 = time.perf_counter()
            logits = ours.predict(ours.encode(qry), ours.prepare_support(sup, sup_fg), qry.shape[-2:])
            t2 = time.perf_counter()
            # the reference encodes support and query as one batch; evaluation encodes them apart
            both = ours.encode(torch.cat([sup, qry]))
            together = ours.predict(both[1:], ours.support_from_mask(both[:1], sup_fg), qry.shape[-2:])
        p = logits.softmax(1)[:, 1]
        ref_probs[iters] = ref_out[:, 1]
        agree = ((ref_out[:, 1] > ref_out[:, 0]) == (logits[:, 1] > logits[:, 0])).float().mean().item()
        lines.append(diff(f"eval, n_iters={iters}: foreground probability", ref_out[:, 1], p))
        lines.append(diff("  same, support + query encoded as one batch", ref_out[:, 1], together.softmax(1)[:, 1]))
        lines.append(f"{'':<4}predicted class agrees on {100 * agree:.4f} % of pixels; foreground "
                     f"{100 * (ref_out[:, 1] > 0.5).float().mean().item():.1f} % (ref); "
                     f"time ref {t1 - t0:.2f} s, ours {t2 - t1:.2f} s")
    lines.append(diff(f"reference itself: n_iters={args.n_iters} vs 0 (what refining changes)", ref_probs[0],
                      ref_probs[args.n_iters]))
    ours.params = dataclasses.replace(ours.params, refine_iters=args.n_iters)

    # -- training mode ------------------------------------------------------------------------------------------------
    ref.train()
    ours.train()
    ref_out, ref_align = ref([[sup]], [[sup_fg]], [qry], train=True)
    criterion = nn.NLLLoss(ignore_index=255, weight=torch.tensor([0.1, 1.0]))
    ref_q = criterion(torch.log(torch.clamp(ref_out, eps, 1 - eps)), qry_label)
    ref_total = ref_q + ref_align.sum()
    ref_total.backward()
    logits, losses = ours(sup, sup_fg, qry)
    our_q = segmentation_loss(logits, qry_label, *ours.query_loss_weights({}))
    our_total = our_q + losses["align"]
    our_total.backward()
    lines.append(diff("train: foreground probability", ref_out[:, 1], logits.softmax(1)[:, 1]))
    lines.append(diff("train: query loss", ref_q, our_q))
    lines.append(diff("train: alignment loss", ref_align.sum(), losses["align"]))
    lines.append(diff("train: total loss", ref_total, our_total))

    ours_params = dict(ours.named_parameters())
    worst_abs, worst_rel, without = ("", 0.0), ("", 0.0), []
    for name, prm in ref.named_parameters():
        mine = ours_params["backbone." + name[len("encoder."):]]
        if (prm.grad is None) != (mine.grad is None):
            without.append(name)
            continue
        if prm.grad is None:
            continue
        d = (prm.grad - mine.grad).abs().max().item()
        scale = prm.grad.abs().max().item()
        worst_abs = max(worst_abs, (name, d), key=lambda x: x[1])
        if scale > 0:
            worst_rel = max(worst_rel, (name, d / scale), key=lambda x: x[1])
    for name in ("encoder.reduce1d.bias", "encoder.reduce1.weight", "encoder.reduce2.weight",
                 "encoder.backbone.conv1.weight"):
        lines.append(diff(f"train: gradient of {name[len('encoder.'):]}", dict(ref.named_parameters())[name].grad,
                          ours_params["backbone." + name[len("encoder."):]].grad))
    lines.append(f"train: gradients over all {len(ours_params)} shared parameters: largest |diff| "
                 f"{worst_abs[1]:.3e} ({worst_abs[0]}), largest relative {worst_rel[1]:.3e} ({worst_rel[0]})")
    lines.append(f"train: parameters with a gradient in one model only: {without or 'none'}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
