"""Intensity normalisation at load time, as the SSL-ALPNet reference does it.

- CT: one global z-score whose mean/std come from all voxels of the fold's
  training scans (preprocessed 0..255 scale); the same statistics are used at test
  time, so they travel inside the checkpoint.
- MR: per-volume z-score (each scan by its own mean/std).

The ADNet lineage z-scores every scan by its own mean/std, CT included: its models
carry :data:`PER_SCAN` instead of CT statistics.
"""

from __future__ import annotations

import numpy as np


def ct_statistics(volumes) -> dict:
    """Mean and std over all voxels of the given volumes (streamed, float64)."""
    n = 0
    s = 0.0
    ss = 0.0
    for v in volumes:
        v = np.asarray(v, dtype=np.float64)
        n += v.size
        s += v.sum()
        ss += np.square(v).sum()
    if n == 0:
        raise ValueError("no training voxels to compute CT normalisation statistics from")
    mean = s / n
    return {"mean": float(mean), "std": float(np.sqrt(max(ss / n - mean * mean, 1e-12)))}


PER_SCAN = {"scheme": "per_scan"}


def normalize(volume: np.ndarray, modality: str, stats: dict | None) -> np.ndarray:
    """``volume`` z-scored as a model trained with ``stats`` expects: CT by ``stats``
    (the training scans' mean/std) unless ``stats`` is :data:`PER_SCAN`; MR, and every
    scan under ``PER_SCAN``, by its own mean/std."""
    volume = np.asarray(volume, dtype=np.float32)
    if stats == PER_SCAN and modality in ("CT", "MR"):
        modality = "MR"
    if modality == "CT":
        if stats is None:
            raise ValueError("CT normalisation needs the training statistics (the model was trained on no CT "
                             "scan: a folder mixing CT and MR needs a CT scan in every fold's training cases)")
        return (volume - stats["mean"]) / stats["std"]
    if modality == "MR":
        return (volume - volume.mean()) / max(float(volume.std()), 1e-6)
    raise ValueError(f"unknown modality {modality!r} (expected CT or MR)")
