"""Per-modality resampling and intensity handling, as in the SSL-ALPNet reference
(docs/methods.md, 'SSL-ALPNet: preprocessing') with the in-plane output size as a
parameter.

CT: clip to ``ct_window``, min-max the clipped volume to 0..255, drop
``border_crop`` of the field of view on each in-plane side, resample in-plane
(linear) to exactly ``image_size`` x ``image_size``; slices are untouched.
MR: clip above the ``mr_clip_percentile``, resample to ``mr_spacing`` (linear), centre
crop/pad in-plane to ``image_size`` (image padded with its minimum, label with 0).

Every output grid is built explicitly (size, spacing, origin, direction) so the
result stays physically registered with the input: a voxel's physical position
means the same thing before and after.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import SimpleITK as sitk

DEFAULTS = {"image_size": 256, "ct_window": [-125.0, 275.0], "border_crop": 32 / 512,
            "mr_clip_percentile": 99.5, "mr_spacing": [1.25, 1.25, 7.7]}


class Grid(NamedTuple):
    size: tuple  # (x, y, z) voxels
    spacing: tuple  # (x, y, z) mm
    origin: tuple  # physical centre of voxel (0, 0, 0)
    direction: tuple


def preprocess_case(image: sitk.Image, label: sitk.Image, modality: str, params: dict):
    """Return ``(image float32 on the 0..255 (CT) or clipped (MR) scale, label uint8)``."""
    p = {**DEFAULTS, **params}
    if modality == "CT":
        values = ct_intensity(sitk.GetArrayFromImage(image), p["ct_window"])
        grid = ct_grid(image, int(p["image_size"]), float(p["border_crop"]))
        default = 0.0
    elif modality == "MR":
        values = mr_intensity(sitk.GetArrayFromImage(image), float(p["mr_clip_percentile"]))
        grid = mr_grid(image, p["mr_spacing"], int(p["image_size"]))
        default = float(values.min())  # padding takes the volume minimum, as the reference
    else:
        raise ValueError(f"unknown modality {modality!r} (expected CT or MR)")
    scaled = sitk.GetImageFromArray(values)
    scaled.CopyInformation(image)
    return resample(scaled, grid, sitk.sitkLinear, default), resample_label(label, grid)


def ct_intensity(arr: np.ndarray, window) -> np.ndarray:
    """Clip to the window, then min-max the *clipped volume* to 0..255 (the reference's
    per-volume scaling). A scan that reaches both window ends, as any real abdominal CT
    does (air and bone), gets exactly the fixed mapping lo -> 0, hi -> 255."""
    lo, hi = float(window[0]), float(window[1])
    a = np.clip(arr.astype(np.float32), lo, hi)
    vmin, vmax = float(a.min()), float(a.max())
    if vmax <= vmin:  # constant volume: nothing to scale
        return np.zeros_like(a)
    return ((a - vmin) * np.float32(255.0 / (vmax - vmin))).astype(np.float32)


def mr_intensity(arr: np.ndarray, percentile: float) -> np.ndarray:
    a = arr.astype(np.float32)
    return np.minimum(a, np.float32(np.percentile(a, percentile)))


def ct_grid(image: sitk.Image, image_size: int, border_crop: float) -> Grid:
    """Grid covering the border-cropped field of view with ``image_size`` px a side.

    The crop region runs from the outer edge of voxel ``c`` to the outer edge of voxel
    ``n - c - 1``; the output voxels tile exactly that extent (spacing = extent / size),
    so the first output centre sits half an *output* voxel inside the crop edge.
    The reference instead keeps a ratio of 1.75 and gets 257 px, cropping to 256 later;
    resampling to exactly ``image_size`` keeps the whole cropped extent. The array is not
    cut: the output grid covers only the cropped region, and voxels just outside it
    serve at most as interpolation neighbours of the outermost output voxels.
    """
    (nx, ny, nz), (sx, sy, sz) = image.GetSize(), image.GetSpacing()
    new_spacing, start = [], []
    for n, s in ((nx, sx), (ny, sy)):
        c = int(round(n * border_crop))
        if n - 2 * c < 1:
            raise ValueError(f"border_crop {border_crop} leaves nothing of a {n} px side")
        t = (n - 2 * c) * s / image_size
        new_spacing.append(t)
        start.append(c - 0.5 + 0.5 * t / s)  # continuous input index of the first output centre
    new_size, new_spacing, start = (image_size, image_size, nz), (*new_spacing, sz), (*start, 0.0)
    origin = image.TransformContinuousIndexToPhysicalPoint(start)
    return Grid(tuple(new_size), tuple(new_spacing), tuple(origin), image.GetDirection())


def mr_grid(image: sitk.Image, target_spacing, image_size: int) -> Grid:
    """``target_spacing`` grid over the input's extent, then centre-cropped/padded in-plane.

    Cropping or padding a regular grid is just a shifted start index, so it is folded
    into the one resampling: voxels outside the input take the padding value.
    """
    size, spacing = image.GetSize(), image.GetSpacing()
    new_size, start = [], []
    for axis in range(3):
        n, s, t = size[axis], spacing[axis], float(target_spacing[axis])
        m = max(1, int(round(n * s / t)))  # resampled count, centred on the input extent
        first = -0.5 + (n * s - m * t) / (2 * s) + 0.5 * t / s
        if axis < 2:  # centre crop (offset > 0) or pad (offset < 0) to image_size
            offset = (m - image_size) // 2 if m >= image_size else -((image_size - m) // 2)
            first += offset * t / s
            m = image_size
        new_size.append(m), start.append(first)
    origin = image.TransformContinuousIndexToPhysicalPoint(start)
    new_spacing = tuple(float(t) for t in target_spacing)
    return Grid(tuple(new_size), new_spacing, tuple(origin), image.GetDirection())


def resample(image: sitk.Image, grid: Grid, interpolator, default: float = 0.0) -> sitk.Image:
    return sitk.Resample(image, [int(v) for v in grid.size], sitk.Transform(), interpolator,
                         grid.origin, grid.spacing, grid.direction, float(default), sitk.sitkFloat32)


def resample_label(label: sitk.Image, grid: Grid) -> sitk.Image:
    """Each class as a binary float volume, linear, rounded; later (higher) classes
    overwrite earlier ones, as the reference. Only input values can come out."""
    arr = sitk.GetArrayViewFromImage(label)
    out = np.zeros(tuple(int(v) for v in grid.size[::-1]), np.uint8)
    for value in np.unique(arr):
        if value == 0:
            continue
        one = sitk.GetImageFromArray((arr == value).astype(np.float32))
        one.CopyInformation(label)
        res = sitk.GetArrayFromImage(resample(one, grid, sitk.sitkLinear))  # a view would outlive its image
        out[np.rint(res) == 1] = int(value)
    img = sitk.GetImageFromArray(out)
    img.SetOrigin(grid.origin)
    img.SetSpacing(grid.spacing)
    img.SetDirection(grid.direction)
    return img


def slice_index(labels: dict[str, np.ndarray], class_ids: dict[str, int]) -> dict:
    """``{class_name: {case: [z, ...]}}``: sorted axial slices (array axis 0) holding at
    least one voxel of the class; every case appears, with ``[]`` where the class is
    absent (the reference's ``classmap_1.json``)."""
    index = {name: {} for name in class_ids}
    for case, arr in labels.items():
        flat = np.asarray(arr).reshape(arr.shape[0], -1)
        for name, cid in class_ids.items():
            index[name][case] = [int(z) for z in np.flatnonzero((flat == cid).any(axis=1))]
    return index
