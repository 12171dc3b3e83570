"""Evaluation protocols for 1-way 1-shot segmentation of 3D scans.

``oracle`` (the published protocol; Roy et al. 2020, SSL-ALPNet ``validation.py``):

- the support scan is split into ``n_parts`` (3) chunks along the slices that contain
  the class; the support slice of chunk p is ``zlist[int((2p+1)/(2n) * len(zlist))]``
  (1/6, 1/2, 5/6 of the class's slice list);
- a query slice z is assigned to chunk ``floor((z - z_min) / ((z_max - z_min) / n))``
  (clipped to n-1; 0 if z_max == z_min), where z_min/z_max are the first/last slice
  of the class in the *query's own ground truth* (this is where ground truth is used
  at test time);
- only slices in [z_min, z_max] are segmented and scored; Dice is computed per 3D
  scan from the summed TP/FP/FN of those slices, then averaged over scans (and, in the
  report, over folds).

Work is shared across classes and slices: each query slice is encoded once for all
test classes and each support slice once per class (the reference re-encodes both
for every query slice and class).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from fsmis import metrics as M
from fsmis.data.episodes import tile3
from fsmis.models.prototypes import resize_mask

log = logging.getLogger(__name__)


def support_slices(label: np.ndarray, cid: int, n_parts: int) -> list[int]:
    """Support slice per chunk: 1/6, 1/2, 5/6 of the class's slice list for 3 chunks."""
    zlist = np.flatnonzero((label == cid).reshape(label.shape[0], -1).any(axis=1))
    if zlist.size == 0:
        raise ValueError(f"class id {cid} absent from the support scan")
    return [int(zlist[int((2 * p + 1) / (2 * n_parts) * zlist.size)]) for p in range(n_parts)]


def extent(label: np.ndarray, cid: int) -> tuple[int, int] | None:
    zs = np.flatnonzero((label == cid).reshape(label.shape[0], -1).any(axis=1))
    return (int(zs[0]), int(zs[-1])) if zs.size else None


def chunk_of(z: int, z_min: int, z_max: int, n_parts: int) -> int:
    if z_max == z_min:
        return 0
    part = math.floor((z - z_min) / ((z_max - z_min) / n_parts))
    return min(max(part, 0), n_parts - 1)


@dataclass
class Scan:
    case: str
    image: np.ndarray  # normalised (z, y, x) float32 (unused by mask transfer)
    label: np.ndarray  # canonical ids (z, y, x)
    spacing_zyx: tuple[float, float, float]


class ModelPredictor:
    """Runs a trained ``FewShotSegmenter`` with feature caching."""

    def __init__(self, model, device, batch_size: int = 8):
        self.model = model.to(device).eval()
        self.device = device
        self.batch_size = batch_size
        self._support_cache: dict = {}

    def _encode(self, image: np.ndarray, zs) -> dict[int, torch.Tensor]:
        feats = {}
        zs = list(zs)
        for i in range(0, len(zs), self.batch_size):
            chunk = zs[i:i + self.batch_size]
            x = torch.cat([tile3(torch.from_numpy(image[z])) for z in chunk]).to(self.device)
            f = self.model.encode(x)
            for z, fz in zip(chunk, f):
                feats[z] = fz[None]
        return feats

    @torch.no_grad()
    def states(self, support: Scan, cid: int, slices: list[int]):
        feats = self._support_cache.setdefault(support.case, {})
        missing = [z for z in slices if z not in feats]
        feats.update(self._encode(support.image, missing))
        out = []
        for z in slices:
            fg = torch.from_numpy((support.label[z] == cid).astype(np.float32))[None].to(self.device)
            out.append(self.model.support_state(feats[z], resize_mask(fg, feats[z].shape[-2:])))
        return out

    @torch.no_grad()
    def encode_query(self, query: Scan, zs) -> dict:
        return self._encode(query.image, sorted(set(zs)))

    @torch.no_grad()
    def predict(self, qfeats: dict, zs: list[int], state, size) -> np.ndarray:
        f = torch.cat([qfeats[z] for z in zs])
        logits = self.model.predict(f, state, size)
        return (logits.argmax(dim=1) == 1).cpu().numpy()


class MaskTransferPredictor:
    """Non-learned baseline: each query slice receives the support mask of its chunk."""

    def states(self, support: Scan, cid: int, slices: list[int]):
        return [support.label[z] == cid for z in slices]

    def encode_query(self, query: Scan, zs) -> dict:
        return {}

    def predict(self, qfeats, zs, state, size) -> np.ndarray:
        return np.repeat(state[None], len(zs), axis=0)


def evaluate_oracle(predictor, support: Scan, queries: list[Scan], classes: dict[str, int],
                    n_parts: int = 3, nsd_tolerance_mm: float = 2.0):
    """Returns ``(rows, predictions)``: one metrics row per (query, class) and, per
    query case, a label volume of the predictions (later classes overwrite earlier
    ones where two predictions overlap; metrics use the unmerged masks)."""
    plans = {name: support_slices(support.label, cid, n_parts) for name, cid in classes.items()}
    states = {name: predictor.states(support, classes[name], plans[name]) for name in classes}
    rows, predictions = [], {}
    for q in queries:
        extents = {name: extent(q.label, cid) for name, cid in classes.items()}
        needed = [z for e in extents.values() if e for z in range(e[0], e[1] + 1)]
        qfeats = predictor.encode_query(q, needed)
        merged = np.zeros(q.label.shape, dtype=np.uint8)
        for name, cid in classes.items():
            ref = q.label == cid
            ext = extents[name]
            if ext is None:
                rows.append({"protocol": "oracle", "case": q.case, "class": name, "flag": "empty_reference",
                             "dice": float("nan"), "iou": float("nan"), "slices_scored": 0})
                continue
            z0, z1 = ext
            pred = np.zeros_like(ref)
            for p in range(n_parts):
                zs = [z for z in range(z0, z1 + 1) if chunk_of(z, z0, z1, n_parts) == p]
                if zs:
                    pred[zs] = predictor.predict(qfeats, zs, states[name][p], ref.shape[1:])
            merged[pred] = cid
            # pred is zero outside [z0, z1] and so is ref: full-volume surfaces, no crop planes
            m = M.case_metrics(pred, ref, q.spacing_zyx, nsd_tolerance_mm)
            rows.append({"protocol": "oracle", "case": q.case, "class": name, "slices_scored": z1 - z0 + 1, **m})
        predictions[q.case] = merged
    return rows, predictions


def summarize(rows: list[dict], classes) -> dict:
    """Per-class mean over scans (NaN-skipping) and the mean over classes."""
    out = {}
    for name in classes:
        vals = [r["dice"] for r in rows if r["class"] == name and not np.isnan(r["dice"])]
        out[name] = float(np.mean(vals)) if vals else float("nan")
    finite = [v for v in out.values() if not np.isnan(v)]
    return {"dice": out, "mean_dice": float(np.mean(finite)) if finite else float("nan"),
            "n_cases": len({r["case"] for r in rows})}
