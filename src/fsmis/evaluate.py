"""Evaluation protocols for 1-way 1-shot segmentation of 3D scans.

Both protocols share the support side and run from the same trained model; they
differ only in which query slices are segmented and what is scored.

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

``full`` (no ground truth at inference): every slice of the query scan is segmented;
slice z is assigned to chunk ``chunk_of(z, 0, n_slices - 1)`` (its relative position in
the scan), and a prediction anywhere in the scan counts, so false positives above or
below the organ lower the score. The support side is unchanged (the support is an
annotated scan by definition).

Work is shared across classes and slices: each query slice is encoded once for all
test classes and protocols, each support slice once per support scan (its features
are cached across classes), and the support-only work of a method (prototype
pooling, thresholds, normalisation, clustering, BCMA) once per support slice and
class; only the query-dependent part runs per query slice. The reference re-encodes
both for every query slice and class. ``ModelPredictor.encoded`` counts the slices
encoded and ``support_states`` the support states computed, for benchmarks.

``amp`` (``evaluate.amp``; off unless set): the encoder runs under autocast (bf16 on
a CPU, bf16/fp16 on CUDA, see ``fsmis.precision.amp_dtype``) and hands float32
features to the method's head; without it predictions are those of float32.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from fsmis import metrics as M
from fsmis.data.episodes import tile3
from fsmis.models.prototypes import foreground
from fsmis.precision import amp_dtype, autocast_encoder
from fsmis.protocols import PROTOCOLS, extent, query_plan, support_slices

log = logging.getLogger(__name__)


@dataclass
class Scan:
    case: str
    image: np.ndarray  # normalised (z, y, x) float32 (unused by mask transfer)
    label: np.ndarray  # canonical ids (z, y, x)
    spacing_zyx: tuple[float, float, float]


class ModelPredictor:
    """Runs a trained ``FewShotSegmenter`` with feature caching.

    ``batch_size``: slices per encoder call; by default 4 on a CPU (the ResNet-101
    trunk at 256x256 took 560 ms per slice in batches of 4, 710 in batches of 8, on the
    2-core benchmark machine; the features of a slice do not depend on the batch) and
    8 elsewhere. ``amp``: the ``evaluate.amp`` option (False: float32).
    ``channels_last``: the encoder runs on channels-last tensors. ``encoded`` counts
    encoded slices (``{"support": n, "query": n}``), ``support_states`` the support
    states computed.
    """

    def __init__(self, model, device, batch_size: int | None = None, amp=False, channels_last: bool = False):
        self.model = model.to(device).eval()
        self.device = device
        self.batch_size = batch_size or (4 if torch.device(device).type == "cpu" else 8)
        self.dtype = amp_dtype(amp, device)
        self.channels_last = bool(channels_last)
        self._support_cache: dict = {}
        self.encoded = {"support": 0, "query": 0}
        self.support_states = 0

    def _encode(self, image: np.ndarray, zs, kind: str) -> dict[int, torch.Tensor]:
        feats = {}
        zs = list(zs)
        with autocast_encoder(self.model, self.dtype, self.channels_last):
            for i in range(0, len(zs), self.batch_size):
                chunk = zs[i:i + self.batch_size]
                x = torch.cat([tile3(torch.from_numpy(image[z])) for z in chunk]).to(self.device)
                f = self.model.encode(x)
                for z, fz in zip(chunk, f):
                    feats[z] = fz[None]
        self.encoded[kind] += len(zs)
        return feats

    @torch.no_grad()
    def states(self, support: Scan, cid: int, slices: list[int]):
        feats = self._support_cache.setdefault(support.case, {})
        missing = sorted({z for z in slices if z not in feats})
        feats.update(self._encode(support.image, missing, "support"))
        out = []
        for z in slices:
            fg = torch.from_numpy((support.label[z] == cid).astype(np.float32))[None].to(self.device)
            # the method sees the image-size mask (DSPNet's seed_mask: strided reads it)
            out.append(self.model.support_from_mask(feats[z], fg))
            self.support_states += 1
        return out

    @torch.no_grad()
    def encode_query(self, query: Scan, zs) -> dict:
        return self._encode(query.image, sorted(set(zs)), "query")

    @torch.no_grad()
    def predict(self, qfeats: dict, zs: list[int], state, size) -> np.ndarray:
        f = torch.cat([qfeats[z] for z in zs])
        logits = self.model.predict(f, state, size)
        return foreground(logits)[:, 0].cpu().numpy()


class MaskTransferPredictor:
    """Non-learned baseline: each query slice receives the support mask of its chunk."""

    def states(self, support: Scan, cid: int, slices: list[int]):
        return [support.label[z] == cid for z in slices]

    def encode_query(self, query: Scan, zs) -> dict:
        return {}

    def predict(self, qfeats, zs, state, size) -> np.ndarray:
        return np.repeat(state[None], len(zs), axis=0)


SUPPORT_MISSING = "support_missing"


def evaluate_scans(predictor, support: Scan | dict | list, queries: list[Scan], classes: dict[str, int],
                   protocols=("oracle",), n_parts: int = 3, nsd_tolerance_mm: float = 2.0):
    """Segment every query scan for every class under each protocol.

    ``support``: the support scan of every class, or ``{class name: Scan}`` when classes
    take their support from different scans (``evaluate.missing_support: next_scan``),
    or a list of those: the support choices of ``evaluate.supports`` (choice 0 first,
    the published protocol's). A class absent from its support scan cannot be
    segmented: its rows are flagged ``support_missing`` (NaN, left out of means) and
    logged, and the other classes are evaluated as usual.

    Returns ``(rows, predictions)``: one metrics row per (protocol, query, class, support
    choice), with the support case used and the choice's index (``support_choice``), and
    ``predictions[protocol][case]``, a label volume of the predictions of choice 0
    (later classes overwrite earlier ones where two predictions overlap; metrics use
    the unmerged masks). Each query slice is encoded once for all classes, protocols
    and support choices.

    Scoring: Dice etc. over the whole 3D scan from the masks (``fsmis.metrics``). Under
    ``oracle`` the prediction is zero outside the class's extent, and so is the
    reference, so this equals the reference's sum over the extent's slices. Under
    ``full`` a prediction anywhere counts; a class absent from a query scan is
    flagged ``empty_reference`` and scores 0 if anything was predicted for it, and
    ``both_empty`` (NaN, left out of means) if nothing was.
    """
    for protocol in protocols:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    choices = support if isinstance(support, list) else [support]
    if not choices:
        raise ValueError("no support scan given")
    choices = [c if isinstance(c, dict) else {name: c for name in classes} for c in choices]
    states = []  # per choice: {class: support states}
    for supports in choices:
        states.append({})
        for name, cid in classes.items():
            scan = supports[name]
            if extent(scan.label, cid) is None:
                log.warning("class %s (id %d) is absent from support scan %s: not evaluated (flag %s)",
                            name, cid, scan.case, SUPPORT_MISSING)
                continue
            states[-1][name] = predictor.states(scan, cid, support_slices(scan.label, cid, n_parts))
    live = {name for per_choice in states for name in per_choice}
    rows, predictions = [], {protocol: {} for protocol in protocols}
    for q in queries:
        plans = {(protocol, name): query_plan(protocol, q.label, cid, n_parts)
                 for protocol in protocols for name, cid in classes.items() if name in live}
        needed = {z for plan in plans.values() if plan for zs in plan.values() for z in zs}
        qfeats = predictor.encode_query(q, needed)
        for protocol in protocols:
            for k, (supports, choice_states) in enumerate(zip(choices, states)):
                merged = np.zeros(q.label.shape, dtype=np.uint8)
                for name, cid in classes.items():
                    base = {"protocol": protocol, "case": q.case, "class": name, "support_choice": k,
                            "support": supports[name].case}
                    # nothing to segment: no support for the class, or (oracle) no class in this scan
                    plan = plans[protocol, name] if name in choice_states else None
                    if plan is None:
                        rows.append({**base, "flag": "empty_reference" if name in choice_states else SUPPORT_MISSING,
                                     "dice": float("nan"), "iou": float("nan"), "slices_scored": 0})
                        continue
                    ref = q.label == cid
                    pred = np.zeros_like(ref)
                    for part, zs in plan.items():
                        pred[zs] = predictor.predict(qfeats, zs, choice_states[name][part], ref.shape[1:])
                    merged[pred] = cid
                    m = M.case_metrics(pred, ref, q.spacing_zyx, nsd_tolerance_mm)
                    rows.append({**base, "slices_scored": sum(len(zs) for zs in plan.values()), **m})
                if k == 0:
                    predictions[protocol][q.case] = merged
    return rows, predictions


def evaluate_oracle(predictor, support: Scan, queries: list[Scan], classes: dict[str, int],
                    n_parts: int = 3, nsd_tolerance_mm: float = 2.0):
    """The published protocol alone: ``(rows, {case: prediction})``."""
    rows, predictions = evaluate_scans(predictor, support, queries, classes, ("oracle",), n_parts, nsd_tolerance_mm)
    return rows, predictions["oracle"]


def summarize(rows: list[dict], classes) -> dict:
    """Per-class mean over scans (NaN-skipping) and the mean over classes, for rows of
    one protocol."""
    out = {}
    for name in classes:
        vals = [r["dice"] for r in rows if r["class"] == name and not np.isnan(r["dice"])]
        out[name] = float(np.mean(vals)) if vals else float("nan")
    finite = [v for v in out.values() if not np.isnan(v)]
    missing = sorted({r["class"] for r in rows if r.get("flag") == SUPPORT_MISSING})
    return {"dice": out, "mean_dice": float(np.mean(finite)) if finite else float("nan"),
            "n_cases": len({r["case"] for r in rows}), "support_missing": missing}
