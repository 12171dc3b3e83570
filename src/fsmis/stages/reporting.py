"""The report stage: every table and figure of an experiment from its stored results
(``fsmis.report.build_report``), and the qualitative panels it shows (one slice per
class, with the support slice and each method's prediction). One function per
workflow rule (see :mod:`fsmis.stages`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from fsmis import paths
from fsmis.contracts import Metrics, Splits
from fsmis.labels import class_id
from fsmis.stages.jobs import case_file, job, read_array

log = logging.getLogger(__name__)


def _qualitative_panels(metrics_paths, prediction_dirs, config, images: dict[str, str], labels: dict[str, str],
                        splits_json, setting=None, protocol="oracle", cache: dict | None = None) -> list[dict]:
    """One panel per class for one setting and protocol: the first query scan of the
    lowest evaluated fold (its lowest seed), at the middle slice z of the class's extent,
    with the support slice the protocol used for z and every method's prediction there.
    The chunk of z is the protocol's (``fsmis.protocols.query_plan``, as the evaluation
    assigns it): under ``oracle`` by z's position within the class's extent in the
    query's ground truth, under ``full`` by its position in the whole scan; the support
    slice is that chunk's (``fsmis.protocols.support_slices``). ``prediction_dirs[i]`` is
    the ``predictions`` folder of the evaluation that wrote ``metrics_paths[i]``; a
    prediction is read under its name there (``fsmis.paths.prediction``).
    ``images``/``labels``: ``{case: path}`` of the preprocessed scans. ``cache`` (a
    dict) keeps volumes read for one setting/protocol for the next. Besides the arrays a
    panel holds what the figure's titles say: ``case``, ``slice``, ``support_case``,
    ``support_slice``, ``chunk`` (0-based), ``n_parts``, ``setting``, ``protocol``,
    ``fold`` and ``seed``."""
    from fsmis import protocols
    from fsmis.data import adapters

    cache = {} if cache is None else cache

    def read(path):
        key = str(path)
        if key not in cache:
            cache[key] = read_array(path)
        return cache[key]

    facts = adapters.facts(config["dataset"])  # classes in the papers' order
    n_parts = int(config["evaluate"]["n_parts"])
    setting = str(config["settings"][0] if setting is None else setting)
    by_method, support_of = {}, {}
    evaluated = [(p, pred_dir, Metrics.read(p)) for p, pred_dir in _paired(metrics_paths, prediction_dirs,
                                                                           "predictions")]
    seed = min((m.seed for _, _, m in evaluated), default=0)
    for _, pred_dir, m in evaluated:
        if m.setting == setting and protocol in m.protocols and m.seed == seed:
            by_method.setdefault(m.method, {})[m.fold] = pred_dir
            # each class's support scan (another scan than the fold's under missing_support: next_scan)
            support_of.setdefault(m.fold, {}).update(m.support_by_class)
    if not by_method:
        return []
    fold = min(min(f) for f in by_method.values())
    split = Splits.read(splits_json).fold(fold)
    case = split.test[0]
    image = read(case_file(images, case, "image"))
    label = read(case_file(labels, case, "label"))
    predicted = {}  # method -> label volume of this case, read once for all classes
    for method, folds in by_method.items():
        if fold in folds:
            found = Path(paths.prediction(folds[fold], case, protocol))
            if found.exists():
                predicted[method] = read(found)
    panels = []
    for name in facts["classes"]:
        cid = class_id(name)
        ext = protocols.extent(label, cid)
        if ext is None:
            continue
        support = support_of.get(fold, {}).get(name, split.support)
        s_image = read(case_file(images, support, "image"))
        s_label = read(case_file(labels, support, "label"))
        if protocols.extent(s_label, cid) is None:  # flagged support_missing: nothing was segmented
            continue
        z = (ext[0] + ext[1]) // 2
        chunk = next(c for c, zs in protocols.query_plan(protocol, label, cid, n_parts).items() if z in zs)
        sz = protocols.support_slices(s_label, cid, n_parts)[chunk]
        panels.append({"class": name, "image": image[z], "ground_truth": label[z] == cid,
                       "predictions": {m: vol[z] == cid for m, vol in predicted.items()},
                       "support_image": s_image[sz], "support_mask": s_label[sz] == cid,
                       "case": case, "slice": z, "support_case": support, "support_slice": sz,
                       "chunk": chunk, "n_parts": n_parts, "setting": setting, "protocol": protocol,
                       "fold": fold, "seed": seed})
    return panels


def _paired(metrics_paths, others, kind: str) -> list[tuple[str, str]]:
    """``metrics.json`` paths with the ``kind`` file of the same evaluation, given as
    two lists in one order (how the report rule declares them). Where both are paths of
    the result tree, they must name the same method, setting and fold."""
    metrics_paths, others = [str(p) for p in metrics_paths], [str(p) for p in others]
    if len(metrics_paths) != len(others):
        raise ValueError(f"{len(metrics_paths)} metrics.json files but {len(others)} {kind} paths")
    for m, o in zip(metrics_paths, others):
        mine, theirs = paths.match("metrics", m), paths.match(kind, o)
        if mine is not None and theirs is not None and mine != theirs:
            raise ValueError(f"{o} is not the {kind} of {m}: the lists are not in one order")
    return list(zip(metrics_paths, others))


def _factors(config: dict) -> dict:
    """The experiment's folds, support choices and seeds, for the reproduction table's
    protocol key, and the NSD tolerance for the captions."""
    # `seeds` as fsmis.config.normalise leaves it (the report rule declares it)
    seeds = config.get("seeds") or [0]
    evaluate = config.get("evaluate", {})
    split_cfg = config.get("splits") or {}
    return {"n_folds": int(config.get("n_folds", 5)), "lineage": split_cfg.get("lineage", "ssl_alpnet"),
            "supp_idx": int(split_cfg.get("supp_idx", 2)), "supports": evaluate.get("supports", 1),
            "seeds": len(seeds), "nsd_tolerance_mm": float(evaluate.get("nsd_tolerance_mm", 2.0))}


def report(metrics_paths: list[str], per_case_paths: list[str], prediction_dirs: list[str], train_logs: list[str],
           config: dict, images: dict[str, str], labels: dict[str, str], splits_json: str, out_dir: str,
           tracking: dict, published_csv: str | None = None) -> None:
    """Every table and figure of the experiment from stored results (fsmis.report.build_report):
    per configured setting and protocol, qualitative panels included. The reference of
    the paired tests is ``config["report"]["reference"]`` (default ssl_alpnet).
    ``per_case_paths`` and ``prediction_dirs``: the ``per_case.tsv`` and ``predictions``
    of each evaluation, in the order of ``metrics_paths``; ``images``/``labels``:
    ``{case: path}`` of the preprocessed scans; the files go into ``out_dir`` (the
    report folder) under the names of ``fsmis.paths``."""
    import pandas as pd

    # the library module; inside this function the name stands for it, not for the stage
    from fsmis import report
    from fsmis.data import adapters

    facts = adapters.facts(config["dataset"])  # classes in the papers' order
    method_order = list(config["methods"]) + list(config["baselines"])
    reference = str((config.get("report") or {}).get("reference", "ssl_alpnet"))
    protocols = list(config.get("evaluate", {}).get("protocols", ["oracle"]))
    slices = [(str(s), str(p)) for s in config["settings"] for p in protocols]
    with job("report", tracking, {"n_metrics": len(metrics_paths), "reference": reference}) as run:
        logs = {}
        for p in train_logs:
            df = pd.read_csv(p, sep="\t")
            if len(df):  # label: "<method> setting<s> seed<n> fold<k> <label group>"
                logs[paths.train_label(p)] = df
        volumes: dict = {}  # read each scan once for all settings and protocols
        panels = {(s, p): _qualitative_panels(metrics_paths, prediction_dirs, config, images, labels, splits_json,
                                              s, p, volumes)
                  for s, p in slices}
        per_case = [c for _, c in _paired(metrics_paths, per_case_paths, "per_case")]
        written = report.build_report(metrics_paths, out_dir, facts["classes"], method_order,
                                      qualitative_panels=panels, train_logs=logs, dataset=config["dataset"]["name"],
                                      published=published_csv, reference=reference, slices=slices,
                                      per_case_paths=per_case, factors=_factors(config))
        for p in written:
            if str(p).endswith((".png", ".md", ".csv", ".tex")):
                run.log_artifact(p)
        log.info("report: %d files in %s", len(written), out_dir)
