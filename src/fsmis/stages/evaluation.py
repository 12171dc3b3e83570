"""The evaluate stage: one method on one fold under every configured protocol, with
what it needs around the library's evaluation: each class's support scan
(:func:`supports_by_class`), scans read once per normalisation, and predictions put
back on the raw file's grid (:func:`write_source_grid`). One function per workflow
rule (see :mod:`fsmis.stages`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from fsmis import io, paths
from fsmis.contracts import ClassMap, Metrics, ModelMeta, Splits
from fsmis.data.splits import support_choices
from fsmis.labels import class_id
from fsmis.stages.jobs import case_file, groups_of, job, read_array, set_threads

log = logging.getLogger(__name__)


def _load_scan(case, image_path, label_path, modality, stats, need_image=True):
    """``(Scan, label image)`` of one case: the label and, where the predictor needs
    it, the image normalised with ``stats``; the label image keeps the geometry the
    predictions are written with."""
    import SimpleITK as sitk

    from fsmis.data import normalize
    from fsmis.evaluate import Scan

    lab_img = io.read_image(label_path)
    label = sitk.GetArrayFromImage(lab_img)
    image = normalize.normalize(read_array(image_path), modality, stats) if need_image else None
    sx, sy, sz = lab_img.GetSpacing()
    return Scan(case, image, label, (sz, sy, sx)), lab_img


def supports_by_class(split, classmap: dict, names, policy: str = "flag", support: str | None = None) -> dict[str, str]:
    """``{class: support case}`` of one fold: the fold's support scan (or ``support``, a
    further support choice of ``evaluate.supports``), except under
    ``evaluate.missing_support: next_scan`` for a class that scan lacks, which takes the
    next eligible scan (``fsmis.protocols.next_support``; logged). Under ``flag`` a
    lacking class keeps the fold's support and is flagged by the evaluation. ``split``:
    a ``fsmis.contracts.Fold`` or a dict with its ``test``, ``support``, ``train``;
    ``classmap``: ``ClassMap.slices``."""
    from fsmis.contracts import Fold
    from fsmis.data.splits import natural_key
    from fsmis.protocols import next_support

    if policy not in ("flag", "next_scan"):
        raise ValueError(f"evaluate.missing_support must be flag or next_scan, got {policy!r}")
    if isinstance(split, Fold):
        test, fold_support, train = list(split.test), split.support, list(split.train)
    else:
        test, fold_support, train = list(split["test"]), split["support"], list(split["train"])
    ordered = sorted({*train, fold_support, *test}, key=natural_key)
    support = support or fold_support
    out = {}
    for name in names:
        case, slices = support, classmap.get(name, {})
        if not slices.get(case) and policy == "next_scan":
            # slices bound as a default (ruff B023); next_support calls the predicate at once anyway
            alt = next_support(case, ordered, test, lambda c, slices=slices: bool(slices.get(c)))
            if alt is None:
                log.warning("class %s: absent from support scan %s and from every other non-test scan; "
                            "flagged support_missing", name, case)
            else:
                log.warning("class %s: absent from support scan %s; using %s as its support "
                            "(evaluate.missing_support: next_scan)", name, case, alt)
                case = alt
        out[name] = case
    return out


def write_source_grid(prediction, canonical_image, orientation_source: str, out_path) -> None:
    """One prediction (a SimpleITK image on the preprocessed grid) put back on the raw
    file's grid and axis order (nearest neighbour; ``fsmis.data.canonical.to_source_grid``),
    given the case's canonical image and its ``orientation_source`` in ``cases.tsv``."""
    from fsmis.data import canonical as canonical_conversion

    io.write_image(canonical_conversion.to_source_grid(prediction, canonical_image, str(orientation_source)),
                   out_path)


def evaluate(method: str, setting: str, fold: int, config: dict, splits_json: str, classmap_json: str,
             images: dict[str, str], labels: dict[str, str], models: dict[str, str] | None, pred_dir: str,
             per_case_out: str, metrics_out: str, threads: int, tracking: dict, source_grid: bool = False,
             cases_tsv: str | None = None, canonical: dict[str, str] | None = None) -> None:
    """Evaluate one method on one fold under every configured protocol. ``models`` maps
    each label group of the setting to its model.pt (None for mask_transfer): each
    class is segmented by the model of its group. ``images``/``labels``: ``{case: path}``
    of the preprocessed scans (at least the fold's test and support cases).
    ``source_grid``: also write each prediction on the raw file's grid (needs
    ``cases_tsv`` and ``canonical``, ``{case: canonical image}``). Predictions go into
    ``pred_dir`` under the names of ``fsmis.paths.prediction``."""
    import pandas as pd
    import SimpleITK as sitk

    from fsmis import evaluate as evaluator
    from fsmis.data import adapters
    from fsmis.models import registry
    from fsmis.precision import pick_device, resolve_amp

    set_threads(threads)
    groups = groups_of(config, setting)
    names = [n for classes in groups.values() for n in classes]
    split = Splits.read(splits_json).fold(int(fold))
    test_cases = list(split.test)
    n_parts = int(config["evaluate"]["n_parts"])
    protocols = list(config["evaluate"]["protocols"])
    if models is not None and set(models) != set(groups):
        raise ValueError(f"setting {setting} needs models for groups {list(groups)}, got {list(models)}")
    if source_grid and (cases_tsv is None or canonical is None):
        raise ValueError("source_grid needs cases_tsv and the canonical images")
    # the support choices of evaluate.supports, the published protocol's first
    choices = support_choices(split.test, split.support, [*split.train, split.support, *split.test],
                              config["evaluate"].get("supports", 1))
    slices = ClassMap.read(classmap_json).slices
    policy = config["evaluate"].get("missing_support", "flag")
    supports_of = [supports_by_class(split, slices, names, policy, support=c) for c in choices]
    support_of = supports_of[0]
    needed = {c for by_class in supports_of for c in by_class.values()} | set(test_cases)
    modalities = adapters.case_modalities(config["dataset"], sorted(needed))
    seed = int(config.get("seed", 0))
    params = {"method": method, "setting": setting, "fold": fold, "seed": seed, "protocols": protocols,
              "n_parts": n_parts, "groups": groups, "support": split.support, "supports": choices,
              "test_cases": test_cases}
    if "device_id" in tracking:  # the GPU the job leased, "cpu" without one (fsmis.devices)
        params["device_id"] = tracking["device_id"]
    with job("evaluate", tracking, params) as run:
        run.set_tags({"setting": setting, "protocols": ",".join(protocols), "seed": str(seed)})
        import torch

        torch.manual_seed(seed)  # methods that draw at test time (GMRD's descriptors) predict reproducibly
        device, plan = pick_device(), None
        if models is not None:  # mask_transfer runs no network; `amp: auto` resolved once for every group
            plan = resolve_amp(config["evaluate"].get("amp", False), device, config["model"].get("channels_last"))
            run.log_params({"amp_resolved": plan.path, "amp_reason": plan.reason})
            log.info("precision %s (%s), device %s", plan.path, plan.reason, device)
        t0 = time.perf_counter()
        rows, merged = [], {p: {} for p in protocols}
        geometry, loaded = {}, {}
        for group, classes in groups.items():
            if models is None:  # mask_transfer: no network, no image needed
                predictor, stats, need_image = evaluator.MaskTransferPredictor(), None, False
            else:
                meta, state_dict = ModelMeta.load(models[group])
                model = registry.build(meta.architecture, meta.model, meta.method_params)
                model.load_state_dict(state_dict)
                predictor = evaluator.ModelPredictor(model, device, amp=plan.amp, channels_last=plan.channels_last)
                stats, need_image = meta.norm, True
            # the groups' models of one fold share their normalisation: read each scan once
            key = (json.dumps(stats, sort_keys=True), need_image)
            if key not in loaded:
                loaded[key] = {c: _load_scan(c, case_file(images, c, "image"), case_file(labels, c, "label"),
                                             modalities[c], stats, need_image) for c in modalities}
            support = [{name: loaded[key][by_class[name]][0] for name in classes} for by_class in supports_of]
            queries = [loaded[key][c][0] for c in test_cases]
            geometry.update({c: loaded[key][c][1] for c in test_cases})
            group_rows, preds = evaluator.evaluate_scans(
                predictor, support, queries, {n: class_id(n) for n in classes}, protocols, n_parts=n_parts,
                nsd_tolerance_mm=float(config["evaluate"].get("nsd_tolerance_mm", 2.0)))
            rows += [{**r, "group": group} for r in group_rows]
            for protocol, by_case in preds.items():
                for case, vol in by_case.items():
                    into = merged[protocol].setdefault(case, np.zeros_like(vol))
                    into[vol > 0] = vol[vol > 0]
        Path(pred_dir).mkdir(parents=True, exist_ok=True)
        cases_table = pd.read_csv(cases_tsv, sep="\t", dtype={"case": str}).set_index("case") if source_grid else None
        canonical_images = {}  # read once per case for all protocols
        for protocol, by_case in merged.items():
            for case, vol in by_case.items():
                img = sitk.GetImageFromArray(vol)
                img.CopyInformation(geometry[case])
                io.write_image(img, paths.prediction(pred_dir, case, protocol))
                if source_grid:
                    if case not in canonical_images:
                        canonical_images[case] = io.read_image(case_file(canonical, case, "canonical image"))
                    write_source_grid(img, canonical_images[case], cases_table.loc[case, "orientation_source"],
                                      paths.prediction(pred_dir, case, protocol, source_grid=True))
        table = pd.DataFrame(rows)
        io.write_tsv(table, per_case_out)
        # the protocol summaries are the published protocol's: support choice 0
        summaries = {p: evaluator.summarize([r for r in rows if r["protocol"] == p and r["support_choice"] == 0],
                                            names) for p in protocols}
        missing = sorted(set().union(*(summary["support_missing"] for summary in summaries.values())))
        result = {"method": method, "setting": setting, "fold": int(fold), "seed": seed,
                  "dataset": config["dataset"]["name"], "support": split.support, "supports": choices,
                  "support_by_class": support_of, "support_missing": missing, "groups": groups,
                  "protocols": summaries}
        Metrics.from_json(result, metrics_out).write(metrics_out)
        logged = {"eval_seconds": time.perf_counter() - t0}
        for p, summary in summaries.items():
            logged[f"{p}/mean_dice"] = summary["mean_dice"]
            logged.update({f"{p}/dice_{k}": v for k, v in summary["dice"].items()})
            for k in range(1, len(choices)):  # the further support choices, for comparison in MLflow
                other = evaluator.summarize([r for r in rows if r["protocol"] == p and r["support_choice"] == k], names)
                logged[f"{p}/mean_dice_support{k}"] = other["mean_dice"]
        run.log_metrics({k: v for k, v in logged.items() if not np.isnan(v)})
        run.log_artifact(metrics_out)
        for p, summary in summaries.items():
            log.info("%s fold %s, setting %s, %s protocol: mean Dice %.3f %s (%.1f s)", method, fold, setting, p,
                     summary["mean_dice"], {k: round(v, 3) for k, v in summary["dice"].items()},
                     time.perf_counter() - t0)
