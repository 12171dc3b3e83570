"""Preprocessing: intensity handling, and geometry that survives the resampling."""

import numpy as np
import pytest
import SimpleITK as sitk

from fsmis.data import preprocess as P

PARAMS = {"image_size": 40, "ct_window": [-125, 275], "border_crop": 0.0625, "mr_clip_percentile": 99.5,
          "mr_spacing": [1.25, 1.25, 7.7]}
# a rotated, flipped frame: patient axes do not follow the array axes
OBLIQUE = tuple(sitk.Euler3DTransform((0, 0, 0), 0.2, -0.1, 0.4).GetMatrix())


def _phantom(size=(64, 64, 6), spacing=(0.7, 0.9, 3.0), origin=(-20.0, 15.0, 7.0), direction=None):
    """A CT with air, soft tissue, bone and two labelled organs; size is (x, y, z)."""
    nx, ny, nz = size
    arr = np.full((nz, ny, nx), -1000, np.int16)
    arr[:, 8:56, 6:58] = 40
    arr[:, 18:38, 10:30] = 60
    arr[:, 44:50, 44:50] = 900
    lab = np.zeros((nz, ny, nx), np.uint8)
    lab[:, 18:38, 10:30] = 1
    lab[1:5, 40:52, 36:52] = 4
    out = []
    for a in (arr, lab):
        img = sitk.GetImageFromArray(a)
        img.SetSpacing(spacing)
        img.SetOrigin(origin)
        if direction is not None:
            img.SetDirection(direction)
        out.append(img)
    return out


def _centroid_mm(label, cid):
    idx = np.argwhere(sitk.GetArrayFromImage(label) == cid)[:, ::-1].mean(axis=0)  # (x, y, z)
    return np.array(label.TransformContinuousIndexToPhysicalPoint([float(i) for i in idx]))


def test_ct_window_mapping():
    a = P.ct_intensity(np.array([-1000, -125, 75, 275, 900, 0], np.int16), [-125, 275])
    assert a.dtype == np.float32
    assert a.tolist()[:5] == [0.0, 0.0, 127.5, 255.0, 255.0]
    assert a[5] == pytest.approx(125 / 400 * 255)
    # the reference min-maxes the clipped volume: a scan inside the window is stretched
    assert P.ct_intensity(np.array([0, 100]), [-125, 275]).tolist() == [0.0, 255.0]
    assert not P.ct_intensity(np.full(3, 50), [-125, 275]).any()


def test_ct_output_values_and_types():
    img, lab = _phantom()
    out_img, out_lab = P.preprocess_case(img, lab, "CT", PARAMS)
    assert out_img.GetPixelID() == sitk.sitkFloat32 and out_lab.GetPixelID() == sitk.sitkUInt8
    a = sitk.GetArrayFromImage(out_img)
    assert a.min() >= 0 and a.max() <= 255
    # interior of the 60 HU organ keeps the window mapping
    assert np.median(a[sitk.GetArrayFromImage(out_lab) == 1]) == pytest.approx(185 / 400 * 255, abs=0.01)


@pytest.mark.parametrize("direction", [None, OBLIQUE])
def test_ct_geometry_survives(direction):
    img, lab = _phantom(direction=direction)
    out_img, out_lab = P.preprocess_case(img, lab, "CT", PARAMS)
    assert out_img.GetSize() == out_lab.GetSize() == (40, 40, 6)
    crop = 4  # round(64 * 0.0625)
    sx, sy, sz = out_img.GetSpacing()
    # the output tiles exactly the cropped field of view
    assert sx * 40 == pytest.approx(0.7 * (64 - 2 * crop)) and sy * 40 == pytest.approx(0.9 * (64 - 2 * crop))
    assert sz == 3.0
    assert out_img.GetDirection() == out_lab.GetDirection() == img.GetDirection()
    assert out_img.GetOrigin() == out_lab.GetOrigin()
    # outer corner of the first output voxel == outer corner of the first kept input voxel
    corner_out = out_img.TransformContinuousIndexToPhysicalPoint((-0.5, -0.5, -0.5))
    corner_in = img.TransformContinuousIndexToPhysicalPoint((crop - 0.5, crop - 0.5, -0.5))
    assert np.allclose(corner_out, corner_in, atol=1e-6)
    far_out = out_img.TransformContinuousIndexToPhysicalPoint((39.5, 39.5, 5.5))
    far_in = img.TransformContinuousIndexToPhysicalPoint((63 - crop + 0.5, 63 - crop + 0.5, 5.5))
    assert np.allclose(far_out, far_in, atol=1e-6)
    # organs stay where they were, within one output voxel
    for cid in (1, 4):
        assert np.linalg.norm(_centroid_mm(out_lab, cid) - _centroid_mm(lab, cid)) < min(sx, sy)


def test_ct_upsampling_keeps_geometry():
    img, lab = _phantom(size=(32, 32, 3))
    out_img, out_lab = P.preprocess_case(img, lab, "CT", {**PARAMS, "image_size": 100, "border_crop": 0.0})
    corner = out_img.TransformContinuousIndexToPhysicalPoint((-0.5, -0.5, 0))
    assert np.allclose(corner, img.TransformContinuousIndexToPhysicalPoint((-0.5, -0.5, 0)))
    assert np.linalg.norm(_centroid_mm(out_lab, 1) - _centroid_mm(lab, 1)) < out_img.GetSpacing()[0]


def test_labels_never_gain_values():
    img, lab = _phantom()
    arr = sitk.GetArrayFromImage(lab)
    arr[2, 30:34, 20:24] = 3  # a small class next to class 1
    arr[3, 10, 10] = 7  # a single voxel: may vanish, but nothing new may appear
    lab2 = sitk.GetImageFromArray(arr)
    lab2.CopyInformation(lab)
    for params in (PARAMS, {**PARAMS, "image_size": 23}, {**PARAMS, "image_size": 90}):
        _, out = P.preprocess_case(img, lab2, "CT", params)
        assert set(np.unique(sitk.GetArrayFromImage(out))) <= {0, 1, 3, 4, 7}
        assert {1, 4} <= set(np.unique(sitk.GetArrayFromImage(out)))


def test_later_classes_overwrite_earlier():
    lab = np.zeros((1, 4, 4), np.uint8)
    lab[0, :, :2], lab[0, :, 2:] = 2, 5
    one = sitk.GetImageFromArray(lab)
    # an output voxel straddling the border gets 0.5 of each class: rint(0.5) == 0 for both,
    # a voxel covering 3/4 of one class gets that class
    grid = P.Grid((1, 1, 1), (2.0, 4.0, 1.0), (1.5, 1.5, 0.0), one.GetDirection())
    assert sitk.GetArrayFromImage(P.resample_label(one, grid)).item() == 0
    grid = P.Grid((1, 1, 1), (2.0, 4.0, 1.0), (1.75, 1.5, 0.0), one.GetDirection())
    assert sitk.GetArrayFromImage(P.resample_label(one, grid)).item() == 5


@pytest.mark.parametrize("direction", [None, OBLIQUE])
def test_mr_resample_and_centre_pad(direction):
    img, lab = _phantom(spacing=(2.5, 2.5, 3.85), direction=direction)
    img = sitk.Cast(img, sitk.sitkFloat32) + 1100.0  # MR-like: positive intensities
    out_img, out_lab = P.preprocess_case(img, lab, "MR", {**PARAMS, "image_size": 160})
    assert out_img.GetSpacing() == pytest.approx((1.25, 1.25, 7.7))
    assert out_img.GetSize() == (160, 160, 3) == out_lab.GetSize()  # 6 * 3.85 / 7.7 slices
    assert out_img.GetDirection() == img.GetDirection()
    a = sitk.GetArrayFromImage(out_img)
    assert a[1, 0, 0] == a.min() == 100.0  # padded with the volume minimum
    assert a.max() <= np.percentile(sitk.GetArrayFromImage(img), 99.5) + 1e-3
    assert sitk.GetArrayFromImage(out_lab)[:, 0, 0].max() == 0
    for cid in (1, 4):  # organs stay where they were, within one output voxel
        assert np.linalg.norm(_centroid_mm(out_lab, cid) - _centroid_mm(lab, cid)) < 1.25


def test_mr_centre_crop_keeps_the_centre():
    img, lab = _phantom(spacing=(2.5, 2.5, 7.7))
    out_img, _ = P.preprocess_case(img, lab, "MR", {**PARAMS, "image_size": 64})  # 128 px -> crop 64
    centre_in = img.TransformContinuousIndexToPhysicalPoint((31.5, 31.5, 0))
    centre_out = out_img.TransformContinuousIndexToPhysicalPoint((31.5, 31.5, 0))
    assert np.allclose(centre_in, centre_out, atol=1e-6)
    assert out_img.GetSize() == (64, 64, 6)


def test_unknown_modality():
    img, lab = _phantom()
    with pytest.raises(ValueError, match="unknown modality 'PET'"):
        P.preprocess_case(img, lab, "PET", PARAMS)


def test_slice_index():
    a = np.zeros((5, 3, 3), np.uint8)
    a[1, 0, 0] = a[3, 2, 2] = a[4, 1, 1] = 1
    a[2, 0, 1] = 2
    b = np.zeros((2, 3, 3), np.uint8)
    b[0] = 2
    idx = P.slice_index({"a": a, "b": b}, {"liver": 1, "spleen": 2, "rv": 9})
    assert idx == {"liver": {"a": [1, 3, 4], "b": []}, "spleen": {"a": [2], "b": [0]}, "rv": {"a": [], "b": []}}
    assert all(type(z) is int for z in idx["liver"]["a"])  # JSON-serialisable
