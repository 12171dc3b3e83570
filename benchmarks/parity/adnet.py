"""Parity of our ADNet (``fsmis.models.adnet``) with the reference ``FewShotSeg`` of
github.com/sha168/ADNet (``models/fewshot_anom.py``; the losses of ``main_train.py``,
the prediction of ``main_inference.py``).

    python benchmarks/parity/adnet.py --reference PATH --reference-libs DIR [--timing 5]
    python benchmarks/parity/adnet.py --timing-only --timing 5      # no reference needed

Both models get the same random weights: our ``deeplabv3_resnet101`` trunk (ResNet-101,
output stride 8, 1x1 conv 2048->256) and ``t`` are copied into the reference's
``TVDeeplabRes101Encoder``, which torchvision builds without downloading anything
(its unused ASPP head stays random). Same episode for both (``common.episode``, 256 x
256 by default). Compared:

1. training mode at T = -10 (the initial threshold): encoder features, prototype,
   output probabilities, query loss (NLL weighted 0.1/1, as ``main_train.py``; ours is
   the trainer's cross-entropy of our logits), alignment loss, threshold loss, and the
   gradients of every parameter after backward of their sum;
2. the same at T = the median anomaly score of our query (about half the query is
   predicted foreground, so the alignment pass segments with a real query prototype);
3. evaluation mode (our cached path: support state once, then ``predict`` on a batch
   of two query slices, as ``fsmis.evaluate``; the reference as ``main_inference.py``,
   support and queries through the model together, argmax), at T = the median anomaly
   score of our queries: probabilities and predicted pixels.

Then, for information, our ``prototype_pooling="grid"`` option against the reference
(how much pooling on the feature grid differs from pooling the upsampled features).
``--timing N``: median of N training steps (``fsmis.train.training_step``, SGD) of our
ADNet and our SSL-ALPNet on the same trunk, round-robin in this process, in wall and
CPU time (the CPU time is the steadier one on a shared machine; use ``--threads 1``).
"""

from __future__ import annotations

import torch

from fsmis.models import prototypes as P
from fsmis.models.adnet import ADNet
from fsmis.models.lineage import PROB_EPS as EPS
from fsmis.models.ssl_alpnet import SSLALPNet

if __package__:
    from . import common
else:
    import common

TRUNK = {"backbone": "deeplabv3_resnet101", "feature_dim": 256, "pretrained": None}
# built by TVDeeplabRes101Encoder, never used in its forward (use_aspp=False)
UNUSED = {"encoder.asppconv.": "reference's ASPP 1x1 conv, unused (use_aspp=False)",
          "encoder.aspp_out.": "reference's ASPP head, unused (use_aspp=False)"}


def key_map(name: str) -> str:
    if name == "t":
        return "t"
    if name.startswith("backbone.localconv."):
        return "encoder." + name[len("backbone."):]
    if name.startswith("backbone."):
        return "encoder.backbone." + name[len("backbone."):]
    return name


def build_reference(args, torchvision):
    module = common.import_reference(args.reference, "models.fewshot_anom", args.reference_libs)
    with common.builders_without_downloads(torchvision.models.segmentation, ["deeplabv3_resnet101"]), \
            common.cuda_as_cpu():
        ref = module.FewShotSeg(use_coco_init=False)
    changed = common.retarget_devices(ref, "cpu")
    return ref, changed


class Captured:
    """Records what a method or module returns (the last call)."""

    def __init__(self):
        self.value = None

    def method(self, obj, name):
        plain = getattr(obj, name)

        def wrapped(*a, **k):
            self.value = plain(*a, **k)
            return self.value
        setattr(obj, name, wrapped)

    def hook(self, module):
        return module.register_forward_hook(lambda _m, _i, out: setattr(self, "value", out))


def ours_training(ours, ep):
    logits, losses = ours(ep["sup_img"], ep["sup_fg"], ep["qry_img"])
    q = P.segmentation_loss(logits, ep["qry_label"], *ours.query_loss_weights({}))
    total = q + losses["align"] + losses["threshold"]
    ours.zero_grad(set_to_none=True)
    total.backward()
    return torch.softmax(logits, 1), {"query": q, "align": losses["align"], "threshold": losses["threshold"]}


def reference_training(ref, ep):
    out, align, thresh = ref([[ep["sup_img"]]], [[ep["sup_fg"]]], [ep["qry_img"]], train=True, t_loss_scaler=1.0)
    criterion = torch.nn.NLLLoss(ignore_index=255, weight=torch.tensor([0.1, 1.0]))  # main_train.py, --bg_wt 0.1
    q = criterion(torch.log(torch.clamp(out, EPS, 1 - EPS)), ep["qry_label"].long())
    total = q + align + thresh
    ref.zero_grad(set_to_none=True)
    total.backward()
    return out, {"query": q, "align": align.reshape(()), "threshold": thresh.reshape(())}


def set_threshold(value, *models):
    with torch.no_grad():
        for m in models:
            m.t.fill_(value)


def anomaly_median(ours, feats_sup, sup_fg, feats_qry) -> float:
    with torch.no_grad():
        proto = ours.support_from_mask(feats_sup, sup_fg)
        return float((-P.cosine_scores(feats_qry, proto, ours.params.scale)).median())


def training_round(report, label, ours, ref, ep):
    feats_o, feats_r, proto_o, proto_r = Captured(), Captured(), Captured(), Captured()
    hooks = [feats_o.hook(ours.backbone), feats_r.hook(ref.encoder)]
    proto_o.method(ours, "support_from_mask")
    proto_r.method(ref, "getPrototype")
    probs_o, losses_o = ours_training(ours, ep)
    probs_r, losses_r = reference_training(ref, ep)
    del ours.support_from_mask, ref.getPrototype  # the instance wrappers
    for h in hooks:
        h.remove()
    print(f"{label}: T = {float(ours.t.detach()):.4f}, query foreground predicted on "
          f"{float((probs_r[:, 1] > 0.5).float().mean()) * 100:.1f} % of the pixels")
    report.compare("encoder features", feats_o.value, feats_r.value)
    report.compare("support prototype", proto_o.value, proto_r.value[0])
    report.compare("output probabilities (1-p, p)", probs_o, probs_r)
    for k in ("query", "align", "threshold"):
        report.compare(f"{k} loss", losses_o[k], losses_r[k])
    grads_o = {key_map(n): p.grad for n, p in ours.named_parameters()}
    grads_r = {n: p.grad for n, p in ref.named_parameters() if n in grads_o}
    missing = [n for n, g in {**grads_o, **grads_r}.items() if g is None]
    if missing:
        raise RuntimeError(f"no gradient for {missing[:5]}")
    report.compare("gradients", grads_o, grads_r)
    report.compare("gradient of T", ours.t.grad, ref.t.grad)
    return feats_o.value.detach()


def evaluation_round(report, ours, ref, ep):
    ours.eval()
    ref.eval()
    size = ep["qry_img"].shape[-2:]
    with torch.no_grad():
        fs, fq = ours.encode(ep["sup_img"]), ours.encode(ep["qry_img"])
        t = anomaly_median(ours, fs, ep["sup_fg"], fq)
        set_threshold(t, ours, ref)
        logits = ours.predict(fq, ours.support_from_mask(fs, ep["sup_fg"]), size)
        out, _, _ = ref([[ep["sup_img"]]], [[ep["sup_fg"]]], [ep["qry_img"]], train=False)
        grid = ADNet.from_keywords(ours.backbone, prototype_pooling="grid").eval()
        set_threshold(t, grid)
        grid_logits = grid.predict(fq, grid.support_from_mask(fs, ep["sup_fg"]), size)
        proto_up = ours.support_from_mask(fs, ep["sup_fg"])
        proto_grid = grid.support_from_mask(fs, ep["sup_fg"])
    pred_r = out.argmax(1)
    print(f"evaluation ({ep['qry_img'].shape[0]} query slices): T = {t:.4f}, query foreground predicted on "
          f"{float(pred_r.float().mean()) * 100:.1f} % of the pixels")
    report.compare("probabilities (eval)", torch.softmax(logits, 1), out)
    report.compare_masks("predictions (eval)", P.foreground(logits)[:, 0], pred_r, out[:, 1] - 0.5)
    differ = P.foreground(grid_logits)[:, 0] != pred_r
    cos = float(torch.nn.functional.cosine_similarity(proto_up, proto_grid))
    report.info("option prototype_pooling=grid", f"prototype cosine to the reference's {cos:.6f}; "
                f"{int(differ.sum())} of {differ.numel()} predicted pixels differ "
                f"({float(differ.float().mean()) * 100:.2f} %)")


def timing(args, ep, rounds):
    models = {}
    for name, cls in (("adnet", ADNet), ("ssl_alpnet", SSLALPNet)):
        torch.manual_seed(args.seed)
        models[name] = cls(cls.build_backbone(TRUNK)).train()
    common.print_timing(common.alternate(common.training_steps(models, ep), rounds, warmup=1), "adnet")


def main(argv=None) -> int:
    p = common.parser(__doc__.split("\n\n")[0], reference_required=False)
    common.add_timing_args(p, "ADNet")
    args = p.parse_args(argv)
    if common.run_timing_only(p, args, timing):
        return 0
    torchvision = common.load_torchvision(args.reference_libs)
    torch.manual_seed(args.seed)
    ours = ADNet(ADNet.build_backbone(TRUNK)).train()
    ref, retargeted = build_reference(args, torchvision)
    unfilled = common.copy_state(ours.state_dict(), ref, key_map, UNUSED)
    ref.train()
    print(f"reference {args.reference}; torchvision {torchvision.__version__}, torch {torch.__version__}; "
          f"{args.size} x {args.size}, seed {args.seed}")
    print(f"weights copied: {len(ours.state_dict())} tensors; reference tensors left random (unused in its "
          f"forward): {len(unfilled)}; devices retargeted to cpu: {', '.join(retargeted) or 'none'}")
    report = common.Report(args.tolerance)
    ep = common.episode(args.size, args.seed)
    feats = training_round(report, "training, initial threshold", ours, ref, ep)
    t = anomaly_median(ours, feats[:1], ep["sup_fg"], feats[1:])
    set_threshold(t, ours, ref)
    training_round(report, "training, threshold at the query's median anomaly score", ours, ref, ep)
    ep_eval = common.episode(args.size, args.seed + 1, n_query=2)
    evaluation_round(report, ours, ref, ep_eval)
    status = report.finish()
    if args.timing:
        del ref
        timing(args, common.episode(args.size, args.seed), args.timing)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
