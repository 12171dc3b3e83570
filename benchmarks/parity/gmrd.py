"""Parity of our GMRD (``fsmis.models.gmrd``) with the reference ``FewShotSeg`` of
github.com/zmcheng9/GMRD (``models/fewshot_GMRD.py``, ``models/moudles.py``; the losses of
``train.py``, the prediction of ``test.py``).

    mkdir -p ~/src/GMRD && git -C <git dir> archive HEAD | tar -x -C ~/src/GMRD
    pip install --no-deps --target ~/reflibs "torchvision==0.28.*" "opencv-python-headless<5"
    python benchmarks/parity/gmrd.py --reference ~/src/GMRD --reference-libs ~/reflibs [--timing 3]

``--snapshot nov2023`` compares a checkout of 45ba5c2 instead (``git archive 45ba5c2``):
the MLP's ReLU and the paper's descriptor losses (weight 0.5, as its ``train.py``), i.e. our
``mlp_relu=True, aux_weight=0.5``.

Both models get the same random weights (ours copied into the reference: ``backbone.*``
-> ``encoder.*``, ``fg_mlp`` -> ``mlp1``, ``bg_mlp`` -> ``mlp2``, ``fg_decoder`` ->
``decoder1``, ``bg_decoder`` -> ``decoder2``; every tensor of both) and the same episode
(``common.episode``, 256 x 256). Ours runs with ``outer_edge="reference"``; the
default ``"band"`` is reported against it for information. The random pixel draw is
made the same: our ``sample_indices`` is replaced by the reference's Python
``random.sample`` and both runs start from the same ``random`` and ``torch`` seeds, so the
draws and the dropout masks coincide (both models call them in the same order).

Compared, in training mode (``train=True``): the support descriptors (foreground and
background), the query probabilities, the query loss (``train.py``'s NLL weighted 0.1/1;
ours the trainer's cross-entropy of our logits), the alignment loss (and with
``nov2023`` the descriptor losses), and the gradient of every parameter after backward of
their sum (with the query loss written as the reference's NLL of our log-probability
logits; the trainer's cross-entropy of them, equal in exact arithmetic, is reported
beside it); once with the episode's support mask and once with an empty one (the ADNet
fallback). Where a gradient differs by more than the tolerance, the float32 rounding of
the decoders' gradients is measured against float64 (the decoders alone, our memory layout
and the reference's channels-last one): the decoders' 3 x 3 convolutions sum 600-channel
products over the 64 x 64 grid, and their float32 gradients are only that exact in either
code. In evaluation mode (no dropout, ``torch.no_grad``): our cached path (support
state once, ``predict``) against the reference's forward, probabilities and predicted
pixels.

Random weights leave the decoders' decision arbitrary; so that the alignment pass has a
query foreground to work from, the foreground decoder's last weights are scaled (in
both models alike) until about a third of the query is predicted foreground.

``--timing N``: median of N training steps (``fsmis.train.training_step``, SGD) of our
GMRD (defaults), our SSL-ALPNet (``deeplabv3_resnet101`` trunk, 256 features) and a step
of the lineage trunk alone (GMRD's encoder, forward + backward of its features' mean),
round-robin in this process (``--timing-only``: no parity run).
"""

from __future__ import annotations

import random

import torch

from fsmis.models import prototypes as P
from fsmis.models import registry
from fsmis.models.gmrd import GMRD, GMRDParams
from fsmis.models.lineage import PROB_EPS

if __package__:
    from . import common
else:
    import common

TRUNK = {"backbone": "deeplabv3_resnet101", "feature_dim": 256, "pretrained": None}
RENAMES = (("backbone.", "encoder."), ("fg_mlp.", "mlp1."), ("bg_mlp.", "mlp2."), ("fg_decoder.", "decoder1."),
           ("bg_decoder.", "decoder2."))


def key_map(name: str) -> str | None:
    for ours, ref in RENAMES:
        if name.startswith(ours):
            return ref + name[len(ours):]
    return None


def python_sampler(m: int, k: int) -> torch.Tensor:
    """The reference's draw: ``random.sample(range(m), k)``."""
    return torch.tensor(random.sample(range(m), k), dtype=torch.long)


def build_reference(args, torchvision):
    module = common.import_reference(args.reference, "models.fewshot_GMRD", args.reference_libs)
    with common.builders_without_downloads(torchvision.models.resnet, ["resnet101"]), common.cuda_as_cpu():
        ref = module.FewShotSeg(pretrained_weights=None)  # None: no checkpoint file is read
    return ref, common.retarget_devices(ref, "cpu")


class Captured:
    """The values a method returns, every call."""

    def __init__(self, obj, name):
        self.values, self.obj, self.name = [], obj, name
        plain = getattr(obj, name)

        def wrapped(*a, **k):
            self.values.append(plain(*a, **k))
            return self.values[-1]
        setattr(obj, name, wrapped)

    def remove(self):
        delattr(self.obj, self.name)


def seeded(seed):
    random.seed(seed)
    torch.manual_seed(seed)


def ours_training(ours, ep, seed):
    """Probabilities, losses (query: the trainer's cross-entropy) and two sets of
    gradients: with the query loss written as the reference's NLL of our log-probability
    logits, and as the trainer's cross-entropy of them (equal in exact arithmetic)."""
    seeded(seed)
    logits, losses = ours(ep["sup_img"], ep["sup_fg"], ep["qry_img"])
    weight = torch.tensor(ours.query_loss_weights({}))
    q = P.segmentation_loss(logits, ep["qry_label"], *weight.tolist())
    nll = torch.nn.functional.nll_loss(logits, ep["qry_label"].long(), weight=weight, ignore_index=255)
    out = {"query": q, "align": losses["align"]}
    if "aux" in losses:
        out["aux"] = losses["aux"]
    grads = {}
    for form, query in (("nll", nll), ("ce", q)):
        ours.zero_grad(set_to_none=True)
        (query + sum(v for k, v in out.items() if k != "query")).backward(retain_graph=form == "nll")
        grads[form] = {key_map(n): p.grad for n, p in ours.named_parameters()}
    return torch.softmax(logits, 1), out, grads


def reference_training(ref, ep, seed, nov2023):
    seeded(seed)
    result = ref([[ep["sup_img"]]], [[ep["sup_fg"]]], [ep["qry_img"]], train=True)
    out = result[0]
    criterion = torch.nn.NLLLoss(ignore_index=255, weight=torch.tensor([0.1, 1.0]))  # train.py
    q = criterion(torch.log(torch.clamp(out, PROB_EPS, 1 - PROB_EPS)), ep["qry_label"].long())
    losses = {"query": q, "align": result[1].reshape(())}
    if nov2023:
        losses["aux"] = 0.5 * result[2].reshape(())  # train.py of 45ba5c2: aux_loss = 0.5 * aux_loss
    ref.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    return out, losses


def training_round(report, label, ours, ref, ep, seed, nov2023):
    sup_o = Captured(ours, "support_state")
    affinity = {}

    def keep(key):
        def hook(_module, inputs, _output):  # returns None: the output stays as it is
            affinity.setdefault(key, inputs[0].detach())
        return hook

    hooks = [dec.register_forward_hook(keep(k)) for k, dec in (("fg", ours.fg_decoder), ("bg", ours.bg_decoder))]
    fg_r, bg_r = Captured(ref, "get_fg_pts"), Captured(ref, "get_bg_pts")
    probs_o, losses_o, grads = ours_training(ours, ep, seed)
    probs_r, losses_r = reference_training(ref, ep, seed, nov2023)
    for c in (sup_o, fg_r, bg_r):
        c.remove()
    for h in hooks:
        h.remove()
    print(f"{label}: query foreground predicted on {float((probs_r[:, 1] > 0.5).float().mean()) * 100:.1f} % of "
          f"the pixels; alignment pass {'ran' if float(losses_r['align'].detach()) > 0 else 'skipped (no foreground)'}")
    state = sup_o.values[0]
    if "fg" in state:
        report.compare("support fg descriptors", state["fg"], fg_r.values[0])
        report.compare("support bg descriptors", state["bg"], bg_r.values[0])
    if len(sup_o.values) > 1 and len(fg_r.values) > 1:
        report.compare("query descriptors (alignment)", {"fg": sup_o.values[1]["fg"], "bg": sup_o.values[1]["bg"]},
                       {"fg": fg_r.values[1], "bg": bg_r.values[1]})
    report.compare("output probabilities", probs_o, probs_r)
    for k in losses_r:  # the reference's descriptor loss is 0 after an empty support; ours is absent
        report.compare(f"{k} loss", losses_o.get(k, torch.zeros(())), losses_r[k])
    grads_r = {n: p.grad for n, p in ref.named_parameters()}
    one_sided = sorted(n for n in grads_r if (grads_r[n] is None) != (grads["nll"][n] is None))
    if one_sided:
        raise RuntimeError(f"gradient in one model only: {one_sided[:5]}")
    with_grad = [n for n, g in grads["nll"].items() if g is not None]
    report.compare("gradients (query loss as NLL)", {n: grads["nll"][n] for n in with_grad},
                   {n: grads_r[n] for n in with_grad},
                   note=f"{len(grads_r) - len(with_grad)} parameters without a gradient in both")
    rel = {n: common.difference(grads["nll"][n], grads_r[n])[1] for n in with_grad}
    above = sorted((n for n in rel if rel[n] > report.tolerance), key=rel.get, reverse=True)
    trunk = max(v for n, v in rel.items() if n.startswith("encoder."))
    report.info("  per tensor", f"{len(above)} of {len(rel)} above {report.tolerance:g}: "
                + ", ".join(f"{n} {rel[n]:.1e}" for n in above[:4]) + f"; encoder worst {trunk:.1e}")
    ce = max(common.difference(grads["ce"][n], grads_r[n])[1] for n in with_grad)
    report.info("gradients (trainer's CE)", f"largest relative difference {ce:.3e}")
    if affinity and above:
        decoder_rounding(report, ours, affinity, ep["qry_label"], above[0], rel[above[0]])


def decoder_rounding(report, ours, affinity, label, worst: str | None, observed: float | None = None):
    """How exact float32 gradients of the decoders are: the decoders' parameter gradients
    from the query loss (NLL) alone, decoders alone (eval mode, the captured query affinity
    maps), in float64, in float32, and in float32 on the reference's memory layout of the
    affinity maps (its permute-matmul-permute leaves them channels-last). ``worst``: the
    reference's name of the tensor to report besides the largest over the decoders;
    ``observed``: its relative difference between the two models."""
    import copy

    weight = torch.tensor(ours.query_loss_weights({}))

    def gradients(dtype, channels_last):
        decoders = {k: copy.deepcopy(getattr(ours, f"{k}_decoder")).to(dtype).eval() for k in ("fg", "bg")}
        a = {k: v.to(dtype) for k, v in affinity.items()}
        if channels_last:
            a = {k: v.contiguous(memory_format=torch.channels_last) for k, v in a.items()}
        s = torch.cat([decoders["bg"](a["bg"]), decoders["fg"](a["fg"])], 1)
        s = torch.nn.functional.interpolate(s, size=label.shape[-2:], mode="bilinear", align_corners=True)
        logp = torch.log(torch.softmax(s, 1).clamp(PROB_EPS, 1 - PROB_EPS))
        torch.nn.functional.nll_loss(logp, label.long(), weight=weight.to(dtype), ignore_index=255).backward()
        return {key_map(f"{k}_decoder.{n}"): p.grad for k, d in decoders.items() for n, p in d.named_parameters()}

    exact = gradients(torch.float64, False)
    ours32, ref32 = gradients(torch.float32, False), gradients(torch.float32, True)

    def rel(a, b, name):
        return common.difference(a[name], b[name])[1]

    def largest(a, b):
        return max(rel(a, b, n) for n in exact)

    text = (f"largest over the decoders, relative to float64: our layout {largest(ours32, exact):.2e}, the reference's "
            f"layout {largest(ref32, exact):.2e}; between the two {largest(ours32, ref32):.2e}")
    if worst in exact:
        text += (f". {worst}: ours {rel(ours32, exact, worst):.2e}, reference's layout {rel(ref32, exact, worst):.2e}, "
                 f"between {rel(ours32, ref32, worst):.2e}")
    report.info("float32 rounding (decoders, query loss)", text)
    if worst in exact and observed is not None:
        own = rel(ref32, exact, worst)
        report.info("  verdict on the gradients", f"{worst} differs by {observed:.2e}, "
                    f"{'within' if observed <= own else 'above'} the reference's own float32 error {own:.2e}")


def evaluation_round(report, ours, ref, ep, seed):
    ours.eval()
    ref.eval()
    size = ep["qry_img"].shape[-2:]
    with torch.no_grad():
        seeded(seed)
        logits = ours.predict(ours.encode(ep["qry_img"]), ours.prepare_support(ep["sup_img"], ep["sup_fg"]), size)
        seeded(seed)
        out = ref([[ep["sup_img"]]], [[ep["sup_fg"]]], [ep["qry_img"]], train=False)[0]
        band = GMRD(ours.backbone, GMRDParams(**{**ours.params.to_dict(), "outer_edge": "band"})).eval()
        band.load_state_dict(ours.state_dict())
        band.sample_indices = python_sampler
        seeded(seed)
        band_logits = band.predict(band.encode(ep["qry_img"]), band.prepare_support(ep["sup_img"], ep["sup_fg"]),
                                   size)
    pred_r = out.argmax(1)
    print(f"evaluation: query foreground predicted on {float(pred_r.float().mean()) * 100:.1f} % of the pixels")
    report.compare("probabilities (eval)", torch.softmax(logits, 1), out)
    report.compare_masks("predictions (eval)", P.foreground(logits)[:, 0], pred_r, out[:, 1] - 0.5)
    differ = P.foreground(band_logits)[:, 0] != pred_r
    report.info("option outer_edge=band", f"{int(differ.sum())} of {differ.numel()} predicted pixels differ from "
                f"the reference's ({float(differ.float().mean()) * 100:.2f} %)")


@torch.no_grad()
def balance_foreground(ours, ref, ep, seed, share=1 / 3):
    """Scale the foreground decoder's last conv (both models) so that about ``share`` of
    the query is predicted foreground in training mode (random weights decide arbitrarily)."""
    seeded(seed)
    stats = {k: v.clone() for k, v in ours.named_buffers()}  # this pass must not move BatchNorm's statistics
    packed = ours.encode(torch.cat([ep["sup_img"], ep["qry_img"]]))
    for k, v in ours.named_buffers():
        v.copy_(stats[k])
    state = ours.support_from_mask(packed[:1], ep["sup_fg"])
    feats, _ = ours.split(packed[1:])
    fg = ours.fg_decoder(P.cosine_scores(feats, state["fg"], 1.0))
    bg = ours.bg_decoder(P.cosine_scores(feats, state["bg"], 1.0))
    ratio = (bg / fg).flatten()
    lo, hi = ratio.quantile(share), ratio.quantile(1 - share)
    # fg * factor > bg: where ratio < factor if fg > 0, where ratio > factor if fg < 0
    factor = float(lo if float((fg > 0).float().mean()) >= 0.5 else hi)
    for m in (ours.fg_decoder.down[-1], ref.decoder1.down[-1]):
        m.weight.mul_(factor)
    return factor


def timing(args, ep, rounds):
    torch.manual_seed(args.seed)
    gmrd = GMRD(GMRD.build_backbone(TRUNK), GMRDParams(image_size=args.size)).train()
    alp = registry.build("ssl_alpnet", TRUNK).train()
    steps = common.training_steps({"gmrd": gmrd, "ssl_alpnet": alp}, ep)
    # the trunk returns (features, t); GMRD's step does not use t
    steps["lineage trunk alone"] = common.trunk_step(gmrd.backbone, lambda x: gmrd.backbone(x)[0], ep)
    common.print_timing(common.alternate(steps, rounds, warmup=1), "gmrd", trunk="lineage trunk alone")


def main(argv=None) -> int:
    p = common.parser(__doc__.split("\n\n")[0], reference_required=False)
    p.add_argument("--snapshot", choices=["current", "nov2023"], default="current",
                   help="which reference code the checkout is: HEAD (3334d87) or 45ba5c2 (ReLU, descriptor losses)")
    common.add_timing_args(p, "GMRD")
    args = p.parse_args(argv)
    if common.run_timing_only(p, args, timing):
        return 0
    nov2023 = args.snapshot == "nov2023"
    torchvision = common.load_torchvision(args.reference_libs)
    params = GMRDParams(image_size=args.size, outer_edge="reference", mlp_relu=nov2023,
                        aux_weight=0.5 if nov2023 else 0.0)
    torch.manual_seed(args.seed)
    ours = GMRD(GMRD.build_backbone(TRUNK), params).train()
    ours.sample_indices = python_sampler
    ref, retargeted = build_reference(args, torchvision)
    common.copy_state(ours.state_dict(), ref, key_map)
    ref.train()
    print(f"reference {args.reference} ({args.snapshot}); torchvision {torchvision.__version__}, torch "
          f"{torch.__version__}; {args.size} x {args.size}, seed {args.seed}; ours: {params}")
    print(f"weights copied: all {len(ours.state_dict())} tensors; devices retargeted to cpu: "
          f"{', '.join(retargeted) or 'none'}")
    report = common.Report(args.tolerance)
    ep = common.episode(args.size, args.seed)
    factor = balance_foreground(ours, ref, ep, args.seed)
    print(f"foreground decoder's last conv scaled by {factor:.4g} in both models")
    training_round(report, "training", ours, ref, ep, args.seed, nov2023)
    empty = {**ep, "sup_fg": torch.zeros_like(ep["sup_fg"])}
    training_round(report, "training, empty support mask (ADNet fallback)", ours, ref, empty, args.seed, nov2023)
    evaluation_round(report, ours, ref, common.episode(args.size, args.seed + 1), args.seed)
    status = report.finish()
    if args.timing:
        del ref, ours
        timing(args, common.episode(args.size, args.seed), args.timing)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
