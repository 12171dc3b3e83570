"""Parity of our CAT-Net (``fsmis.models.catnet``) with the reference ``FewShotSeg`` of
github.com/hust-linyi/CAT-Net (``models/fewshot.py``; the losses of ``train_main.py``,
the prediction of ``test_main.py``).

    python benchmarks/parity/catnet.py --reference PATH --reference-libs DIR [--timing 3]

The reference's ``models/fewshot.py`` does not parse (``nn.LayerNorm([256, 32, 32]])``)
and then fails to build (``nn.LayerNorm([[256, 32, 32]])``): its ``models`` folder is
copied to a temporary folder, both repaired to ``[256, 32, 32]`` (the shape its
forward needs), and imported from there (``fewshot`` with ``torchvision_backbones``
beside it, as the reference's own sys.path has it). Two reference models:

A. "reference": the code as it is (repaired to run), against ours with
   ``output="fused", self_attention_softmax="queries"`` (the reference's behaviours);
B. "reference with our two fixes": additionally ``pred_ups = F.interpolate(pred, ...)``
   (which overwrites the cross-attention's prediction) replaced by ``pred_ups =
   pred_ups[0]`` (the prediction computed just before from the cross-attended query,
   refined at test time) and ``SelfAttention``'s ``nn.Softmax(dim=-2)`` by ``dim=-1``;
   against ours with the default parameters.

Both models get the same random weights (our ``deeplabv3_resnet101`` trunk =
``TVDeeplabRes101Encoder``, built by torchvision without downloads; its unused ASPP
head stays random) and the same episode (``common.episode``, 256 x 256). Compared, for
A and for B:

1. training mode at t = -10 (the initial threshold) and at t = the median anomaly score
   of the returned prediction's features (about half the query predicted foreground,
   so the alignment pass has a query prototype): encoder features, query
   self-attention, prior, fused features, cross-attention (B), prototype, output
   probabilities, query loss (NLL weighted 0.1/1 as ``train_main.py``; ours the
   trainer's cross-entropy of our logits), alignment loss, and the gradient of every
   parameter after backward of their sum (parameters without one in both named);
2. evaluation (our cached path: support state once, ``predict`` on two query slices at
   once; the reference as ``test_main.py``: one slice per call, ``n_iters=7``) at t =
   the median anomaly score: probabilities and predicted pixels; for B also the
   refinement: its input features, the cells where the first masks differ, our
   :func:`refine_prototype` on the reference's own inputs against its
   ``updatePrototype``, and the refined prototypes end to end.

Gradients that are 0 in exact arithmetic (the attention bias the softmax cannot see:
keys' with the softmax over keys, queries' with it over queries) are compared at the
scale of their layer's largest gradient, not their own (both are rounding).

``--timing N``: median of N training steps (``fsmis.train.training_step``, SGD) of our
CAT-Net (defaults) and our SSL-ALPNet on the ResNet-101 trunk, round-robin in this
process, wall and CPU time, and CAT-Net's head alone (everything after the encoder,
forward and backward, on fixed features); ``--timing-only`` needs no reference.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path

import torch

from fsmis.models import catnet as catnet_module
from fsmis.models import prototypes as P
from fsmis.models.catnet import CATNet
from fsmis.models.lineage import PROB_EPS, lineage_nll, similarity
from fsmis.models.lineage import upsample_probability as upsample
from fsmis.models.ssl_alpnet import SSLALPNet

if __package__:
    from . import common
else:
    import common

TRUNK = {"backbone": "deeplabv3_resnet101", "feature_dim": 256, "pretrained": None}
UNUSED = {"encoder.asppconv.": "reference's ASPP 1x1 conv, unused (use_aspp=False)",
          "encoder.aspp_out.": "reference's ASPP head, unused (use_aspp=False)"}
N_ITERS = 7  # config.py's n_iters, what test_main.py passes

# text repairs of models/fewshot.py: (what, old, new); each old text must occur exactly once
TO_RUN = [("SelfAttention LayerNorm syntax error", "nn.LayerNorm([256, 32, 32]])", "nn.LayerNorm([256, 32, 32])"),
          ("CrossAttention LayerNorm nested list", "nn.LayerNorm([[256, 32, 32]])", "nn.LayerNorm([256, 32, 32])")]
OUR_FIXES = [("output: the cross-attention's prediction is returned",
              "            pred_ups = F.interpolate(pred, size=img_size, mode='bilinear', align_corners=True)\n",
              "            pred_ups = pred_ups[0]\n"),
             ("self_attention_softmax: over the keys", "self.softmax = nn.Softmax(dim=-2)",
              "self.softmax = nn.Softmax(dim=-1)")]


def key_map(name: str) -> str:
    if name.startswith("backbone.localconv."):
        return "encoder." + name[len("backbone."):]
    if name.startswith("backbone."):
        return "encoder.backbone." + name[len("backbone."):]
    return name  # t, self_attention.*, cross_attention.*, conv_fusion.*: the reference's names


def patched_models(reference: str, repairs, into: Path) -> Path:
    """A copy of the checkout's ``models`` folder with ``repairs`` applied to ``fewshot.py``."""
    dest = into / "models"
    shutil.copytree(Path(reference) / "models", dest)
    path = dest / "fewshot.py"
    text = path.read_text()
    for what, old, new in repairs:
        if text.count(old) != 1:
            raise SystemExit(f"repair '{what}': expected the text once in {path}, found it {text.count(old)} times")
        text = text.replace(old, new)
    path.write_text(text)
    return dest


def build_reference(folder: Path, torchvision):
    module = common.import_reference(folder, "fewshot")
    with common.builders_without_downloads(torchvision.models.segmentation, ["deeplabv3_resnet101"]), \
            common.cuda_as_cpu():
        ref = module.FewShotSeg(use_coco_init=False)
    return ref, common.retarget_devices(ref, "cpu")


class Capture:
    """What modules, methods or module-level functions returned (last call)."""

    def __init__(self):
        self.values, self._undo = {}, []

    def module(self, label, module, pick=None):
        def hook(_m, _i, out):
            self.values[label] = out if pick is None else pick(out)
        self._undo.append(module.register_forward_hook(hook).remove)

    def function(self, label, owner, name, pick=None):
        """``owner.name`` (a module's function, or an instance's method) wrapped."""
        own = name in vars(owner)  # a module's global; an instance's method lives on its class
        plain = getattr(owner, name)

        def wrapped(*a, **k):
            out = plain(*a, **k)
            self.values[label] = out if pick is None else pick(out)
            return out
        setattr(owner, name, wrapped)
        self._undo.append(lambda: setattr(owner, name, plain) if own else delattr(owner, name))

    def close(self):
        for undo in reversed(self._undo):
            undo()
        self._undo = []


def ours_training(ours, ep):
    logits, losses = ours(ep["sup_img"], ep["sup_fg"], ep["qry_img"])
    q = P.segmentation_loss(logits, ep["qry_label"], *ours.query_loss_weights({}))
    ours.zero_grad(set_to_none=True)
    (q + losses["align"]).backward()
    return torch.softmax(logits, 1), {"query": q, "align": losses["align"]}


def reference_training(ref, ep):
    out, align = ref([[ep["sup_img"]]], [[ep["sup_fg"]]], [ep["qry_img"]], train=True)
    criterion = torch.nn.NLLLoss(ignore_index=255, weight=torch.tensor([0.1, 1.0]))  # train_main.py
    q = criterion(torch.log(torch.clamp(out, PROB_EPS, 1 - PROB_EPS)), ep["qry_label"].long())
    ref.zero_grad(set_to_none=True)
    (q + align).backward()
    return out, {"query": q, "align": align.reshape(())}


def set_threshold(value, *models):
    with torch.no_grad():
        for m in models:
            m.t.fill_(value)


def median_score(ours, ep) -> float:
    """The median anomaly score of the features ``ours`` predicts from (``output``), on
    a copy (a forward in training mode would move ``ours``'s BatchNorm statistics)."""
    ours = copy.deepcopy(ours)
    with torch.no_grad():
        feats = ours.encode(torch.cat([ep["sup_img"], ep["qry_img"]]))
        state = ours.support_from_mask(feats[:1], ep["sup_fg"])
        out = ours.query_pass(feats[1:], state)
        return float(similarity(out[ours.params.output], state["prototype"]).median())


def shift_invariant(ours) -> set[str]:
    """Reference names of the biases whose gradient is 0 in exact arithmetic: a bias of
    the keys adds the same number to every logit of a query row (``q_i . b``), a bias
    of the queries the same to every logit of a key column; a softmax over that row
    (over that column) does not change."""
    out = set()
    for name, layer in (("self_attention", ours.self_attention), ("cross_attention", ours.cross_attention)):
        out.add(f"{name}.{'key' if layer.softmax_over == 'keys' else 'query'}.bias")
    return out


def training_round(report, label, ours, ref, ep):
    cross = ours.params.output == "cross"
    co, cr = Capture(), Capture()
    co.module("encoder features", ours.backbone)
    cr.module("encoder features", ref.encoder)
    co.module("query self-attention", ours.self_attention)
    cr.module("query self-attention", ref.self_attention)  # its second call, the query's
    co.function("prior", catnet_module, "correlation_prior")
    cr.function("prior", ref, "generate_prior", pick=lambda x: x[:, 0])
    co.module("fused query features", ours.conv_fusion)
    cr.module("fused query features", ref.conv_fusion)
    if cross:
        co.module("cross-attended query", ours.cross_attention)
        cr.module("cross-attended query", ref.cross_attention, pick=lambda x: x[1])
    co.function("support prototype", ours, "support_from_mask", pick=lambda s: s["prototype"])
    cr.function("support prototype", ref, "getPrototype", pick=lambda x: x[0])
    probs_o, losses_o = ours_training(ours, ep)
    probs_r, losses_r = reference_training(ref, ep)
    co.close()
    cr.close()
    print(f"{label}: t = {float(ours.t.detach()):.4f}, query foreground predicted on "
          f"{float((probs_r[:, 1] > 0.5).float().mean()) * 100:.1f} % of the pixels")
    for k in co.values:
        report.compare(k, co.values[k], cr.values[k])
    report.compare("output probabilities (1-p, p)", probs_o, probs_r)
    for k in ("query", "align"):
        report.compare(f"{k} loss", losses_o[k], losses_r[k], note=f"reference {float(losses_r[k].detach()):.6f}")
    grads_o = {key_map(n): p.grad for n, p in ours.named_parameters()}
    grads_r = {n: p.grad for n, p in ref.named_parameters() if n in grads_o}
    none_o = sorted(n for n, g in grads_o.items() if g is None)
    none_r = sorted(n for n, g in grads_r.items() if g is None)
    if none_o != none_r:
        raise RuntimeError(f"parameters without a gradient differ: ours {none_o[:4]}, reference {none_r[:4]}")
    if none_o:
        modules = sorted({n.split(".")[0] for n in none_o})
        report.info("no gradient (both)", f"{len(none_o)} tensors: {', '.join(modules)}")
    shift = shift_invariant(ours)
    report.compare("gradients", {k: v for k, v in grads_o.items() if v is not None and k not in shift},
                   {k: v for k, v in grads_r.items() if v is not None and k not in shift})
    for name in sorted(shift):
        # exact gradient 0: what both compute is rounding; compared at the scale of the layer's gradients
        if grads_o[name] is None:
            continue
        layer = name.rsplit(".", 2)[0] + "."
        scale = max(float(g.abs().max()) for k, g in grads_r.items() if k.startswith(layer) and g is not None)
        d = float((grads_o[name] - grads_r[name]).abs().max())
        ok = d <= report.tolerance * scale
        if not ok:
            report.failed.append(name)
        report.info(f"grad {name}", f"0 in exact arithmetic; ours max {float(grads_o[name].abs().max()):.1e}, "
                    f"reference {float(grads_r[name].abs().max()):.1e}, max|d| {d:.1e} = "
                    f"{d / scale:.1e} of the layer's largest gradient  {'PASS' if ok else 'FAIL'}")
    report.compare("gradient of t", ours.t.grad, ref.t.grad)


def evaluation_round(report, ours, ref, ep):
    ours.eval()
    ref.eval()
    size = ep["qry_img"].shape[-2:]
    t = median_score(ours, ep)
    set_threshold(t, ours, ref)
    cross = ours.params.output == "cross"
    calls_o, calls_r = [], []  # (inputs, refined prototype) of each refinement
    if cross:
        plain_o, plain_r = catnet_module.refine_prototype, ref.updatePrototype

        def refine_o(feats, proto, pred, *a, **k):
            out = plain_o(feats, proto, pred, *a, **k)
            calls_o.append(((feats, proto, pred), out))
            return out

        def refine_r(fts, prototype, pred, iters, epi):
            out = plain_r(fts, prototype, pred, iters, epi)
            calls_r.append(((fts[epi], prototype[0], pred.sum(-3)), out.detach().reshape(1, -1)))
            return out
        catnet_module.refine_prototype, ref.updatePrototype = refine_o, refine_r
    try:
        with torch.no_grad():
            fs, fq = ours.encode(ep["sup_img"]), ours.encode(ep["qry_img"])
            logits = ours.predict(fq, ours.support_from_mask(fs, ep["sup_fg"]), size)
            out = torch.cat([ref([[ep["sup_img"]]], [[ep["sup_fg"]]], [ep["qry_img"][[i]]], train=False,
                                 n_iters=N_ITERS)[0] for i in range(ep["qry_img"].shape[0])])
    finally:
        if cross:
            catnet_module.refine_prototype = plain_o
            del ref.updatePrototype
    pred_r = out.argmax(1)
    print(f"evaluation ({ep['qry_img'].shape[0]} query slices, n_iters {N_ITERS}): t = {t:.4f}, query foreground "
          f"predicted on {float(pred_r.float().mean()) * 100:.1f} % of the pixels")
    if cross:
        (feats_o, _, pred_o), refined_o = calls_o[0]
        feats_r, proto_r, pred_r0 = (torch.cat(x) for x in zip(*(c[0] for c in calls_r)))
        refined_r = torch.cat([c[1] for c in calls_r])
        report.compare("refinement input features", feats_o, feats_r)
        flipped = (pred_o > 1 - pred_o) != (pred_r0 > 1 - pred_r0)
        margin = float((pred_r0[flipped] - 0.5).abs().max()) if bool(flipped.any()) else 0.0
        report.info("refinement first masks", f"{int(flipped.sum())} of {pred_o.numel()} cells differ, all with "
                    f"|p - 0.5| <= {margin:.1e} (rounding ties); p - 0.5 spans "
                    f"[{float(pred_r0.min()) - 0.5:.1e}, {float(pred_r0.max()) - 0.5:.1e}]")
        # our operator on the reference's own inputs: the refinement itself, without upstream rounding
        mine = catnet_module.refine_prototype(feats_r, proto_r[:1], pred_r0, ours._predict, ours.params.refine_iters,
                                              ours.params.refine_lr)
        report.compare("refinement on the reference's inputs", mine, refined_r)
        rel = common.difference(refined_o, refined_r)[1]
        report.info("refined prototypes (end to end)", f"rel {rel:.2e}: the first masks' rounding ties above "
                    "(the operator on identical inputs agrees exactly)")
        rel = common.difference(torch.softmax(logits, 1), out)[1]
        report.info("probabilities (eval, end to end)", f"rel {rel:.2e}, from the refined prototypes")
    else:
        report.compare("probabilities (eval)", torch.softmax(logits, 1), out)
    report.compare_masks("predictions (eval)", P.foreground(logits)[:, 0], pred_r, out[:, 1] - 0.5)


def compare_pair(report, title, ours, ref, args):
    print(f"\n== {title}")
    ep = common.episode(args.size, args.seed)
    training_round(report, "training, initial threshold", ours, ref, ep)
    set_threshold(median_score(ours, ep), ours, ref)
    training_round(report, "training, threshold at the median anomaly score", ours, ref, ep)
    evaluation_round(report, ours, ref, common.episode(args.size, args.seed + 1, n_query=2))


def timing(args, ep, rounds):
    """Training steps of our CAT-Net and SSL-ALPNet, round-robin; and CAT-Net's head alone
    (everything after the encoder, forward and backward, on fixed features)."""
    models = {}
    for name, cls in (("catnet", CATNet), ("ssl_alpnet", SSLALPNet)):
        torch.manual_seed(args.seed)
        models[name] = cls(cls.build_backbone(TRUNK)).train()
    steps = common.training_steps(models, ep)
    cat = models["catnet"]
    with torch.no_grad():
        feats = cat.encode(torch.cat([ep["sup_img"], ep["qry_img"]]))
    set_threshold(median_score(cat, ep), cat)  # the alignment pass runs, as in most training steps

    def head():
        f = feats.clone().requires_grad_(True)
        out = cat.query_pass(f[1:], cat.support_state(f[:1], ep["sup_fg"]))
        p = upsample(out["cross_p"], ep["qry_img"].shape[-2:])
        loss = lineage_nll(p, ep["qry_label"]) + cat.alignment_loss(out["fused_p"], out["fused"], f[:1], ep["sup_fg"])
        loss.backward()
    steps["catnet head"] = head
    med = common.print_timing(common.alternate(steps, rounds, warmup=1), "catnet")
    for clock in ("wall", "cpu"):
        print(f"  {clock}: CAT-Net's head (self-attention, prior, fusion, cross-attention, losses, their backward): "
              f"{med['catnet head'][clock] / med['catnet'][clock] * 100:.1f} % of its step")


def main(argv=None) -> int:
    p = common.parser(__doc__.split("\n\n")[0], reference_required=False)
    common.add_timing_args(p, "CAT-Net")
    p.add_argument("--only", choices=["A", "B"], default=None, help="compare one pair only")
    args = p.parse_args(argv)
    if common.run_timing_only(p, args, timing):
        return 0
    torchvision = common.load_torchvision(args.reference_libs)
    print(f"reference {args.reference}; torchvision {torchvision.__version__}, torch {torch.__version__}; "
          f"{args.size} x {args.size}, seed {args.seed}")
    report = common.Report(args.tolerance)
    pairs = {"A": ("reference as it is (repaired to run) vs ours, output=fused, self_attention_softmax=queries",
                   TO_RUN, {"output": "fused", "self_attention_softmax": "queries"}),
             "B": ("reference with our two fixes vs ours, default parameters", TO_RUN + OUR_FIXES, {})}
    torch.manual_seed(args.seed)
    trunk_state = CATNet(CATNet.build_backbone(TRUNK)).state_dict()
    with tempfile.TemporaryDirectory() as tmp:
        for key, (title, repairs, params) in pairs.items():
            if args.only and key != args.only:
                continue
            ours = CATNet.from_keywords(CATNet.build_backbone(TRUNK), **params)
            ours.load_state_dict(copy.deepcopy(trunk_state))
            ours.train()
            ref, retargeted = build_reference(patched_models(args.reference, repairs, Path(tmp) / key), torchvision)
            unfilled = common.copy_state(ours.state_dict(), ref, key_map, UNUSED)
            ref.train()
            print(f"\n{key}: repairs {', '.join(w for w, _, _ in repairs)}; weights copied: "
                  f"{len(ours.state_dict())} tensors; reference tensors left random (unused): {len(unfilled)}; "
                  f"devices retargeted to cpu: {', '.join(retargeted) or 'none'}")
            compare_pair(report, title, ours, ref, args)
            del ref, ours
    status = report.finish()
    if args.timing:
        timing(args, common.episode(args.size, args.seed), args.timing)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
