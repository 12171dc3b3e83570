"""Resampling and intensity handling per modality, as the SSL-ALPNet reference
(``data/SABS/*.ipynb``, ``data/CHAOST2/image_normalize.ipynb``) does it, with the
output size as a parameter.

CT: clip to the window (-125..275 HU), min-max the clipped volume to 0..255 (equal to
the fixed window mapping whenever the scan reaches both window ends, as real CT
does), crop ``border_crop`` of the field of view on each in-plane side (the
reference's 32 of 512 px), resample in-plane (linear) to exactly
``image_size x image_size`` (the reference makes 257x257 and later crops [:256]),
slices untouched.

MR: clip above the ``mr_clip_percentile`` (99.5), resample to ``mr_spacing``
(1.25 x 1.25 x 7.7 mm), centre crop or pad in-plane to ``image_size`` (pad with the
volume minimum, label 0).

Labels: each class is resampled as a binary float volume (linear) and rounded; later
(higher) classes overwrite earlier ones, as the reference. No value that is not in
the input can appear. The output grid is physically consistent with the input:
spacing, origin and direction describe where each output voxel lies.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def _resample(img: sitk.Image, size, spacing, origin, interpolator, default=0.0, pixel=sitk.sitkFloat32):
    return sitk.Resample(img, [int(s) for s in size], sitk.Transform(), interpolator, tuple(origin),
                         tuple(float(s) for s in spacing), img.GetDirection(), float(default), pixel)


def _resample_label(label: sitk.Image, size, spacing, origin) -> sitk.Image:
    arr = sitk.GetArrayFromImage(label)
    out = None
    for cid in sorted(int(v) for v in np.unique(arr) if v != 0):
        one = sitk.GetImageFromArray((arr == cid).astype(np.float32))
        one.CopyInformation(label)
        res = sitk.GetArrayFromImage(_resample(one, size, spacing, origin, sitk.sitkLinear))
        if out is None:
            out = np.zeros(res.shape, np.uint8)
        out[np.rint(res) >= 1] = cid
    if out is None:
        out = np.zeros((int(size[2]), int(size[1]), int(size[0])), np.uint8)
    img = sitk.GetImageFromArray(out)
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(origin))
    img.SetDirection(label.GetDirection())
    return img


def _origin_for(img: sitk.Image, start_index) -> tuple:
    """Physical point of a (continuous) index of ``img``."""
    return img.TransformContinuousIndexToPhysicalPoint(tuple(float(i) for i in start_index))


def ct_grid(img: sitk.Image, image_size: int, border_crop: float):
    """Output (size, spacing, origin) of the CT in-plane crop + resample."""
    (nx, ny, nz), (sx, sy, sz) = img.GetSize(), img.GetSpacing()
    cx, cy = int(round(nx * border_crop)), int(round(ny * border_crop))
    wx, wy = nx - 2 * cx, ny - 2 * cy
    fx, fy = wx / image_size, wy / image_size  # input pixels per output pixel
    # first output voxel centre, in continuous input index: crop edge + half an output voxel
    origin = _origin_for(img, (cx - 0.5 + 0.5 * fx, cy - 0.5 + 0.5 * fy, 0.0))
    return (image_size, image_size, nz), (sx * fx, sy * fy, sz), origin


def preprocess_ct(image, label, params):
    lo, hi = params["ct_window"]
    arr = np.clip(sitk.GetArrayFromImage(image).astype(np.float32), lo, hi)
    vmin, vmax = float(arr.min()), float(arr.max())
    arr = (arr - vmin) / max(vmax - vmin, 1e-6) * 255.0
    scaled = sitk.GetImageFromArray(arr)
    scaled.CopyInformation(image)
    size, spacing, origin = ct_grid(image, int(params["image_size"]), float(params["border_crop"]))
    return (_resample(scaled, size, spacing, origin, sitk.sitkLinear),
            _resample_label(label, size, spacing, origin))


def _crop_pad(arr: np.ndarray, size: int, fill) -> tuple[np.ndarray, int, int]:
    """Centre crop/pad the last two axes to ``size``; returns the array and the input
    index of output (y=0, x=0) (negative when padded)."""
    z, h, w = arr.shape
    out = np.full((z, size, size), fill, arr.dtype)
    y0, x0 = (h - size) // 2, (w - size) // 2
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + size, h), min(x0 + size, w)
    out[:, ys - y0:ye - y0, xs - x0:xe - x0] = arr[:, ys:ye, xs:xe]
    return out, y0, x0


def preprocess_mr(image, label, params):
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    arr = np.minimum(arr, np.percentile(arr, params["mr_clip_percentile"]))
    clipped = sitk.GetImageFromArray(arr)
    clipped.CopyInformation(image)
    spacing = tuple(float(s) for s in params["mr_spacing"])
    size = [max(1, int(round(n * s / t))) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing)]
    # keep the physical extent: first output centre half an output voxel inside the input edge
    start = [-0.5 + 0.5 * t / s for s, t in zip(image.GetSpacing(), spacing)]
    origin = _origin_for(image, start)
    img = _resample(clipped, size, spacing, origin, sitk.sitkLinear)
    lab = _resample_label(label, size, spacing, origin)
    n = int(params["image_size"])
    a = sitk.GetArrayFromImage(img)
    a2, y0, x0 = _crop_pad(a, n, a.min())
    l2, _, _ = _crop_pad(sitk.GetArrayFromImage(lab), n, 0)
    new_origin = img.TransformContinuousIndexToPhysicalPoint((float(x0), float(y0), 0.0))
    out = []
    for arr2 in (a2, l2):
        o = sitk.GetImageFromArray(arr2)
        o.SetSpacing(spacing)
        o.SetOrigin(new_origin)
        o.SetDirection(image.GetDirection())
        out.append(o)
    return out[0], out[1]


def preprocess_case(image: sitk.Image, label: sitk.Image, modality: str, params: dict):
    """Returns ``(image float32, label uint8)`` SimpleITK images on the new grid."""
    if modality == "CT":
        return preprocess_ct(image, label, params)
    if modality == "MR":
        return preprocess_mr(image, label, params)
    raise ValueError(f"unknown modality {modality!r} (expected CT or MR)")


def slice_index(labels: dict, class_ids: dict) -> dict:
    """``{class: {case: [z, ...]}}``: the axial slices of each case containing each class
    (the reference's ``classmap_1.json``)."""
    out = {name: {} for name in class_ids}
    for case, arr in labels.items():
        per_slice = arr.reshape(arr.shape[0], -1)
        for name, cid in class_ids.items():
            out[name][case] = np.flatnonzero((per_slice == cid).any(axis=1)).tolist()
    return out
