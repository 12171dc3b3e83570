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

from fsmis import io
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


def data_paths(data_dir: str | Path, case: str) -> dict:
    d = Path(data_dir)
    return {
        "image": d / "preprocessed" / f"{case}_image.nii.gz",
        "label": d / "preprocessed" / f"{case}_label.nii.gz",
        "superpixels": d / "superpixels" / f"{case}.nii.gz",
    }


def _array(path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(io.read_image(path))


# -- data stages ---------------------------------------------------------------------

def generate_phantom(dataset: dict, out_dir: str, cases: list[str], tracking: dict) -> None:
    from fsmis.data import phantom

    t0 = time.perf_counter()
    with _job("fetch", tracking, {"dataset": dataset}) as run:
        written = phantom.write_dataset(out_dir, n_cases=len(cases), seed=dataset.get("phantom_seed", 0))
        if list(written) != list(cases):
            raise RuntimeError(f"phantom wrote cases {written}, workflow expected {cases}")
        run.log_metrics({"n_cases": len(written), "seconds": time.perf_counter() - t0})
        log.info("generated %d phantom cases in %s (%.1f s)", len(written), out_dir, time.perf_counter() - t0)


def canonical(dataset: dict, raw_dir: str, out_dir: str, cases: list[str], cases_tsv: str, tracking: dict) -> None:
    from fsmis.data import canonical as C
    from fsmis.data import sources

    facts = sources.info(dataset["name"])
    pairs = [(c, str(Path(raw_dir) / f"{c}_image.nii.gz"), str(Path(raw_dir) / f"{c}_label.nii.gz")) for c in cases]
    t0 = time.perf_counter()
    with _job("canonical", tracking, {"dataset": dataset}) as run:
        table = C.build(pairs, out_dir, facts["label_map"], facts["modality"])
        io.write_tsv(table, cases_tsv)
        run.log_metrics({
            "n_cases": len(table),
            "spacing_z_min": float(table["spacing_z"].min()), "spacing_z_max": float(table["spacing_z"].max()),
            "spacing_xy_min": float(table["spacing_x"].min()), "spacing_xy_max": float(table["spacing_x"].max()),
            "seconds": time.perf_counter() - t0,
        })
        run.log_artifact(cases_tsv)
        log.info("canonical: %d cases -> %s", len(table), out_dir)


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
        io.write_json(index, out)
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
        io.write_json(folds, out)
        run.log_metrics({"n_cases": len(cases), "n_folds": n_folds})
        run.log_artifact(out)


# -- training ------------------------------------------------------------------------

def _test_classes(config: dict, setting: str) -> list[str]:
    from fsmis.data import sources

    if setting != "1":
        raise NotImplementedError(
            f"setting {setting!r} is not implemented yet: only setting 1 runs in this version (see the README)")
    return list(sources.info(config["dataset"]["name"])["classes"])


def _train_meta(method: str, setting: str, fold: int, config: dict) -> dict:
    from fsmis.models import registry

    arch, params = registry.resolve(method, config)
    relevant = {k: config.get(k) for k in ("seed", "model", "train", "preprocess", "superpixels", "dataset")}
    relevant["method_params"] = params
    return {"method": method, "architecture": arch, "setting": setting, "fold": fold,
            "model": config["model"], "method_params": relevant["method_params"],
            "config_hash": _config_hash({"method": method, "setting": setting, "fold": fold, **relevant})}


def train(method: str, setting: str, fold: int, config: dict, splits_json: str, data_dir: str, classmap_json: str,
          model_out: str, log_out: str, threads: int, tracking: dict) -> None:
    import pandas as pd
    import torch

    from fsmis import checkpoint as ckpt
    from fsmis import train as T
    from fsmis.data import normalize, sources
    from fsmis.data.episodes import SuperpixelEpisodes
    from fsmis.models import registry

    _set_threads(threads)
    _test_classes(config, setting)
    facts = sources.info(config["dataset"]["name"])
    split = io.read_json(splits_json)["folds"][int(fold)]
    meta = _train_meta(method, setting, int(fold), config)
    seed = int(config["seed"]) + 1000 * int(fold)
    params = {"method": method, "setting": setting, "fold": fold, "seed": seed, "model": config["model"],
              "method_params": meta["method_params"], "train": config["train"], "train_cases": split["train"]}
    with _job("train", tracking, params) as run:
        images = [_array(data_paths(data_dir, c)["image"]) for c in split["train"]]
        stats = normalize.ct_statistics(images) if facts["modality"] == "CT" else None
        meta["norm"] = stats
        meta["modality"] = facts["modality"]
        torch.manual_seed(seed)
        model = registry.build(meta["architecture"], config["model"], meta["method_params"])
        if method == "untrained":
            io.write_tsv(pd.DataFrame(columns=T.LOG_COLUMNS), log_out)
            ckpt.save({"state_dict": model.state_dict(), "step": 0, "meta": meta}, model_out)
            run.log_metrics({"steps": 0})
            log.info("untrained baseline: saved the initial weights of %s", meta["architecture"])
            return
        normed = [normalize.normalize(v, facts["modality"], stats) for v in images]
        sps = [_array(data_paths(data_dir, c)["superpixels"]) for c in split["train"]]
        episodes = SuperpixelEpisodes(normed, sps, config["train"]["augment"], seed=seed,
                                      sampling=config["train"].get("superpixel_sampling", "uniform"))
        device = T.pick_device()
        log.info("training %s fold %s on %d slices of %d scans, device %s, %d threads",
                 method, fold, len(episodes), len(images), device, threads)
        summary = T.train(model, episodes, config["train"], model_out, log_out, meta, device=device, tracker=run)
        run.log_metrics({"train_seconds": summary["seconds"], "final_loss": summary["final_loss"]})
        run.log_artifact(log_out)


# -- evaluation ----------------------------------------------------------------------

def _load_scan(data_dir, case, modality, stats, need_image=True):
    import SimpleITK as sitk

    from fsmis.data import normalize
    from fsmis.evaluate import Scan

    paths = data_paths(data_dir, case)
    lab_img = io.read_image(paths["label"])
    label = sitk.GetArrayFromImage(lab_img)
    image = normalize.normalize(_array(paths["image"]), modality, stats) if need_image else None
    sx, sy, sz = lab_img.GetSpacing()
    return Scan(case, image, label, (sz, sy, sx)), lab_img


def evaluate(method: str, setting: str, fold: int, config: dict, splits_json: str, data_dir: str, classmap_json: str,
             model_in: str | None, pred_dir: str, per_case_out: str, metrics_out: str, threads: int,
             tracking: dict) -> None:
    import pandas as pd
    import SimpleITK as sitk

    from fsmis import checkpoint as ckpt
    from fsmis import evaluate as E
    from fsmis.data import sources
    from fsmis.models import registry
    from fsmis.train import pick_device

    _set_threads(threads)
    names = _test_classes(config, setting)
    facts = sources.info(config["dataset"]["name"])
    classes = {n: class_id(n) for n in names}
    split = io.read_json(splits_json)["folds"][int(fold)]
    n_parts = int(config["evaluate"]["n_parts"])
    params = {"method": method, "setting": setting, "fold": fold, "protocol": "oracle", "n_parts": n_parts,
              "support": split["support"], "test_cases": split["test"]}
    with _job("evaluate", tracking, params) as run:
        t0 = time.perf_counter()
        if method == "mask_transfer":
            predictor, stats, need_image = E.MaskTransferPredictor(), None, False
        else:
            state = ckpt.load(model_in)
            meta = state["meta"]
            model = registry.build(meta["architecture"], meta["model"], meta["method_params"])
            model.load_state_dict(state["state_dict"])
            predictor, stats, need_image = E.ModelPredictor(model, pick_device()), meta.get("norm"), True
        support, _ = _load_scan(data_dir, split["support"], facts["modality"], stats, need_image)
        queries, geometry = [], {}
        for c in split["test"]:
            scan, ref = _load_scan(data_dir, c, facts["modality"], stats, need_image)
            queries.append(scan)
            geometry[c] = ref
        rows, preds = E.evaluate_oracle(predictor, support, queries, classes, n_parts=n_parts,
                                        nsd_tolerance_mm=float(config["evaluate"].get("nsd_tolerance_mm", 2.0)))
        Path(pred_dir).mkdir(parents=True, exist_ok=True)
        for case, vol in preds.items():
            img = sitk.GetImageFromArray(vol)
            img.CopyInformation(geometry[case])
            io.write_image(img, Path(pred_dir) / f"{case}.nii.gz")
        table = pd.DataFrame(rows)
        io.write_tsv(table, per_case_out)
        summary = E.summarize(rows, names)
        result = {"method": method, "setting": setting, "fold": int(fold), "dataset": config["dataset"]["name"],
                  "support": split["support"], "protocols": {"oracle": summary}}
        io.write_json(result, metrics_out)
        run.log_metrics({**{f"dice_{k}": v for k, v in summary["dice"].items()}, "mean_dice": summary["mean_dice"],
                         "eval_seconds": time.perf_counter() - t0})
        run.log_artifact(metrics_out)
        log.info("%s fold %s: mean Dice %.3f %s (%.1f s)", method, fold, summary["mean_dice"],
                 {k: round(v, 3) for k, v in summary["dice"].items()}, time.perf_counter() - t0)


# -- report --------------------------------------------------------------------------

def _qualitative_panels(metrics_paths, config, data_dir) -> list[dict]:
    """One panel per class: the first query scan of the lowest evaluated fold of the
    first setting, at the middle slice of the class's extent, with every method's
    prediction there."""
    from fsmis import evaluate as E
    from fsmis.data import sources

    facts = sources.info(config["dataset"]["name"])
    by_method = {}
    setting = str(config["settings"][0])
    for p in metrics_paths:
        m = io.read_json(p)
        if str(m["setting"]) == setting:
            by_method.setdefault(m["method"], {})[int(m["fold"])] = Path(p).parent
    if not by_method:
        return []
    fold = min(min(f) for f in by_method.values())
    splits_json = Path(metrics_paths[0]).parents[3] / "splits.json"
    split = io.read_json(splits_json)["folds"][fold]
    case = split["test"][0]
    image = _array(data_paths(data_dir, case)["image"])
    label = _array(data_paths(data_dir, case)["label"])
    s_image = _array(data_paths(data_dir, split["support"])["image"])
    s_label = _array(data_paths(data_dir, split["support"])["label"])
    panels = []
    for name in facts["classes"]:
        cid = class_id(name)
        ext = E.extent(label, cid)
        if ext is None:
            continue
        z = (ext[0] + ext[1]) // 2
        sz = E.support_slices(s_label, cid, int(config["evaluate"]["n_parts"]))[
            E.chunk_of(z, ext[0], ext[1], int(config["evaluate"]["n_parts"]))]
        preds = {}
        for method, folds in by_method.items():
            if fold in folds:
                pred_file = folds[fold] / "predictions" / f"{case}.nii.gz"
                if pred_file.exists():
                    preds[method] = _array(pred_file)[z] == cid
        panels.append({"class": name, "image": image[z], "ground_truth": label[z] == cid, "predictions": preds,
                       "support_image": s_image[sz], "support_mask": s_label[sz] == cid,
                       "case": case, "slice": z})
    return panels


def report(metrics_paths: list[str], train_logs: list[str], config: dict, data_dir: str, out_dir: str,
           tracking: dict) -> None:
    import pandas as pd

    from fsmis import report as R
    from fsmis.data import sources

    facts = sources.info(config["dataset"]["name"])
    method_order = list(config["methods"]) + list(config["baselines"])
    with _job("report", tracking, {"n_metrics": len(metrics_paths)}) as run:
        logs = {}
        for p in train_logs:
            df = pd.read_csv(p, sep="\t")
            if len(df):
                method, setting, fold = Path(p).parts[-4:-1]
                logs[f"{method} {setting} {fold}"] = df
        panels = _qualitative_panels(metrics_paths, config, data_dir)
        written = R.build_report(metrics_paths, out_dir, facts["classes"], method_order,
                                 qualitative_panels=panels, train_logs=logs)
        for p in written:
            if str(p).endswith((".png", ".md", ".csv")):
                run.log_artifact(p)
        log.info("report: %d files in %s", len(written), out_dir)
