"""One function per workflow stage: read inputs, call the library, write outputs
atomically, and log a child run to MLflow.

``workflow/scripts/*.py`` only unpack ``snakemake.*`` and call these, so every stage
can also be run from Python (or a notebook) without Snakemake. ``tracking`` is
``{"experiment", "rule", "wildcards", "config_hash"}``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from fsmis import io, paths
from fsmis.contracts import ClassMap, Metrics, ModelMeta, Splits
from fsmis.labels import class_id

log = logging.getLogger(__name__)


# -- helpers -------------------------------------------------------------------------

def _job(stage: str, tracking: dict, params: dict):
    from fsmis import tracking as T

    tags = {"rule": tracking.get("rule", stage), "wildcards": json.dumps(tracking.get("wildcards", {}), sort_keys=True),
            "config_hash": tracking.get("config_hash", "")}
    tags.update({k: str(v) for k, v in tracking.get("wildcards", {}).items()})
    return T.job_run(stage, tracking.get("experiment", "fsmis"), params=params, tags=tags)


def _config_hash(obj) -> str:
    from fsmis.tracking import config_hash

    return config_hash(obj)


def _set_threads(threads: int) -> None:
    """torch uses exactly the threads Snakemake granted the job (never more than the
    machine has), so parallel jobs do not oversubscribe the CPU."""
    import os

    import torch

    torch.set_num_threads(max(1, min(int(threads), os.cpu_count() or 1)))


def _of(files: dict, case: str, what: str) -> str:
    """The declared file of ``case`` among a job's per-case inputs ``{case: path}``: a
    job reads only what its rule declares, so a case missing there is a workflow bug,
    not a file to look for elsewhere."""
    try:
        return files[case]
    except KeyError:
        raise ValueError(f"no {what} file given for case {case!r} (given: {', '.join(files) or 'none'})") from None


def _array(path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(io.read_image(path))


# -- data stages ---------------------------------------------------------------------

def generate(dataset: dict, out_dir: str, cases: list[str], tracking: dict) -> None:
    """Write a generated dataset (source kind ``generated``, e.g. the phantom) into
    ``out_dir`` with its adapter's ``generate``: ``{case}_image/_label.nii.gz``."""
    from fsmis.data import adapters

    name = dataset["name"]
    t0 = time.perf_counter()
    with _job("fetch", tracking, {"dataset": dataset}) as run:
        written = adapters.get(name).generate(dataset, out_dir, list(cases))
        if list(written) != list(cases):
            raise RuntimeError(f"{name} wrote cases {written}, workflow expected {cases}")
        run.log_metrics({"n_cases": len(written), "seconds": time.perf_counter() - t0})
        log.info("generated %d %s cases in %s (%.1f s)", len(written), name, out_dir, time.perf_counter() - t0)


def fetch_weights(name: str, out: str, tracking: dict) -> None:
    """Download a known pretrained weight file (``fsmis.data.weights``) to ``out``."""
    import os

    from fsmis.data import weights

    with _job("fetch_weights", tracking, {"weights": name}) as run:
        t0 = time.perf_counter()
        path = weights.fetch(name, Path(out).parent)
        if path.resolve() != Path(out).resolve():
            os.replace(path, out)  # the rule names the file by its key, not the URL's name
        run.log_metrics({"bytes": Path(out).stat().st_size, "seconds": time.perf_counter() - t0})


def download(record: str, name: str, out: str, tracking: dict) -> None:
    """Download file ``name`` of Zenodo record ``record`` to ``out`` (resumed, retried,
    verified by size and md5; see ``fsmis.data.zenodo``)."""
    from fsmis.data import zenodo

    with _job("download", tracking, {"record": record, "file": name}) as run:
        t0 = time.perf_counter()
        path = zenodo.download(record, name, Path(out).parent)
        run.log_metrics({"bytes": path.stat().st_size, "seconds": time.perf_counter() - t0})


def unpack(archive: str, out_dir: str, tracking: dict) -> None:
    """Unpack a verified archive into ``out_dir``; no member may land outside it
    (``fsmis.data.archives``)."""
    from fsmis.data import archives

    with _job("unpack", tracking, {"archive": Path(archive).name}) as run:
        t0 = time.perf_counter()
        files = archives.extract(archive, out_dir)
        run.log_metrics({"files": len(files), "seconds": time.perf_counter() - t0})
        log.info("%s: %d files -> %s", archive, len(files), out_dir)


def inventory(dataset: dict, raw_dir: str, cases: list[str], out: str, tracking: dict, n_folds: int = 2) -> None:
    """Which requested cases are usable, for datasets where that is only known after
    unpacking (``fsmis.data.adapters.inventory``): ``out`` lists every requested case
    with ``usable`` 1/0 and the reason a case is skipped; skipped cases are named in
    the log. Stops when the usable cases cannot fill ``n_folds`` folds
    (``fsmis.data.splits.infeasible``), before any per-case job runs."""
    import pandas as pd

    from fsmis.data import adapters
    from fsmis.data.splits import infeasible
    from fsmis.errors import InputError

    with _job("inventory", tracking, {"dataset": dataset}) as run:
        verdict = adapters.inventory(dataset, raw_dir, cases)
        skipped = {c: r for c, r in verdict.items() if r}
        usable = len(verdict) - len(skipped)
        problem = infeasible(usable, int(n_folds))
        if problem:
            raise InputError(raw_dir, f"only {usable} of the {len(verdict)} requested cases are usable "
                                      f"(skipped: {list(skipped)[:10]}): {problem}; choose others with "
                                      f"dataset.cases")
        io.write_tsv(pd.DataFrame({"case": list(verdict), "usable": [int(r is None) for r in verdict.values()],
                                   "reason": [r or "" for r in verdict.values()]}), out)
        run.log_metrics({"requested": len(verdict), "usable": usable, "skipped": len(skipped)})
        if skipped:
            log.warning("skipping %d of %d requested case(s): %s", len(skipped), len(verdict),
                        "; ".join(f"{c} ({r})" for c, r in skipped.items()))
        log.info("inventory: %d usable case(s) -> %s", usable, out)


def canonical(dataset: dict, raw_dir: str, out_dir: str, cases: list[str], cases_tsv: str, tracking: dict) -> None:
    """Validated canonical pairs of ``cases`` (the workflow runs one job per case) and
    their rows of ``cases.tsv``. The pairs come from the dataset's adapter
    (``fsmis.data.adapters``), which may convert (CHAOS DICOM + PNG) into a work folder
    that is removed afterwards."""
    import shutil
    import tempfile

    from fsmis.data import adapters
    from fsmis.data import canonical as C

    facts = adapters.facts(dataset)
    t0 = time.perf_counter()
    with _job("canonical", tracking, {"dataset": dataset}) as run:
        work = Path(tempfile.mkdtemp(prefix=".work-", dir=Path(out_dir).parent))
        try:
            pairs = adapters.get(dataset["name"]).pairs(dataset, raw_dir, work, cases)
            claims = adapters.modality_claims(dataset, cases)
            table = C.build(pairs, out_dir, facts["label_map"], {c: m for c, (m, _, _) in claims.items()},
                            claims={c: where for c, (_, where, own) in claims.items() if not own})
        finally:
            shutil.rmtree(work, ignore_errors=True)
        io.write_tsv(table, cases_tsv)
        run.log_metrics({
            "n_cases": len(table),
            "spacing_z_min": float(table["spacing_z"].min()), "spacing_z_max": float(table["spacing_z"].max()),
            "spacing_xy_min": float(table["spacing_x"].min()), "spacing_xy_max": float(table["spacing_x"].max()),
            "seconds": time.perf_counter() - t0,
        })
        log.info("canonical: %d case(s) -> %s", len(table), out_dir)


def case_table(rows: list[str], out: str) -> None:
    """``cases.tsv``: the per-case rows of the canonical step, in the given order (joined
    as text, so every value is kept exactly as the canonical job wrote it)."""
    from fsmis.data import canonical as C
    from fsmis.errors import InputError

    header, lines = None, []
    for path in rows:
        head, *body = Path(path).read_text(encoding="utf-8").splitlines()
        if header is not None and head != header:
            raise InputError(path, f"columns differ from {rows[0]}: {head!r} vs {header!r}")
        header = head
        lines += [line for line in body if line]
    C.check_case_ids([line.split("\t", 1)[0] for line in lines])
    with io.atomic_path(out) as tmp:
        tmp.write_text("\n".join([header or "", *lines]) + "\n", encoding="utf-8")
    log.info("cases.tsv: %d cases -> %s", len(lines), out)


def preprocess(case: str, modality: str, params: dict, image_in: str, label_in: str, image_out: str,
               label_out: str, tracking: dict) -> None:
    from fsmis.data import preprocess as P

    t0 = time.perf_counter()
    with _job("preprocess", tracking, {"modality": modality, "preprocess": params}) as run:
        image, label = P.preprocess_case(io.read_image(image_in), io.read_image(label_in), modality, params)
        io.write_image(image, image_out)
        io.write_image(label, label_out)
        sp = image.GetSpacing()
        run.log_metrics({"spacing_x": sp[0], "spacing_y": sp[1], "spacing_z": sp[2], "slices": image.GetSize()[2],
                         "seconds": time.perf_counter() - t0})
        log.info("%s: preprocessed to size %s spacing %s", case, image.GetSize(), tuple(round(s, 3) for s in sp))


def classmap(label_paths: dict, out: str, tracking: dict) -> None:
    from fsmis.data import preprocess as P
    from fsmis.labels import CLASSES

    with _job("classmap", tracking, {"n_cases": len(label_paths)}) as run:
        labels = {case: _array(p) for case, p in label_paths.items()}
        index = P.slice_index(labels, {k: v for k, v in CLASSES.items() if k != "background"})
        ClassMap.from_json(index, out).write(out)
        run.log_metrics({f"slices_{k}": sum(len(v) for v in d.values()) for k, d in index.items()})


def superpixels(case: str, modality: str, params: dict, image_in: str, out: str, threads: int, tracking: dict) -> None:
    import SimpleITK as sitk

    from fsmis.data import superpixels as S

    t0 = time.perf_counter()
    with _job("superpixels", tracking, {"modality": modality, "superpixels": params}) as run:
        ref = io.read_image(image_in)
        sp = S.compute(sitk.GetArrayFromImage(ref), modality, params, workers=threads)
        img = sitk.GetImageFromArray(sp.astype(np.int32))
        img.CopyInformation(ref)
        io.write_image(img, out)
        summary = S.summary(sp)
        run.log_metrics({**{k: float(v) for k, v in summary.items()}, "seconds": time.perf_counter() - t0})
        log.info("%s: superpixels %s in %.1f s", case, summary, time.perf_counter() - t0)


def splits(cases_tsv: str, n_folds: int, out: str, tracking: dict) -> None:
    import pandas as pd

    from fsmis.data import splits as S

    with _job("splits", tracking, {"n_folds": n_folds}) as run:
        cases = pd.read_csv(cases_tsv, sep="\t")["case"].astype(str).tolist()
        folds = S.make_folds(cases, n_folds)
        Splits.from_json(folds, out).write(out)
        run.log_metrics({"n_cases": len(cases), "n_folds": n_folds})
        run.log_artifact(out)


# -- training ------------------------------------------------------------------------

def _groups(config: dict, setting: str) -> dict[str, list[str]]:
    """``{group: test classes}`` of the models of one fold (``fsmis.settings``)."""
    from fsmis import settings as S
    from fsmis.data import adapters

    facts = adapters.facts(config["dataset"])
    return S.model_groups(setting, list(facts["classes"]), facts.get("label_groups") or [])


def _train_meta(method: str, setting: str, fold: int, group: str, config: dict) -> dict:
    from fsmis.models import registry

    arch, params = registry.resolve(method, config, setting)
    relevant = {k: config.get(k) for k in ("seed", "model", "train", "preprocess", "superpixels", "dataset")}
    relevant["method_params"] = params
    return {"method": method, "architecture": arch, "setting": setting, "fold": fold, "group": group,
            "model": config["model"], "method_params": relevant["method_params"],
            "config_hash": _config_hash({"method": method, "setting": setting, "fold": fold, "group": group,
                                         **relevant})}


def train(method: str, setting: str, fold: int, config: dict, splits_json: str, classmap_json: str,
          images: dict[str, str], superpixels: dict[str, str], model_out: str, log_out: str, threads: int,
          tracking: dict, group: str = "all") -> None:
    """Train one model: ``method`` for ``fold`` under ``setting``, tested later on the
    classes of ``group`` (``fsmis.settings``: "all" unless setting 2). ``images`` and
    ``superpixels``: ``{case: path}`` of the preprocessed scans and their superpixels
    (at least the fold's training cases)."""
    import pandas as pd
    import torch

    from fsmis import train as T
    from fsmis.precision import amp_dtype, pick_device
    from fsmis.data import adapters, normalize
    from fsmis.data.episodes import SuperpixelEpisodes
    from fsmis.models import registry

    from fsmis import settings as S

    _set_threads(threads)
    groups = _groups(config, setting)
    if group not in groups:
        raise ValueError(f"setting {setting}: no label group {group!r}; groups: {', '.join(groups)}")
    facts = adapters.facts(config["dataset"])
    train_cases = list(Splits.read(splits_json).fold(int(fold)).train)
    modality_of = adapters.case_modalities(config["dataset"], train_cases)
    base = _train_meta(method, setting, int(fold), group, config)
    seed = int(config["seed"]) + 1000 * int(fold)
    excluded = S.excluded_slices(setting, groups[group], ClassMap.read(classmap_json).slices, train_cases)
    params = {"method": method, "setting": setting, "fold": fold, "group": group, "test_classes": groups[group],
              "seed": seed, "model": config["model"], "method_params": base["method_params"],
              "train": config["train"], "train_cases": train_cases}
    with _job("train", tracking, params) as run:
        volumes = [_array(_of(images, c, "image")) for c in train_cases]
        modalities = [modality_of[c] for c in train_cases]
        # CT: one global z-score from the fold's CT training scans (the reference's);
        # MR scans are normalised each by itself
        ct = [v for v, m in zip(volumes, modalities) if m == "CT"]
        stats = normalize.ct_statistics(ct) if ct else None
        # checked against the model.pt contract before hours of training, not after
        meta = ModelMeta.from_json({**base, "test_classes": groups[group], "norm": stats,
                                    "modality": facts["modality"]}, model_out)
        torch.manual_seed(seed)
        model = registry.build(meta.architecture, config["model"], meta.method_params)
        if method == "untrained":
            io.write_tsv(pd.DataFrame(columns=T.LOG_COLUMNS), log_out)
            meta.write(model_out, model.state_dict(), step=0)
            run.log_metrics({"steps": 0})
            log.info("untrained baseline: saved the initial weights of %s", meta.architecture)
            return
        normed = [normalize.normalize(v, m, stats) for v, m in zip(volumes, modalities)]
        sps = [_array(_of(superpixels, c, "superpixels")) for c in train_cases]
        dropped = {(vi, z) for vi, case in enumerate(train_cases) for z in excluded[case]}
        episodes = SuperpixelEpisodes(normed, sps, config["train"]["augment"], seed=seed, excluded=dropped,
                                      sampling=config["train"].get("superpixel_sampling", "uniform"))
        run.log_metrics({"train_slices": len(episodes), "excluded_slices": len(dropped)})
        device = pick_device()
        train_cfg = dict(config["train"])
        if config["model"].get("channels_last"):
            train_cfg["channels_last"] = True
        log.info("training %s fold %s (setting %s, group %s) on %d slices of %d scans (%d excluded), "
                 "device %s, %d threads, amp %s", method, fold, setting, group, len(episodes), len(volumes),
                 len(dropped), device, threads, amp_dtype(train_cfg.get("amp", False), device) or "off")
        summary = T.train(model, episodes, train_cfg, model_out, log_out, meta.to_json(), device=device,
                          tracker=run)
        run.log_metrics({"train_seconds": summary["seconds"], "final_loss": summary["final_loss"]})
        run.log_artifact(log_out)


# -- evaluation ----------------------------------------------------------------------

def _load_scan(case, image_path, label_path, modality, stats, need_image=True):
    import SimpleITK as sitk

    from fsmis.data import normalize
    from fsmis.evaluate import Scan

    lab_img = io.read_image(label_path)
    label = sitk.GetArrayFromImage(lab_img)
    image = normalize.normalize(_array(image_path), modality, stats) if need_image else None
    sx, sy, sz = lab_img.GetSpacing()
    return Scan(case, image, label, (sz, sy, sx)), lab_img


def supports_by_class(split, classmap: dict, names, policy: str = "flag") -> dict[str, str]:
    """``{class: support case}`` of one fold: the fold's support scan, except under
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
        test, support, train = list(split.test), split.support, list(split.train)
    else:
        test, support, train = list(split["test"]), split["support"], list(split["train"])
    ordered = sorted({*train, support, *test}, key=natural_key)
    out = {}
    for name in names:
        case, slices = support, classmap.get(name, {})
        if not slices.get(case) and policy == "next_scan":
            alt = next_support(case, ordered, test, lambda c: bool(slices.get(c)))
            if alt is None:
                log.warning("class %s: absent from support scan %s and from every other non-test scan; "
                            "flagged support_missing", name, case)
            else:
                log.warning("class %s: absent from support scan %s; using %s as its support "
                            "(evaluate.missing_support: next_scan)", name, case, alt)
                case = alt
        out[name] = case
    return out


def write_source_grid(vol: np.ndarray, geometry, canonical_image: str, orientation_source: str, out_path) -> None:
    """One prediction put back on the raw file's grid and axis order (nearest neighbour;
    ``fsmis.data.canonical.to_source_grid``), from the case's canonical image and its
    ``orientation_source`` in ``cases.tsv``."""
    import SimpleITK as sitk

    from fsmis.data import canonical as C

    img = sitk.GetImageFromArray(vol)
    img.CopyInformation(geometry)
    canon = io.read_image(canonical_image)
    io.write_image(C.to_source_grid(img, canon, str(orientation_source)), out_path)


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

    from fsmis import evaluate as E
    from fsmis.data import adapters
    from fsmis.models import registry
    from fsmis.precision import pick_device

    _set_threads(threads)
    groups = _groups(config, setting)
    names = [n for classes in groups.values() for n in classes]
    split = Splits.read(splits_json).fold(int(fold))
    test_cases = list(split.test)
    n_parts = int(config["evaluate"]["n_parts"])
    protocols = list(config["evaluate"]["protocols"])
    if models is not None and set(models) != set(groups):
        raise ValueError(f"setting {setting} needs models for groups {list(groups)}, got {list(models)}")
    if source_grid and (cases_tsv is None or canonical is None):
        raise ValueError("source_grid needs cases_tsv and the canonical images")
    support_of = supports_by_class(split, ClassMap.read(classmap_json).slices, names,
                                   config["evaluate"].get("missing_support", "flag"))
    modalities = adapters.case_modalities(config["dataset"], sorted({*support_of.values(), *test_cases}))
    params = {"method": method, "setting": setting, "fold": fold, "protocols": protocols, "n_parts": n_parts,
              "groups": groups, "support": split.support, "test_cases": test_cases}
    with _job("evaluate", tracking, params) as run:
        run.set_tags({"setting": setting, "protocols": ",".join(protocols)})
        t0 = time.perf_counter()
        rows, merged = [], {p: {} for p in protocols}
        geometry, loaded = {}, {}
        for group, classes in groups.items():
            if models is None:  # mask_transfer: no network, no image needed
                predictor, stats, need_image = E.MaskTransferPredictor(), None, False
            else:
                meta, state_dict = ModelMeta.load(models[group])
                model = registry.build(meta.architecture, meta.model, meta.method_params)
                model.load_state_dict(state_dict)
                predictor = E.ModelPredictor(model, pick_device(), amp=config["evaluate"].get("amp", False),
                                             channels_last=bool(config["model"].get("channels_last", False)))
                stats, need_image = meta.norm, True
            # the groups' models of one fold share their normalisation: read each scan once
            key = (json.dumps(stats, sort_keys=True), need_image)
            if key not in loaded:
                loaded[key] = {c: _load_scan(c, _of(images, c, "image"), _of(labels, c, "label"), modalities[c],
                                             stats, need_image) for c in modalities}
            support = {name: loaded[key][support_of[name]][0] for name in classes}
            queries = [loaded[key][c][0] for c in test_cases]
            geometry.update({c: loaded[key][c][1] for c in test_cases})
            group_rows, preds = E.evaluate_scans(
                predictor, support, queries, {n: class_id(n) for n in classes}, protocols, n_parts=n_parts,
                nsd_tolerance_mm=float(config["evaluate"].get("nsd_tolerance_mm", 2.0)))
            rows += [{**r, "group": group} for r in group_rows]
            for protocol, by_case in preds.items():
                for case, vol in by_case.items():
                    into = merged[protocol].setdefault(case, np.zeros_like(vol))
                    into[vol > 0] = vol[vol > 0]
        Path(pred_dir).mkdir(parents=True, exist_ok=True)
        cases_table = pd.read_csv(cases_tsv, sep="\t", dtype={"case": str}).set_index("case") if source_grid else None
        for protocol, by_case in merged.items():
            for case, vol in by_case.items():
                img = sitk.GetImageFromArray(vol)
                img.CopyInformation(geometry[case])
                io.write_image(img, paths.prediction(pred_dir, case, protocol))
                if source_grid:
                    write_source_grid(vol, geometry[case], _of(canonical, case, "canonical image"),
                                      cases_table.loc[case, "orientation_source"],
                                      paths.prediction(pred_dir, case, protocol, source_grid=True))
        table = pd.DataFrame(rows)
        io.write_tsv(table, per_case_out)
        summaries = {p: E.summarize([r for r in rows if r["protocol"] == p], names) for p in protocols}
        missing = sorted({r["class"] for r in rows if r.get("flag") == E.SUPPORT_MISSING})
        result = {"method": method, "setting": setting, "fold": int(fold), "dataset": config["dataset"]["name"],
                  "support": split.support, "support_by_class": support_of, "support_missing": missing,
                  "groups": groups, "protocols": summaries}
        Metrics.from_json(result, metrics_out).write(metrics_out)
        logged = {"eval_seconds": time.perf_counter() - t0}
        for p, summary in summaries.items():
            logged[f"{p}/mean_dice"] = summary["mean_dice"]
            logged.update({f"{p}/dice_{k}": v for k, v in summary["dice"].items()})
        run.log_metrics({k: v for k, v in logged.items() if not np.isnan(v)})
        run.log_artifact(metrics_out)
        for p, summary in summaries.items():
            log.info("%s fold %s, setting %s, %s protocol: mean Dice %.3f %s (%.1f s)", method, fold, setting, p,
                     summary["mean_dice"], {k: round(v, 3) for k, v in summary["dice"].items()},
                     time.perf_counter() - t0)


# -- report --------------------------------------------------------------------------

def _qualitative_panels(metrics_paths, prediction_dirs, config, images: dict[str, str], labels: dict[str, str],
                        splits_json, setting=None, protocol="oracle", cache: dict | None = None) -> list[dict]:
    """One panel per class for one setting and protocol: the first query scan of the
    lowest evaluated fold, at the middle slice of the class's extent, with the support
    slice of that chunk and every method's prediction there. ``prediction_dirs[i]`` is
    the ``predictions`` folder of the evaluation that wrote ``metrics_paths[i]``; a
    prediction is read under its name there (``fsmis.paths.prediction``).
    ``images``/``labels``: ``{case: path}`` of the preprocessed scans. ``cache`` (a
    dict) keeps volumes read for one setting/protocol for the next."""
    from fsmis import protocols as E
    from fsmis.data import adapters

    cache = {} if cache is None else cache

    def read(path):
        key = str(path)
        if key not in cache:
            cache[key] = _array(path)
        return cache[key]

    facts = adapters.facts(config["dataset"])  # classes in the papers' order
    n_parts = int(config["evaluate"]["n_parts"])
    setting = str(config["settings"][0] if setting is None else setting)
    by_method, support_of = {}, {}
    for p, pred_dir in _paired(metrics_paths, prediction_dirs, "predictions"):
        m = Metrics.read(p)
        if m.setting == setting and protocol in m.protocols:
            by_method.setdefault(m.method, {})[m.fold] = pred_dir
            # each class's support scan (another scan than the fold's under missing_support: next_scan)
            support_of.setdefault(m.fold, {}).update(m.support_by_class)
    if not by_method:
        return []
    fold = min(min(f) for f in by_method.values())
    split = Splits.read(splits_json).fold(fold)
    case = split.test[0]
    image = read(_of(images, case, "image"))
    label = read(_of(labels, case, "label"))
    predicted = {}  # method -> label volume of this case, read once for all classes
    for method, folds in by_method.items():
        if fold in folds:
            found = Path(paths.prediction(folds[fold], case, protocol))
            if found.exists():
                predicted[method] = read(found)
    panels = []
    for name in facts["classes"]:
        cid = class_id(name)
        ext = E.extent(label, cid)
        if ext is None:
            continue
        support = support_of.get(fold, {}).get(name, split.support)
        s_image = read(_of(images, support, "image"))
        s_label = read(_of(labels, support, "label"))
        if E.extent(s_label, cid) is None:  # flagged support_missing: nothing was segmented
            continue
        z = (ext[0] + ext[1]) // 2
        sz = E.support_slices(s_label, cid, n_parts)[E.chunk_of(z, ext[0], ext[1], n_parts)]
        panels.append({"class": name, "image": image[z], "ground_truth": label[z] == cid,
                       "predictions": {m: vol[z] == cid for m, vol in predicted.items()},
                       "support_image": s_image[sz], "support_mask": s_label[sz] == cid,
                       "case": case, "slice": z})
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

    from fsmis import report as R
    from fsmis.data import adapters

    facts = adapters.facts(config["dataset"])  # classes in the papers' order
    method_order = list(config["methods"]) + list(config["baselines"])
    reference = str((config.get("report") or {}).get("reference", "ssl_alpnet"))
    protocols = list(config.get("evaluate", {}).get("protocols", ["oracle"]))
    slices = [(str(s), str(p)) for s in config["settings"] for p in protocols]
    with _job("report", tracking, {"n_metrics": len(metrics_paths), "reference": reference}) as run:
        logs = {}
        for p in train_logs:
            df = pd.read_csv(p, sep="\t")
            if len(df):  # label: "<method> setting<s> fold<k> <label group>"
                logs[paths.train_label(p)] = df
        volumes: dict = {}  # read each scan once for all settings and protocols
        panels = {(s, p): _qualitative_panels(metrics_paths, prediction_dirs, config, images, labels, splits_json,
                                              s, p, volumes)
                  for s, p in slices}
        per_case = [c for _, c in _paired(metrics_paths, per_case_paths, "per_case")]
        written = R.build_report(metrics_paths, out_dir, facts["classes"], method_order,
                                 qualitative_panels=panels, train_logs=logs, dataset=config["dataset"]["name"],
                                 published=published_csv, reference=reference, slices=slices,
                                 per_case_paths=per_case)
        for p in written:
            if str(p).endswith((".png", ".md", ".csv", ".tex")):
                run.log_artifact(p)
        log.info("report: %d files in %s", len(written), out_dir)
