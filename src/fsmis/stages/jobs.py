"""What every stage shares: the MLflow child run a stage runs in (:func:`job`), the
torch threads a job may use, reading a per-case file the rule declared, and the label
groups whose models a fold trains and evaluates.

Heavy libraries (torch, SimpleITK) are imported inside the functions that need them,
so a stage that does not use them does not pay for their import.
"""

from __future__ import annotations

import json

import numpy as np

from fsmis import io


def job(stage: str, tracking: dict, params: dict):
    """The child run of one job (a context manager, ``fsmis.tracking.job_run``), tagged
    with its rule, wildcards (as one JSON tag and one tag each) and config hash."""
    from fsmis.tracking import job_run

    tags = {"rule": tracking.get("rule", stage), "wildcards": json.dumps(tracking.get("wildcards", {}), sort_keys=True),
            "config_hash": tracking.get("config_hash", "")}
    tags.update({k: str(v) for k, v in tracking.get("wildcards", {}).items()})
    return job_run(stage, tracking.get("experiment", "fsmis"), params=params, tags=tags)


def set_threads(threads: int) -> None:
    """torch uses exactly the threads Snakemake granted the job (never more than the
    machine has), so parallel jobs do not oversubscribe the CPU."""
    import os

    import torch

    torch.set_num_threads(max(1, min(int(threads), os.cpu_count() or 1)))


def case_file(files: dict, case: str, what: str) -> str:
    """The declared file of ``case`` among a job's per-case inputs ``{case: path}``: a
    job reads only what its rule declares, so a case missing there is a workflow bug,
    not a file to look for elsewhere."""
    try:
        return files[case]
    except KeyError:
        raise ValueError(f"no {what} file given for case {case!r} (given: {', '.join(files) or 'none'})") from None


def read_array(path) -> np.ndarray:
    """The voxels of an image file as a ``(z, y, x)`` array."""
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(io.read_image(path))


def groups_of(config: dict, setting: str) -> dict[str, list[str]]:
    """``{group: test classes}`` of the models of one fold (``fsmis.settings``)."""
    from fsmis import settings
    from fsmis.data import adapters

    facts = adapters.facts(config["dataset"])
    return settings.model_groups(setting, list(facts["classes"]), facts.get("label_groups") or [])
