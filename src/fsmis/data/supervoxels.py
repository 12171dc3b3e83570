"""3D supervoxel pseudo-labels of the ADNet lineage (ADNet, Q-Net, CAT-Net, RPT, GMRD).

Reference: sha168/ADNet ``supervoxels/`` (``generate_supervoxels.py``, ``felzenszwalb_3d.py``,
``felzenszwalb_3d_cy.pyx``, ``_ccomp.pyx``); Q-Net, RPT and GMRD carry the same files
(``data/supervoxels/``), differing only in the data paths. Their Cython is replaced here by
numba, so nothing is compiled at install time.

What the reference does, per volume (``generate_supervoxels.py``):

1. Intensities: ``255 * (img - img.min()) / img.ptp()`` in the image's own (float) dtype, then
   float64 (skimage ``img_as_float64``, which only casts floats). Integer volumes are cast to
   float64 first (in int16 the reference's ``255 * (img - min)`` would overflow; its inputs are
   float). A constant volume (ptp 0, NaNs in the reference) gives no supervoxels here.
2. Smoothing: ``gaussian_filter`` with ``sigma / spacing`` per axis, i.e. ``sigma`` in mm. The
   script passes ``sigma=0``: no smoothing (``felzenszwalb_3d``'s own default 0.8 is unused).
   The reference divides by ``(z, x, y)`` spacing along the ``(z, y, x)`` axes; the same
   whenever x and y spacing are equal (the only case it supports, see 3); here the axes match.
3. Graph: every voxel is joined to its 26 neighbours (13 edge directions, ``DIRECTIONS``, in the
   reference's order). The weight of an edge is ``sqrt(w) * |I_a - I_b|`` with
   ``s = spacing_z / spacing_x`` and ``w = 1`` in-plane (also the in-plane diagonals),
   ``s**2`` along z, ``(1 + s**2) / 2`` for z plus one in-plane step, ``(2 + s**2) / 3`` for
   z plus both: the edge length relative to the same step at isotropic spacing. y spacing is
   ignored (the reference "assumes spacing is equal in xy").
4. Felzenszwalb-Huttenlocher: edges in increasing weight; two segments merge when the edge
   weight is below ``min(Int(C) + k / |C|)`` over both, ``k = scale / 255`` (skimage's
   rescaling; the script keeps ``scale=1``, so k is tiny and ``min_size`` sets the size).
   ``Int(C) + k/|C|`` is stored in a C ``float`` (float32) by the reference, the weight is a
   double: reproduced here, the comparison is a float64 against a float32-rounded threshold.
5. ``min_size`` pass: the same edges in the same order once more; any edge between two
   different segments of which one is smaller than ``min_size`` voxels merges them. The
   script's ``n_sv`` is this ``min_size``: 5000 for CHAOS-T2 (ADNet, Q-Net) and for SABS CT
   (RPT's and GMRD's copies), 1000 for CMR. Despite its name it is not a number of supervoxels.
6. Ids: segments numbered 0.. by their first voxel in (z, y, x) raster order; then
   ``supervox_masking``: segment 0 (the one holding voxel (0, 0, 0)) becomes ``max + 1``,
   int32, and 0 outside the body mask.
7. Body mask, per axial slice (``fg_mask2d``): rescaled intensity > ``fg_thresh`` = 10, largest
   8-connected component (skimage ``label``), holes filled; empty when nothing exceeds it.
   This is ``fsmis.data.superpixels.body_mask`` with threshold 10.

Deviations, each behind an option whose default is the fix:

- ``consecutive_ids`` (default True): ids 1..K with no gaps. The reference keeps the ids of
  step 6, so segments lying wholly outside the body leave gaps. The renumbering keeps the
  reference's order, so a loader that draws ``random.choice`` from the sorted present ids
  (ADNet's ``datasets.py``) draws the same segment. False gives the reference's ids exactly.
- ``tie_order`` (default "stable"): edges of equal weight are taken in the reference's
  enumeration order (direction block, then raster order). The reference sorts with
  ``np.argsort``'s default introsort, which is not stable: the order of equal weights, and
  so the segments, depends on the numpy build and the CPU's SIMD sort. Ties are common (CT
  values are integers in HU; zero-weight edges inside flat regions). "numpy" sorts all edge
  weights with the default ``np.argsort`` as the reference, which reproduces its labels
  exactly on the same numpy and CPU.
- ``min_size_area`` (default 256 * 256): ``min_size`` is given for a 256 x 256 slice (the
  reference's preprocessed size) and scaled by the in-plane area, as the 2D superpixels do,
  so the demo's smaller slices keep supervoxels of the same size relative to the anatomy.
  Exactly the reference at 256 x 256; ``None`` uses ``min_size`` as given.

Not changed: the 26-neighbourhood, the weights (in-plane diagonals unweighted), float32
thresholds, the min-size pass order, the 2D per-slice body mask.

Implementation notes (results identical to the algorithm above): zero-weight edges come first
and always merge (the threshold is positive while every ``Int`` is 0), so they are joined while
the weights are computed and left out of the sort; their order cannot matter. The rest is
sorted by a stable LSD radix sort on the float32-rounded weight (monotone), then runs of equal
float32 keys are stably re-sorted by the exact double. Union-find by size with path halving
replaces the reference's min-index roots; the labels are numbered by first voxel as there.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np
from numba import njit
from scipy import ndimage

from fsmis.data.superpixels import body_mask

# the reference's 13 edge directions (dz, dy, dx), first voxel minus second, in its order
# (its cost1, 2, 3, 7, 9, 10, 11, 12, 13, 14, 15, 16, 25)
DIRECTIONS = ((0, 1, 0), (0, 1, 1), (0, 0, 1), (0, 1, -1), (1, 1, 0), (1, 1, 1), (1, 0, 1), (1, -1, 0),
              (1, -1, -1), (1, 0, -1), (1, 1, -1), (1, -1, 1), (1, 0, 0))
MIN_SIZE = {"abdominal": 5000, "cmr": 1000}  # generate_supervoxels.py's n_sv per dataset


@dataclasses.dataclass(frozen=True)
class SupervoxelParams:
    """Defaults are generate_supervoxels.py's for the abdominal data (CHAOS-T2; SABS in RPT and
    GMRD); for CMR set ``min_size=1000``."""

    scale: float = 1.0  # felzenszwalb_3d default, not passed by the script; k = scale / 255
    sigma: float = 0.0  # mm; the script passes sigma=0 (no smoothing)
    min_size: int = 5000  # the script's n_sv (1000 for CMR), voxels at min_size_area
    fg_threshold: float = 10.0  # fg_thresh, on the 0..255 rescaled intensities
    body_connectivity: int = 8  # skimage.measure.label's default in fg_mask2d; 4: edge neighbours
    min_size_area: int | None = 256 * 256  # min_size scaled by slice area / this; None: as given
    tie_order: Literal["stable", "numpy"] = "stable"  # "numpy": the reference's unstable argsort
    consecutive_ids: bool = True  # False: the reference's ids (gaps, segment 0 renamed max + 1)

    def __post_init__(self):
        if not self.scale > 0:  # zero-weight edges merge only because k > 0
            raise ValueError(f"scale must be > 0, got {self.scale!r}")
        if self.sigma < 0 or self.min_size < 1:
            raise ValueError(f"need sigma >= 0 and min_size >= 1, got {self.sigma!r}, {self.min_size!r}")
        if self.body_connectivity not in (4, 8):
            raise ValueError(f"body_connectivity must be 4 or 8, got {self.body_connectivity!r}")
        if self.tie_order not in ("stable", "numpy"):
            raise ValueError(f"tie_order must be 'stable' or 'numpy', got {self.tie_order!r}")
        if self.min_size_area is not None and self.min_size_area < 1:
            raise ValueError(f"min_size_area must be >= 1 or None, got {self.min_size_area!r}")


DEFAULTS = dataclasses.asdict(SupervoxelParams())


def supervoxels_3d(volume: np.ndarray, spacing_zyx, **params) -> np.ndarray:
    """``volume`` (z, y, x) -> int32 supervoxels, 0 outside the per-slice body mask.

    ``spacing_zyx``: voxel spacing in mm (only z / x and, with ``sigma``, all three matter).
    ``params``: fields of :class:`SupervoxelParams`.
    """
    p = SupervoxelParams(**params)
    img = rescale_255(volume)
    area = img.shape[1] * img.shape[2]
    min_size = p.min_size if p.min_size_area is None else max(1, int(round(p.min_size * area / p.min_size_area)))
    seg = felzenszwalb_3d(img, spacing_zyx, scale=p.scale, sigma=p.sigma, min_size=min_size, tie_order=p.tie_order)
    mask = np.stack([body_mask(s, p.fg_threshold, p.body_connectivity) for s in img]) if img.size else img > 0
    return mask_ids(seg, mask, p.consecutive_ids)


def rescale_255(volume: np.ndarray) -> np.ndarray:
    """The reference's ``255 * (img - img.min()) / img.ptp()`` (in the input's float dtype), as
    float64."""
    v = np.asarray(volume)
    if v.ndim != 3:
        raise ValueError(f"expected a (z, y, x) volume, got shape {v.shape}")
    if not np.issubdtype(v.dtype, np.floating):
        v = v.astype(np.float64)
    if v.size == 0 or np.ptp(v) == 0:  # the reference divides by zero here
        return np.zeros(v.shape, np.float64)
    return (255 * (v - v.min()) / np.ptp(v)).astype(np.float64)


def mask_ids(seg: np.ndarray, mask: np.ndarray, consecutive: bool = True) -> np.ndarray:
    """The reference's ``supervox_masking``: segment 0 -> ``max + 1``, 0 outside ``mask``;
    ``consecutive`` then renumbers the ids present to 1..K in the same order."""
    seg = seg.astype(np.int32)
    seg[seg == 0] = seg.max() + 1 if seg.size else 0
    seg[~mask.astype(bool)] = 0
    if not consecutive:
        return seg
    present = np.bincount(seg.ravel()) > 0
    present[0] = False
    rank = np.cumsum(present, dtype=np.int32)
    return np.where(seg > 0, rank[seg], 0).astype(np.int32)


def edge_weights(spacing_zyx) -> np.ndarray:
    """``w`` per direction (an edge weighs ``sqrt(w * d**2)``), computed as the reference's
    ``w1``..``w4``."""
    sp = np.asarray(spacing_zyx, np.float64)
    if sp.shape != (3,) or not (sp > 0).all():
        raise ValueError(f"spacing_zyx must be 3 positive numbers, got {spacing_zyx!r}")
    s = sp[0] / sp[2]  # the reference's spacing[0] / spacing[1] with spacing = (z, x, y)
    w = {0: 1.0, 1: s ** 2, 2: (np.sqrt(1 + s ** 2) / np.sqrt(2)) ** 2, 3: (np.sqrt(2 + s ** 2) / np.sqrt(3)) ** 2}
    # key: 0 in-plane, 1 pure z, 2 z + one in-plane step, 3 z + both
    kinds = [0 if dz == 0 else 1 + (dy != 0) + (dx != 0) for dz, dy, dx in DIRECTIONS]
    return np.array([w[k] for k in kinds], np.float64)


def _geometry(shape):
    """Per direction: the block of first voxels (edges per axis, start of the first voxel) and
    the flat offset from the first voxel to the second; the reference enumerates a direction's
    edges in raster order of that block, the directions in ``DIRECTIONS`` order."""
    z, y, x = shape
    dims = np.array([[n - abs(c) for n, c in zip(shape, d)] for d in DIRECTIONS], np.int64).clip(0)
    start = np.array([[1 if c == 1 else 0 for c in d] for d in DIRECTIONS], np.int64)
    delta = np.array([dz * y * x + dy * x + dx for dz, dy, dx in DIRECTIONS], np.int64)
    return dims, start, delta


def felzenszwalb_3d(image: np.ndarray, spacing_zyx, scale: float = 1.0, sigma: float = 0.8, min_size: int = 20,
                    tie_order: str = "stable") -> np.ndarray:
    """The reference's ``felzenszwalb_3d`` on a (z, y, x) volume: int64 segment ids 0..K-1 in
    order of their first voxel (its return value, before masking). Defaults are its own."""
    img = np.ascontiguousarray(image, np.float64)
    if img.ndim != 3:
        raise ValueError(f"expected a (z, y, x) volume, got shape {img.shape}")
    if tie_order not in ("stable", "numpy"):
        raise ValueError(f"tie_order must be 'stable' or 'numpy', got {tie_order!r}")
    w = edge_weights(spacing_zyx)
    if sigma > 0:
        img = ndimage.gaussian_filter(img, sigma=sigma / np.asarray(spacing_zyx, np.float64))
    flat = img.ravel()
    # an edge is coded as first voxel * 16 + direction; int32 while that fits
    itype = np.int32 if 16 * flat.size < 2 ** 31 else np.int64
    parent = np.arange(flat.size, dtype=itype)
    size = np.ones(flat.size, itype)
    dims, start, delta = _geometry(img.shape)
    n_edges = int(dims.prod(axis=1).sum())
    key = np.empty(n_edges, np.float32)
    code = np.empty(n_edges, itype)
    n = _weigh_join_flat(flat, img.shape[1], img.shape[2], dims, start, delta, w, parent, size, key, code)
    if tie_order == "stable":
        code = _stable_sort(key[:n], code[:n], flat, delta, w)
    else:  # the reference's default argsort of every weight in its enumeration order
        del key, code
        costs = _all_weights(flat, img.shape[1], img.shape[2], dims, start, delta, w, n_edges)
        code = np.empty(n_edges, itype)
        n = _codes_in_order(np.argsort(costs), costs, img.shape[1], img.shape[2], dims, start, delta, code)
        code = code[:n]
    _merge(code, flat, delta, w, parent, size, float(scale) / 255.0, int(min_size))
    return _first_voxel_ids(parent).reshape(img.shape)


def summary(sv: np.ndarray) -> dict:
    """For the job log: supervoxels, median size (voxels), share of voxels inside the body."""
    sizes = np.bincount(sv.ravel())[1:]
    sizes = sizes[sizes > 0]
    return {"supervoxels": int(sizes.size), "median_size_vox": float(np.median(sizes)) if sizes.size else 0.0,
            "body_fraction": float((sv > 0).mean()) if sv.size else 0.0}


# -- numba kernels ---------------------------------------------------------------------------

@njit(cache=True)
def _find(parent, i):
    while parent[i] != i:  # path halving
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@njit(cache=True)
def _link(parent, size, r0, r1):
    """Join roots ``r0 != r1`` (smaller under larger); returns the new root."""
    if size[r0] < size[r1]:
        r0, r1 = r1, r0
    parent[r1] = r0
    size[r0] += size[r1]
    return r0


@njit(cache=True)
def _weight(flat, a, b, w):
    d = flat[a] - flat[b]
    return math.sqrt(w * (d * d))  # the reference's sqrt(w * sum(diff ** 2)) over one channel


@njit(cache=True)
def _code_weight(flat, c, delta, w):
    a = c >> 4
    return _weight(flat, a, a - delta[c & 15], w[c & 15])


@njit(cache=True)
def _weigh_join_flat(flat, ny, nx, dims, start, delta, w, parent, size, key, code):
    """Walk the edges in the reference's order: join zero-weight edges at once, store the
    others' float32 weight and code compactly; returns how many were stored."""
    n = 0
    for b in range(dims.shape[0]):
        for i in range(dims[b, 0]):
            for j in range(dims[b, 1]):
                a0 = ((i + start[b, 0]) * ny + j + start[b, 1]) * nx + start[b, 2]
                for k in range(dims[b, 2]):
                    a = a0 + k
                    c = _weight(flat, a, a - delta[b], w[b])
                    if c == 0.0:
                        r0 = _find(parent, a)
                        r1 = _find(parent, a - delta[b])
                        if r0 != r1:
                            _link(parent, size, r0, r1)
                    else:
                        key[n] = c  # rounding to float32 is monotone: a valid first sort key
                        code[n] = a * 16 + b
                        n += 1
    return n


@njit(cache=True)
def _stable_sort(key32, code, flat, delta, w):
    """``code`` sorted by the exact weight, ties in their present (the reference's) order."""
    n = code.size
    key = key32.view(np.uint32)  # non-negative floats sort as their bit patterns
    # LSD radix sort, 11-bit digits; a digit that is the same for every key is skipped
    hist = np.zeros((3, 2048), np.int64)
    for v in key:
        hist[0, v & 2047] += 1
        hist[1, (v >> 11) & 2047] += 1
        hist[2, v >> 22] += 1
    tmp_key = np.empty_like(key)
    tmp_code = np.empty_like(code)
    pos = np.empty(2048, np.int64)
    for d in range(3):
        if _single_bucket(hist[d], n):
            continue
        pos[0] = 0
        for v in range(1, 2048):
            pos[v] = pos[v - 1] + hist[d, v - 1]
        shift = 11 * d
        for t in range(n):
            digit = (key[t] >> shift) & 2047
            p = pos[digit]
            tmp_key[p] = key[t]
            tmp_code[p] = code[t]
            pos[digit] = p + 1
        key, tmp_key = tmp_key, key
        code, tmp_code = tmp_code, code
    # distinct doubles may share a float32 key: stably re-sort those runs by the double
    t = 0
    while t < n:
        u = t + 1
        ordered = True
        prev = _code_weight(flat, code[t], delta, w)
        while u < n and key[u] == key[t]:
            cur = _code_weight(flat, code[u], delta, w)
            ordered &= cur >= prev
            prev = cur
            u += 1
        if not ordered:
            exact = np.empty(u - t, np.float64)
            for r in range(u - t):
                exact[r] = _code_weight(flat, code[t + r], delta, w)
            _merge_sort(exact, code[t:u])
        t = u
    return code


@njit(cache=True)
def _merge_sort(key, val):
    """Stable bottom-up merge sort of ``val`` by ``key``, both in place. (Plain loops here and
    in every kernel: numba's array expressions, slice assignments and sorts take many times
    longer to compile.)"""
    n = key.size
    k2 = np.empty_like(key)
    v2 = np.empty_like(val)
    width = 1
    while width < n:
        for lo in range(0, n, 2 * width):
            mid = min(lo + width, n)
            hi = min(lo + 2 * width, n)
            i, j = lo, mid
            for o in range(lo, hi):
                if i < mid and (j >= hi or key[i] <= key[j]):  # <=: the left one first on ties
                    k2[o] = key[i]
                    v2[o] = val[i]
                    i += 1
                else:
                    k2[o] = key[j]
                    v2[o] = val[j]
                    j += 1
        for o in range(n):
            key[o] = k2[o]
            val[o] = v2[o]
        width *= 2


@njit(cache=True)
def _single_bucket(hist, n):
    for h in hist:
        if h == n:
            return True
    return False


@njit(cache=True)
def _all_weights(flat, ny, nx, dims, start, delta, w, n_edges):
    """Every edge's weight in the reference's enumeration order."""
    costs = np.empty(n_edges, np.float64)
    e = 0
    for b in range(dims.shape[0]):
        for i in range(dims[b, 0]):
            for j in range(dims[b, 1]):
                a0 = ((i + start[b, 0]) * ny + j + start[b, 1]) * nx + start[b, 2]
                for k in range(dims[b, 2]):
                    costs[e] = _weight(flat, a0 + k, a0 + k - delta[b], w[b])
                    e += 1
    return costs


@njit(cache=True)
def _codes_in_order(order, costs, ny, nx, dims, start, delta, out):
    """Codes of the non-zero edges in ``order`` (indices into the enumeration) into ``out``;
    returns how many."""
    off = np.zeros(dims.shape[0] + 1, np.int64)
    for b in range(dims.shape[0]):
        off[b + 1] = off[b] + dims[b, 0] * dims[b, 1] * dims[b, 2]
    n = 0
    for e in order:
        if costs[e] == 0.0:  # already joined
            continue
        b = 0
        while e >= off[b + 1]:
            b += 1
        p = e - off[b]
        k = p % dims[b, 2]
        p //= dims[b, 2]
        a = ((p // dims[b, 1] + start[b, 0]) * ny + p % dims[b, 1] + start[b, 1]) * nx + k + start[b, 2]
        out[n] = a * 16 + b
        n += 1
    return n


@njit(cache=True)
def _merge(code, flat, delta, w, parent, size, k, min_size):
    """The reference's two passes over the sorted edges: threshold merging, then min_size."""
    cint = np.zeros(parent.size, np.float64)  # Int(C): the largest weight inside C (0 so far)
    top = 0.0  # the largest Int(C), i.e. the weight of the last merge
    for t in range(code.size):
        c = _code_weight(flat, code[t], delta, w)
        # every threshold is <= float32(top + k): from here on no edge can merge
        if c >= np.float64(np.float32(top + k)):
            break
        a = code[t] >> 4
        r0 = _find(parent, a)
        r1 = _find(parent, a - delta[code[t] & 15])
        if r0 == r1:
            continue
        # float32, as the reference's `cdef float inner_cost0, inner_cost1`
        t0 = np.float32(cint[r0] + k / size[r0])
        t1 = np.float32(cint[r1] + k / size[r1])
        if c < np.float64(min(t0, t1)):
            cint[_link(parent, size, r0, r1)] = c
            top = c
    small = 0
    for i in range(parent.size):
        small += parent[i] == i and size[i] < min_size
    for t in range(code.size):
        if small == 0:  # nothing left to merge
            break
        a = code[t] >> 4
        r0 = _find(parent, a)
        r1 = _find(parent, a - delta[code[t] & 15])
        if r0 != r1 and (size[r0] < min_size or size[r1] < min_size):
            small -= (size[r0] < min_size) + (size[r1] < min_size)
            small += size[_link(parent, size, r0, r1)] < min_size


@njit(cache=True)
def _first_voxel_ids(parent):
    """Segment ids 0..K-1 in order of each segment's first voxel (the reference's
    ``np.unique(roots, return_inverse=True)`` of its min-index roots)."""
    ids = np.empty(parent.size, np.int64)
    seen = np.full(parent.size, -1, np.int64)
    count = 0
    for i in range(parent.size):
        r = _find(parent, i)
        if seen[r] < 0:
            seen[r] = count
            count += 1
        ids[i] = seen[r]
    return ids
