"""Superpixel pseudo-labels for self-supervised episodes (docs/methods.md,
'SSL-ALPNet: superpixel pseudo-labels').

Per axial slice of a preprocessed volume: ``skimage.segmentation.felzenszwalb`` with
``scale`` 1, ``sigma`` 1 and ``min_size`` 400 on the stored intensities (CT 0..255;
skimage's k = scale/255 makes the merge threshold tiny, so segment size is set by
``min_size``), restricted to a body mask (threshold, largest connected component,
holes filled), 0 outside it.

``body_connectivity`` names the neighbourhood of that component: 8, edge and corner
neighbours (the default, as the reference's ``skimage.measure.label``, whose default
connectivity is the full ``ndim``), or 4, edge neighbours only (``scipy.ndimage.label``'s
default, which fsmis used before the option existed). They differ only where parts of
the thresholded slice touch at a corner and nowhere along an edge; with 8 such parts
are one component. On the phantom they give the same masks.

``min_size`` is defined for a 256x256 slice and scaled by the slice area, so a smaller
demo slice keeps superpixels of the same size relative to the anatomy; at 256x256 it is
exactly the reference value.

Ids are consecutive 1..K per slice. The reference's renumbering drops the segment
skimage numbered 0 (which can lie inside the body), keeps ids of segments outside the
mask and leaves a gap at the top ('SSL-ALPNet: known defects'); one ``np.unique`` pass here
keeps every in-body segment and leaves no gaps.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from scipy import ndimage
from skimage.segmentation import felzenszwalb

REFERENCE_AREA = 256 * 256
DEFAULTS = {"scale": 1.0, "sigma": 1.0, "min_size": 400,
            "ct_body_threshold": 1e-4,  # 0..255 scale: above the window's lower bound
            "mr_body_threshold": 50.0001,
            "body_connectivity": 8}  # as the reference; 4: edge neighbours only


def compute(image: np.ndarray, modality: str, params: dict, workers: int = 1) -> np.ndarray:
    """``image`` (z, y, x) -> int32 superpixels: ids 1..K per slice, 0 outside the body.

    ``workers > 1`` spreads slices over processes; the result is identical to one worker.
    """
    p = {**DEFAULTS, **params}
    if modality not in ("CT", "MR"):
        raise ValueError(f"unknown modality {modality!r} (expected CT or MR)")
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"expected a (z, y, x) volume, got shape {image.shape}")
    opts = {"threshold": float(p["ct_body_threshold" if modality == "CT" else "mr_body_threshold"]),
            "scale": float(p["scale"]), "sigma": float(p["sigma"]),
            "min_size": scaled_min_size(p, image.shape[1:]), "connectivity": int(p["body_connectivity"])}
    workers = max(1, min(int(workers), image.shape[0]))
    if workers == 1:
        return _segment_block(image, opts)
    # a few blocks per worker balance slices with more or less body in them
    blocks = np.array_split(image, min(image.shape[0], 4 * workers))
    with ProcessPoolExecutor(workers, mp_context=_context()) as pool:
        parts = list(pool.map(_segment_block, blocks, [opts] * len(blocks)))
    return np.concatenate(parts).astype(np.int32, copy=False)


def _context():
    """Fork where the platform has it. spawn/forkserver re-import the caller's main
    script in every worker, which re-runs an unguarded Snakemake ``script:`` job; the
    forked workers only run numpy/scipy/skimage on the slices they are sent, touch no
    inherited locks or files, and return arrays, so inheriting the parent is harmless.
    Python >= 3.12 may warn about forking a process that has threads (e.g. ITK's pool)."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def scaled_min_size(params: dict, shape) -> int:
    """``min_size`` scaled from a 256x256 slice to a ``shape`` (y, x) slice."""
    return max(1, int(round(float(params["min_size"]) * shape[0] * shape[1] / REFERENCE_AREA)))


CONNECTIVITY = {4: ndimage.generate_binary_structure(2, 1), 8: ndimage.generate_binary_structure(2, 2)}


def body_mask(slice_: np.ndarray, threshold: float, connectivity: int = 8) -> np.ndarray:
    """Largest ``connectivity``-connected (4 or 8) component above ``threshold``,
    holes filled; may be empty. Of equal components the first in row-major order (the
    reference's ``argmax`` of the component sizes)."""
    if connectivity not in CONNECTIVITY:
        raise ValueError(f"body connectivity must be 4 or 8, got {connectivity!r}")
    labels, n = ndimage.label(slice_ > threshold, structure=CONNECTIVITY[connectivity])
    if n == 0:
        return np.zeros(slice_.shape, bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return ndimage.binary_fill_holes(labels == np.argmax(sizes))


def segment_slice(slice_: np.ndarray, threshold: float, scale: float, sigma: float, min_size: int,
                  connectivity: int = 8) -> np.ndarray:
    mask = body_mask(slice_, threshold, connectivity)
    if not mask.any():
        return np.zeros(slice_.shape, np.int32)
    seg = felzenszwalb(slice_.astype(np.float64), scale=scale, sigma=sigma, min_size=min_size, channel_axis=None)
    # shift so skimage's segment 0 survives, zero outside the body, then renumber the
    # ids present in increasing order (a counting pass, no sort): 0 keeps id 0
    # whenever there is background, the rest become 1..K
    seg = np.where(mask, seg.astype(np.intp) + 1, 0)
    present = np.bincount(seg.ravel()) > 0
    rank = np.cumsum(present, dtype=np.int32)  # 1-based rank of each present id
    if present[0]:  # background present: it takes 0, the segments 1..K
        rank -= 1
    return rank[seg]


def _segment_block(block: np.ndarray, opts: dict) -> np.ndarray:
    return np.stack([segment_slice(s, **opts) for s in block]).astype(np.int32)


def summary(sp: np.ndarray) -> dict:
    """For the job log: slices, total superpixels, mean per slice, median size (px)."""
    per_slice = sp.reshape(sp.shape[0], -1).max(axis=1).astype(np.int64)
    sizes = [np.bincount(s.ravel())[1:] for s in sp]
    sizes = np.concatenate(sizes) if sizes else np.zeros(0, np.int64)
    sizes = sizes[sizes > 0]
    return {"n_slices": int(sp.shape[0]), "superpixels": int(per_slice.sum()),
            "per_slice_mean": float(per_slice.mean()) if per_slice.size else 0.0,
            "median_size_px": float(np.median(sizes)) if sizes.size else 0.0}
