"""Superpixel pseudo-labels for self-supervised training (SSL-ALPNet
``data/pseudolabel_gen.ipynb``).

Per axial slice: ``skimage.segmentation.felzenszwalb(scale=1, sigma=1, min_size)``
on the preprocessed intensities (CT 0..255, MR clipped raw scale: with skimage's
k = scale/255 the region size is effectively set by ``min_size``); a body mask
(CT > 1e-4, MR > 50.0001; largest connected component; holes filled); superpixels
outside the body set to 0 and the rest renumbered 1..K per slice.

``min_size`` (400 in the reference) is given for a 256x256 slice and scaled by the
slice area, so a smaller demo slice gets superpixels of the same size relative to
the anatomy; at 256x256 it is the reference value.

The reference renumbering drops the segment skimage numbered 0, keeps ids of
segments that lie outside the body, and renumbers the largest id once more, leaving
gaps (ssl_alpnet.md §7.1); here ids are consecutive, by one ``np.unique`` pass.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

import numpy as np
from scipy import ndimage
from skimage.segmentation import felzenszwalb

REFERENCE_AREA = 256 * 256
BODY_THRESHOLD = {"CT": 1e-4, "MR": 50.0001}


def body_mask(slice_: np.ndarray, threshold: float) -> np.ndarray:
    mask = slice_ > threshold
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return ndimage.binary_fill_holes(labels == sizes.argmax())


def scaled_min_size(params: dict, shape) -> int:
    return max(1, int(round(params["min_size"] * (shape[0] * shape[1]) / REFERENCE_AREA)))


def segment_slice(slice_: np.ndarray, threshold: float, scale: float, sigma: float, min_size: int) -> np.ndarray:
    mask = body_mask(slice_, threshold)
    if not mask.any():
        return np.zeros(slice_.shape, np.int32)
    seg = felzenszwalb(slice_.astype(np.float64), scale=scale, sigma=sigma, min_size=min_size)
    seg = np.where(mask, seg + 1, 0)
    _, inverse = np.unique(seg, return_inverse=True)  # 0 stays 0: it is the smallest value
    return inverse.reshape(slice_.shape).astype(np.int32)


def _segment_block(args):
    block, threshold, scale, sigma, min_size = args
    return np.stack([segment_slice(s, threshold, scale, sigma, min_size) for s in block])


def compute(image: np.ndarray, modality: str, params: dict, workers: int = 1) -> np.ndarray:
    """``image (z, y, x)`` -> int32 superpixels, ids 1..K per slice, 0 outside the body."""
    if modality not in BODY_THRESHOLD:
        raise ValueError(f"unknown modality {modality!r} (expected CT or MR)")
    opts = (BODY_THRESHOLD[modality], float(params["scale"]), float(params["sigma"]),
            scaled_min_size(params, image.shape[1:]))
    workers = max(1, min(int(workers), image.shape[0]))
    if workers == 1:
        return _segment_block((image, *opts))
    blocks = np.array_split(image, workers)  # contiguous slice blocks, one per process
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return np.concatenate(list(pool.map(_segment_block, [(b, *opts) for b in blocks])))


def summary(sp: np.ndarray) -> dict:
    """Counts for the log: slices, superpixels, mean per slice, median size (px)."""
    per_slice = sp.reshape(sp.shape[0], -1).max(axis=1)
    # one key per (slice, id) so equal ids on different slices count apart
    keys = (np.arange(sp.shape[0])[:, None, None] * (int(per_slice.max()) + 1) + sp)[sp > 0]
    sizes = np.bincount(keys)
    sizes = sizes[sizes > 0] if keys.size else np.array([0])
    return {"n_slices": int(sp.shape[0]), "superpixels": int(per_slice.sum()),
            "per_slice_mean": float(per_slice.mean()), "median_size_px": float(np.median(sizes))}
