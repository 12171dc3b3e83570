"""Preprocessing: intensity handling and geometry that survives resampling."""

import numpy as np
import pytest
import SimpleITK as sitk

from fsmis.data import preprocess as P

CT = {"image_size": 32, "ct_window": [-125, 275], "border_crop": 0.0625, "mr_clip_percentile": 99.5,
      "mr_spacing": [1.25, 1.25, 7.7]}


def _ct(direction=None, size=(64, 64, 5), spacing=(0.8, 0.8, 3.0), origin=(-20.0, 15.0, 7.0)):
    arr = np.full(size[::-1], -1000, np.int16)
    arr[:, 20:40, 10:30] = 60
    arr[:, 50:55, 50:55] = 900
    lab = np.zeros(size[::-1], np.uint8)
    lab[:, 20:40, 10:30] = 1
    lab[1:4, 44:52, 40:52] = 4
    img, l = sitk.GetImageFromArray(arr), sitk.GetImageFromArray(lab)
    for x in (img, l):
        x.SetSpacing(spacing)
        x.SetOrigin(origin)
        if direction is not None:
            x.SetDirection(direction)
    return img, l


def _centroid_mm(label: sitk.Image, cid: int) -> np.ndarray:
    idx = np.argwhere(sitk.GetArrayFromImage(label) == cid)[:, ::-1].mean(axis=0)  # (x, y, z) index
    return np.array(label.TransformContinuousIndexToPhysicalPoint(tuple(float(i) for i in idx)))


def test_window_mapping():
    img, lab = _ct()
    out, _ = P.preprocess_case(img, lab, "CT", CT)
    a = sitk.GetArrayFromImage(out)
    assert a.dtype == np.float32 and a.min() == pytest.approx(0) and a.max() <= 255 + 1e-3
    # a large 60 HU region maps to (60 + 125) / 400 * 255 in its interior
    assert a[2, 15, 10] == pytest.approx((60 + 125) / 400 * 255, abs=0.01)


@pytest.mark.parametrize("direction", [None, (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)])
def test_ct_geometry_survives(direction):
    img, lab = _ct(direction)
    out_img, out_lab = P.preprocess_case(img, lab, "CT", CT)
    assert out_img.GetSize() == (32, 32, 5)
    crop_px = round(64 * 0.0625)
    # physical extent of the cropped field of view is preserved: spacing * size
    assert out_img.GetSpacing()[0] * 32 == pytest.approx(0.8 * (64 - 2 * crop_px))
    assert out_img.GetSpacing()[2] == 3.0
    assert out_img.GetDirection() == img.GetDirection() == out_lab.GetDirection()
    assert out_img.GetOrigin() == out_lab.GetOrigin()
    # the outer edge of the first output voxel coincides with the crop edge
    edge_out = out_img.TransformContinuousIndexToPhysicalPoint((-0.5, -0.5, 0.0))
    edge_in = img.TransformContinuousIndexToPhysicalPoint((crop_px - 0.5, crop_px - 0.5, 0.0))
    assert np.allclose(edge_out, edge_in, atol=1e-6)
    # organs stay where they were, within one output voxel
    for cid in (1, 4):
        assert np.linalg.norm(_centroid_mm(out_lab, cid) - _centroid_mm(lab, cid)) < out_img.GetSpacing()[0]


def test_labels_never_gain_values():
    img, lab = _ct()
    _, out = P.preprocess_case(img, lab, "CT", CT)
    assert set(np.unique(sitk.GetArrayFromImage(out))) == {0, 1, 4}


def test_mr_resampling_and_centre_pad():
    img, lab = _ct(spacing=(2.5, 2.5, 3.85))
    out_img, out_lab = P.preprocess_case(img, lab, "MR", {**CT, "image_size": 160})
    assert out_img.GetSpacing() == pytest.approx((1.25, 1.25, 7.7))
    assert out_img.GetSize()[:2] == (160, 160) and out_img.GetSize()[2] == round(5 * 3.85 / 7.7)
    a = sitk.GetArrayFromImage(out_img)
    assert a[0, 0, 0] == pytest.approx(a.min())  # padded with the volume minimum
    assert np.linalg.norm(_centroid_mm(out_lab, 1)[:2] - _centroid_mm(lab, 1)[:2]) < 1.25


def test_slice_index():
    lab = np.zeros((4, 2, 2), np.uint8)
    lab[1, 0, 0] = 1
    lab[3, 1, 1] = 1
    lab[2, 0, 1] = 2
    idx = P.slice_index({"a": lab}, {"liver": 1, "spleen": 2, "rv": 9})
    assert idx == {"liver": {"a": [1, 3]}, "spleen": {"a": [2]}, "rv": {"a": []}}
