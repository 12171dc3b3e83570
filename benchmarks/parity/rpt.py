"""Parity of our RPT (``fsmis.models.rpt``) with the reference ``FewShotSeg`` of
github.com/YazhouZhu19/RPT (``models/fewshot.py``, ``models/attention.py``; the losses and
weights of ``train.py``, the prediction of ``test.py``).

    mkdir -p ~/src/RPT && git -C <git dir> archive HEAD | tar -x -C ~/src/RPT
    pip install --no-deps --target ~/reflibs "torchvision==0.28.*"
    python benchmarks/parity/rpt.py --reference ~/src/RPT --reference-libs ~/reflibs [--timing 3]

Ours runs in ``original`` mode, the options that reproduce the original repository:
``align_threshold="query"`` (RPT-fixed: the support's ``t``) and
``small_foreground="pad_raster"`` (ours: fewer regions). The defaults are reported
against the reference for information (the alignment loss differs by construction).

Both models get the same random weights (ours copied into the reference with
``convert_reference_state``'s key map reversed: ``backbone.*`` -> ``encoder.*``,
``bat.norm.*`` -> ``layer_norm.*``, ``bat.attention.*`` -> ``MHA.*``, ``bat.mlp.*`` ->
``MLP.*``; every tensor of both) and the same episode (``common.episode``, 256 x 256, plus
a bright blob under the masks so the features see the organ). The random first region
centre is made the same: our ``first_centre`` draws from its own
``np.random.RandomState(1289).choice``, as the reference's ``fg_sampler``, and both models
partition once per forward, so the draws coincide; both training runs start from the same
torch seed, so the transformer's dropout masks coincide too (same shapes, same order).

Random weights are made informative as in the Q-Net script: BatchNorm statistics from one
pass over the episode (so evaluation mode is well scaled), and ``reduce1d``'s bias set so
that the query's ``t`` is the median of the final similarity (about half the query is
foreground, so the alignment and MSE losses have a query foreground to work from).

Compared, in evaluation mode (``torch.no_grad``, as ``test.py``): the regional prototypes,
the foreground probability of our cached path (support state once, ``predict``) and of our
forward against the reference's forward, and the predicted pixels; once with the episode's
organ-sized mask and once with a small one (fewer foreground cells than regions: the
raster padding). In training mode (``train=True``): the regional prototypes, the
probability, each loss (the query NLL weighted 0.1/1 against the trainer's cross-entropy
of our logits; periphery, alignment, MSE and query self-prototype losses with
``train.py``'s weights), their sum, and the gradient of every parameter after backward of
the sum.

Float32 rounding and the attention's query/key gradients: every output, loss and
gradient agrees within 1e-4 relative except, in float32, the gradients of the attention's
query and key projections (``w_qs``, ``w_ks``; up to 3e-4 relative at 256 x 256, seed 0,
where they are tiny: 3e-9 absolute, the other gradients' differences reach 2e-4). Their
gradient passes through the softmax's derivative, whose rows sum to zero: a key bias
channel active for every token gets exactly zero, so these gradients are differences of
much larger terms and carry the terms' rounding, here from inputs that differ at 1e-7
(the regional means, summed in another order; the probability, 4e-7). Evidence:
``--double`` runs both models in float64, where every gradient agrees within 3e-8
relative (the computation is the same); ``--rounding-probe`` trains ours again with the
regional means summed in the reference's order, which brings them under 1e-4. So in
float32 those two tensors are compared at 1e-3 (``FLOAT32_QK_TOLERANCE``), in float64 at
the tolerance.

Run-time shims (the checkout is never edited): ``cv2`` (imported by the reference for
``cv2.dilate``) is, when it is not installed, a stand-in whose ``dilate`` is
``scipy.ndimage.grey_dilation`` with the kernel as footprint (the same for a 0/1 mask);
``.cuda()`` stays on the CPU and the model's ``torch.device('cuda')`` becomes the CPU;
torchvision's ``resnet101`` builds random weights.

``--timing N``: median of N training steps (``fsmis.train.training_step``, SGD) of our RPT
(defaults), our SSL-ALPNet (``deeplabv3_resnet101`` trunk, 256 features) and a step of the
lineage trunk alone (RPT's encoder, forward + backward of its packed output's mean),
round-robin in this process.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import torch
from torch import nn

from fsmis.models import registry
from fsmis.models.lineage import PROB_EPS, LineageEncoder, similarity
from fsmis.models.prototypes import segmentation_loss
from fsmis.models.rpt import RPT, RPTParams, convert_reference_state

if __package__:
    from . import common
else:
    import common

TRUNK = {"backbone": "deeplabv3_resnet101", "feature_dim": 256, "pretrained": None}
ORIGINAL = {"align_threshold": "query", "small_foreground": "pad_raster"}
TRAIN_WEIGHTS = {"periphery": 0.1, "align": 1.0, "mse": 0.1, "qry": 1.0}  # train.py's sum
QK = ("bat.attention.w_qs.", "bat.attention.w_ks.")
FLOAT32_QK_TOLERANCE = 1e-3


def cv2_stand_in():
    """``cv2`` if installed, else a module with ``dilate`` (scipy) registered as ``cv2``."""
    try:
        import cv2  # noqa: F401
        return "cv2 " + cv2.__version__
    except ImportError:
        from scipy import ndimage

        def dilate(src, kernel, iterations=1):
            out = np.asarray(src)
            for _ in range(iterations):
                out = ndimage.grey_dilation(out, footprint=np.asarray(kernel).astype(bool), mode="nearest")
            return out.astype(np.asarray(src).dtype)

        sys.modules["cv2"] = types.SimpleNamespace(dilate=dilate, __name__="cv2")
        return "cv2 stand-in (scipy.ndimage.grey_dilation)"


def ref_key(ours: str) -> str:
    """Our parameter name -> the reference's (``convert_reference_state`` reversed)."""
    for new, old in (("backbone.", "encoder."), ("bat.norm.", "layer_norm."), ("bat.attention.", "MHA."),
                     ("bat.mlp.", "MLP.")):
        if ours.startswith(new):
            return old + ours[len(new):]
    return ours


def with_blob(ep: dict) -> dict:
    ep = dict(ep)
    ep["sup_img"] = ep["sup_img"] + 2.0 * ep["sup_fg"][:, None]
    ep["qry_img"] = ep["qry_img"] + 2.0 * ep["qry_label"][:, None]
    ep["qry_label"] = ep["qry_label"].long()
    return ep


@torch.no_grad()
def make_informative(model: RPT, ep: dict, rounds: int = 3) -> float:
    """BatchNorm statistics from one pass over the episode; ``reduce1d``'s bias so the
    query's ``t`` is the median of its final similarity. Returns the foreground share."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one pass sets this batch's statistics
    model.train()
    model.encode(torch.cat([ep["sup_img"], ep["qry_img"]]))
    for m in bns:
        m.momentum = 0.1
    model.eval()
    rs = np.random.RandomState(0)
    model.first_centre = lambda n: int(rs.choice(n))
    for _ in range(rounds):
        packed = model.encode(torch.cat([ep["sup_img"], ep["qry_img"]]))
        state = model.support_from_mask(packed[:1], ep["sup_fg"])
        qf, tq = model.split(packed[1:])
        _, proto = model.refine(qf, tq, state)
        model.backbone.reduce1d.bias += similarity(qf, proto).median() - tq[0, 0]
    del model.first_centre
    packed = model.encode(ep["qry_img"])
    p = model.probability(packed, model.support_from_mask(model.encode(ep["sup_img"]), ep["sup_fg"]))
    return float((p > 0.5).float().mean())


def same_draws(ref, ours: RPT) -> None:
    """Both models' first centres from a fresh RandomState(1289), one draw per forward."""
    ref.fg_sampler = np.random.RandomState(1289)
    rs = np.random.RandomState(1289)
    ours.first_centre = lambda n: int(rs.choice(n))


def capture(obj, name: str, store: list):
    """Record every return value of ``obj.name`` (an instance attribute shadows the method)."""
    plain = getattr(obj, name)

    def wrapped(*args, **kwargs):
        out = plain(*args, **kwargs)
        store.append(out)
        return out
    setattr(obj, name, wrapped)


def compare_eval(report, ref, ours, ep, label):
    ref_regions, our_regions = [], []
    capture(ref, "compute_multiple_prototypes", ref_regions)
    capture(ours, "partition", our_regions)
    same_draws(ref, ours)
    ref.eval()
    ours.eval()
    with torch.no_grad(), common.cuda_as_cpu():
        ref_out = ref([[ep["sup_img"]]], [[ep["sup_fg"]]], [ep["qry_img"]], None, train=False)[0]
        state = ours.prepare_support(ep["sup_img"], ep["sup_fg"])
        cached = ours.predict(ours.encode(ep["qry_img"]), state, ep["qry_img"].shape[-2:]).softmax(1)
    same_draws(ref, ours)
    with torch.no_grad():
        forward = ours(ep["sup_img"], ep["sup_fg"], ep["qry_img"])[0].softmax(1)
    del ref.compute_multiple_prototypes, ours.partition, ours.first_centre
    report.compare(f"{label}: regional prototypes", our_regions[0], ref_regions[0][0],
                   note=f"{ref_regions[0].shape[1]} regions")
    report.compare(f"{label}: probability (cached)", cached[:, 1], ref_out[:, 1])
    report.compare(f"{label}: probability (forward)", forward[:, 1], ref_out[:, 1])
    report.compare_masks(f"{label}: predicted pixels", cached[:, 1] > cached[:, 0], ref_out[:, 1] > ref_out[:, 0],
                         ref_out[:, 1] - 0.5)
    report.info(f"{label}: foreground", f"{100 * float((ref_out[:, 1] > 0.5).float().mean()):.1f} % of the query "
                f"(reference)")


def reference_step(ref, ep):
    criterion = nn.NLLLoss(ignore_index=255, weight=torch.tensor([0.1, 1.0], dtype=ep["sup_img"].dtype))
    with common.cuda_as_cpu():
        out, periphery, align, mse, qry = ref([[ep["sup_img"]]], [[ep["sup_fg"]]], [ep["qry_img"]], ep["qry_label"],
                                              train=True)
    query = criterion(torch.log(torch.clamp(out, PROB_EPS, 1 - PROB_EPS)), ep["qry_label"])
    losses = {"query": query, "periphery": TRAIN_WEIGHTS["periphery"] * periphery.sum(),
              "align": align.sum(), "proto_mse": TRAIN_WEIGHTS["mse"] * mse.sum(), "query_self": qry.sum()}
    return out, losses


def our_step(ours, ep):
    logits, losses = ours(ep["sup_img"], ep["sup_fg"], ep["qry_img"], qry_label=ep["qry_label"])
    losses = {"query": segmentation_loss(logits, ep["qry_label"], *ours.query_loss_weights({})), **losses}
    return logits.softmax(1), losses


def reference_order_means(feats, cells, labels, k):
    """``regional_prototypes`` summed in the reference's order (one ``mean`` per region)."""
    flat = feats.permute(1, 2, 0)[cells.to(feats.device)]
    return torch.stack([flat[labels.to(feats.device) == i].mean(0) for i in range(k)])


def gradients(ref, ours):
    ref_params = dict(ref.named_parameters())
    ours_g, ref_g, one_sided = {}, {}, []
    for name, prm in ours.named_parameters():
        other = ref_params[ref_key(name)]
        if (prm.grad is None) != (other.grad is None):
            one_sided.append(name)
        elif prm.grad is not None:
            ours_g[name], ref_g[name] = prm.grad.clone(), other.grad
    return ours_g, ref_g, one_sided


def compare_train(report, ref, ours, ep, seed):
    ref_regions, our_regions = [], []
    capture(ref, "compute_multiple_prototypes", ref_regions)
    capture(ours, "partition", our_regions)
    same_draws(ref, ours)
    ref.train()
    ours.train()
    ref.zero_grad(set_to_none=True)
    ours.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the dropout masks
    ref_out, ref_losses = reference_step(ref, ep)
    sum(ref_losses.values()).backward()
    torch.manual_seed(seed)
    our_out, our_losses = our_step(ours, ep)
    sum(our_losses.values()).backward()
    del ref.compute_multiple_prototypes, ours.partition, ours.first_centre
    report.compare("train: regional prototypes", our_regions[0], ref_regions[0][0])
    report.compare("train: probability", our_out[:, 1], ref_out[:, 1])
    for k in ref_losses:
        report.compare(f"train: loss {k}", our_losses[k], ref_losses[k],
                       note=f"ref {float(ref_losses[k].detach()):.5g}")
    report.compare("train: total loss", sum(our_losses.values()), sum(ref_losses.values()))
    ours_g, ref_g, one_sided = gradients(ref, ours)
    compare_gradients(report, "train", ours_g, ref_g, ep["sup_img"].dtype)
    rel = {k: common.difference(ours_g[k], ref_g[k])[1] for k in ours_g}
    worst = sorted(rel, key=rel.get, reverse=True)[:4]
    report.info("train: worst gradients", ", ".join(f"{k} {rel[k]:.2e}" for k in worst))
    report.info("train: gradient in one model only", ", ".join(one_sided) or "none")
    return our_losses, ref_losses


def compare_gradients(report, label, ours_g, ref_g, dtype):
    """All gradients at the tolerance, except, in float32, those of the attention's query
    and key projections: FLOAT32_QK_TOLERANCE (the module docstring says why)."""
    qk = {k for k in ours_g if k.startswith(QK)}
    if dtype != torch.float32:
        qk = set()
    rest = [k for k in ours_g if k not in qk]
    report.compare(f"{label}: gradients" + (" but attention q/k" if qk else ""),
                   {k: ours_g[k] for k in rest}, {k: ref_g[k] for k in rest})
    if qk:
        plain, report.tolerance = report.tolerance, FLOAT32_QK_TOLERANCE
        try:
            report.compare(f"{label}: gradients of attention q/k", {k: ours_g[k] for k in qk},
                           {k: ref_g[k] for k in qk}, note=f"float32, tolerance {FLOAT32_QK_TOLERANCE:g}")
        finally:
            report.tolerance = plain


def rounding_probe(report, ref, ours, ep, seed):
    """Ours again with the regional means summed in the reference's order: what is left of
    the gradient differences is then the rest of the float rounding."""
    import fsmis.models.rpt as rpt_module

    plain = rpt_module.regional_prototypes
    rpt_module.regional_prototypes = reference_order_means
    try:
        rs = np.random.RandomState(1289)
        ours.first_centre = lambda n: int(rs.choice(n))
        ours.zero_grad(set_to_none=True)
        torch.manual_seed(seed)
        _, losses = our_step(ours, ep)
        sum(losses.values()).backward()
    finally:
        rpt_module.regional_prototypes = plain
        del ours.first_centre
    ours_g, ref_g, _ = gradients(ref, ours)
    report.compare("train, reference-order means: gradients", ours_g, ref_g)


def defaults_for_information(ep, seed, weights, ref_losses):
    """Our defaults (RPT-fixed threshold, fewer regions) against the reference's losses."""
    ours = RPT(LineageEncoder(), RPTParams()).to(weights["bat.norm.weight"].dtype)
    ours.load_state_dict(weights)
    rs = np.random.RandomState(1289)
    ours.first_centre = lambda n: int(rs.choice(n))
    ours.train()
    torch.manual_seed(seed)
    _, losses = our_step(ours, ep)
    text = ", ".join(f"{k} {float(v.detach()):.5g} (ref {float(ref_losses[k].detach()):.5g})"
                     for k, v in losses.items())
    common.Report.info("defaults (information only)", text)


def timing(args, ep, rounds):
    torch.manual_seed(args.seed)
    rpt = RPT(RPT.build_backbone(TRUNK)).train()
    alp = registry.build("ssl_alpnet", TRUNK).train()
    steps = common.training_steps({"rpt": rpt, "ssl_alpnet": alp}, ep)
    steps["lineage trunk alone"] = common.trunk_step(rpt.backbone, rpt.encode, ep)
    common.print_timing(common.alternate(steps, rounds, warmup=1), "rpt", trunk="lineage trunk alone")


def main(argv=None) -> int:
    p = common.parser(__doc__.split("\n\n")[0], reference_required=False)
    common.add_timing_args(p, "RPT", only_flag="--no-parity")
    p.add_argument("--rounding-probe", action="store_true",
                   help="also train ours with the regional means summed in the reference's order")
    p.add_argument("--double", action="store_true",
                   help="both models and the episode in float64 (what float32 rounding amplifies shrinks)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ep = with_blob(common.episode(args.size, args.seed))
    dtype = torch.float64 if args.double else torch.float32
    ep = {k: v.to(dtype) if v.is_floating_point() else v for k, v in ep.items()}
    if not args.no_parity:
        if not args.reference:
            p.error("--reference is required unless --no-parity")
        torchvision = common.load_torchvision(args.reference_libs)
        cv2_note = cv2_stand_in()
        fewshot = common.import_reference(args.reference, "models.fewshot", args.reference_libs)
        torch.manual_seed(args.seed)
        ours = RPT(LineageEncoder(), RPTParams(**ORIGINAL)).to(dtype)
        share = make_informative(ours, ep)
        with common.builders_without_downloads(torchvision.models.resnet, ["resnet101"]):
            ref = fewshot.FewShotSeg(pretrained_weights=None).to(dtype)
        moved = common.retarget_devices(ref, "cpu")
        common.copy_state(ours.state_dict(), ref, ref_key)
        # a reference checkpoint converts to exactly our keys
        assert set(convert_reference_state(ref.state_dict())) == set(ours.state_dict())
        print(f"RPT parity: {args.size} x {args.size}, {dtype}, seed {args.seed}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} thread(s); {cv2_note}; devices moved: {', '.join(moved)}; "
              f"calibrated query foreground {100 * share:.1f} %")
        weights = {k: v.clone() for k, v in ours.state_dict().items()}  # before training steps move BN statistics
        compare_eval(report := common.Report(args.tolerance), ref, ours, ep, "eval, organ mask")
        small = dict(ep, sup_fg=common.ellipse(args.size, args.size / 2, args.size / 2, args.size / 40,
                                               args.size / 48).to(dtype))
        compare_eval(report, ref, ours, small, "eval, small mask (padding)")
        _, ref_losses = compare_train(report, ref, ours, ep, args.seed)
        if args.rounding_probe:
            rounding_probe(report, ref, ours, ep, args.seed)
        defaults_for_information(ep, args.seed, weights, ref_losses)
        status = report.finish()
        del ref, ours
    else:
        status = 0
    if args.timing:
        timing(args, ep, args.timing)
    return status


if __name__ == "__main__":
    sys.exit(main())
