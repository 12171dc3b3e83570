"""The train stage: one model of one method, fold, setting and label group, with the
metadata its ``model.pt`` carries. One function per workflow rule
(see :mod:`fsmis.stages`).
"""

from __future__ import annotations

import logging

from fsmis import io
from fsmis.contracts import ClassMap, ModelMeta, Splits
from fsmis.stages.jobs import case_file, groups_of, job, read_array, set_threads

log = logging.getLogger(__name__)


SUPERPIXELS_2D, SUPERVOXELS_3D = "superpixels2d", "supervoxels3d"
DEFAULT_DATA = {"pseudo_labels": SUPERPIXELS_2D, "normalisation": "ssl_alpnet"}


def _train_meta(method: str, setting: str, fold: int, group: str, config: dict, resolved: dict,
                data: dict | None = None) -> dict:
    """What ``model.pt`` records of how it was trained; its ``config_hash`` covers only
    the config sections that change the trained weights. ``resolved``: the method's
    ``{"architecture", "params"}`` as the rule resolved them (``fsmis.models.resolve``);
    ``data``: its pseudo-labels and normalisation (``fsmis.models.resolve.training_data``)."""
    from fsmis.config import config_hash

    data = {**DEFAULT_DATA, **(data or {})}
    labels = "supervoxels" if data["pseudo_labels"] == SUPERVOXELS_3D else "superpixels"
    relevant = {k: config.get(k) for k in ("seed", "model", "train", "preprocess", labels, "dataset")}
    if isinstance(relevant["train"], dict) and "workers" in relevant["train"]:
        # episode workers change how fast, not what is trained (fsmis.data.prefetch)
        relevant["train"] = {k: v for k, v in relevant["train"].items() if k != "workers"}
    if data != DEFAULT_DATA:  # the SSL-ALPNet lineage's hash stays what it was
        relevant["training_data"] = data
    relevant["method_params"] = dict(resolved["params"])
    return {"method": method, "architecture": resolved["architecture"], "setting": setting, "fold": fold,
            "group": group, "model": config["model"], "method_params": relevant["method_params"],
            "config_hash": config_hash({"method": method, "setting": setting, "fold": fold, "group": group,
                                        **relevant})}


def train(method: str, setting: str, fold: int, config: dict, method_params: dict, splits_json: str,
          classmap_json: str, images: dict[str, str], pseudo_labels: dict[str, str], model_out: str, log_out: str,
          threads: int, tracking: dict, group: str = "all", training_data: dict | None = None) -> None:
    """Train one model: ``method`` for ``fold`` under ``setting``, tested later on the
    classes of ``group`` (``fsmis.settings``: "all" unless setting 2). ``images`` and
    ``pseudo_labels``: ``{case: path}`` of the preprocessed scans and their pseudo-label
    maps (at least the fold's training cases). ``config``: the sections the rule declares
    (seed, model, train, preprocess, superpixels, supervoxels, dataset); ``method_params``:
    the method's resolved ``{"architecture", "params"}``; ``training_data``: its
    ``pseudo_labels`` (``superpixels2d``: SSL-ALPNet's 2D superpixel episodes,
    ``fsmis.data.episodes``; ``supervoxels3d``: the ADNet lineage's supervoxel episodes,
    ``fsmis.data.volume_episodes``) and ``normalisation`` (``ssl_alpnet``: CT by the
    fold's training statistics, MR per scan; ``per_scan``: every scan by its own)."""
    import pandas as pd
    import torch

    from fsmis import settings
    from fsmis import train as training_loop
    from fsmis.data import adapters, normalize, prefetch
    from fsmis.data.episodes import SuperpixelEpisodes
    from fsmis.data.volume_episodes import SupervoxelEpisodes
    from fsmis.models import registry
    from fsmis.precision import pick_device, resolve_amp

    set_threads(threads)
    groups = groups_of(config, setting)
    if group not in groups:
        raise ValueError(f"setting {setting}: no label group {group!r}; groups: {', '.join(groups)}")
    facts = adapters.facts(config["dataset"])
    train_cases = list(Splits.read(splits_json).fold(int(fold)).train)
    modality_of = adapters.case_modalities(config["dataset"], train_cases)
    data = {**DEFAULT_DATA, **(training_data or {})}
    base = _train_meta(method, setting, int(fold), group, config, method_params, data)
    seed = int(config["seed"]) + 1000 * int(fold)
    excluded = settings.excluded_slices(setting, groups[group], ClassMap.read(classmap_json).slices, train_cases)
    params = {"method": method, "setting": setting, "fold": fold, "group": group, "test_classes": groups[group],
              "seed": seed, "model": config["model"], "method_params": base["method_params"],
              "train": config["train"], "train_cases": train_cases}
    if "device_id" in tracking:  # the GPU the job leased, "cpu" without one (fsmis.devices)
        params["device_id"] = tracking["device_id"]
    with job("train", tracking, params) as run:
        volumes = [read_array(case_file(images, c, "image")) for c in train_cases]
        modalities = [modality_of[c] for c in train_cases]
        # CT: one global z-score from the fold's CT training scans (the reference's);
        # MR scans are normalised each by itself
        ct = [v for v, m in zip(volumes, modalities) if m == "CT"]
        if data["normalisation"] == "per_scan":
            stats = normalize.PER_SCAN
        else:
            stats = normalize.ct_statistics(ct) if ct else None
        # checked against the model.pt contract before hours of training, not after
        meta = ModelMeta.from_json({**base, "test_classes": groups[group], "norm": stats,
                                    "modality": facts["modality"]}, model_out)
        torch.manual_seed(seed)
        model = registry.build(meta.architecture, config["model"], meta.method_params)
        if method == "untrained":
            io.write_tsv(pd.DataFrame(columns=training_loop.LOG_COLUMNS), log_out)
            meta.write(model_out, model.state_dict(), step=0)
            run.log_metrics({"steps": 0})
            log.info("untrained baseline: saved the initial weights of %s", meta.architecture)
            return
        normed = [normalize.normalize(v, m, stats) for v, m in zip(volumes, modalities)]
        maps = [read_array(case_file(pseudo_labels, c, "pseudo-labels")) for c in train_cases]
        dropped = {(vi, z) for vi, case in enumerate(train_cases) for z in excluded[case]}
        train_cfg = dict(config["train"])
        # processes drawing episodes ahead of the step; the model is the same for any count
        train_cfg["workers"] = prefetch.resolve_workers(train_cfg.get("workers", "auto"), threads)
        if data["pseudo_labels"] == SUPERVOXELS_3D:
            episodes = SupervoxelEpisodes(normed, maps, train_cfg["augment"], seed=seed, excluded=dropped,
                                          sampling=train_cfg.get("supervoxel_sampling", "candidates"),
                                          min_size=train_cfg.get("supervoxel_min_size", 200),
                                          shear_about=train_cfg["augment"].get("shear_about", "centre"))
        else:
            episodes = SuperpixelEpisodes(normed, maps, train_cfg["augment"], seed=seed, excluded=dropped,
                                          sampling=train_cfg.get("superpixel_sampling", "uniform"))
        run.log_metrics({"train_slices": len(episodes), "excluded_slices": len(dropped)})
        device = pick_device()
        # `amp: auto` resolved once here: the loop gets the explicit choice, the run records it
        plan = resolve_amp(train_cfg.get("amp", False), device, config["model"].get("channels_last"))
        train_cfg["amp"], train_cfg["channels_last"] = plan.amp, plan.channels_last
        run.log_params({"amp_resolved": plan.path, "amp_reason": plan.reason})
        log.info("training %s fold %s (setting %s, group %s) on %d slices of %d scans (%d excluded), %s, "
                 "normalisation %s, device %s, %d threads, amp %s", method, fold, setting, group, len(episodes),
                 len(volumes), len(dropped), data["pseudo_labels"], data["normalisation"], device, threads,
                 f"{plan.path} ({plan.reason})")
        summary = training_loop.train(model, episodes, train_cfg, model_out, log_out, meta.to_json(), device=device,
                                      tracker=run)
        run.log_metrics({"train_seconds": summary["seconds"], "final_loss": summary["final_loss"]})
        run.log_artifact(log_out)
