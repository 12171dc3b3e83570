import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from fsmis import metrics as M

# ---------------------------------------------------------------- overlap counts

def _hand_masks():
    pred = np.array([[[1, 1, 0, 0],
                      [1, 1, 0, 0],
                      [0, 0, 0, 0],
                      [0, 0, 0, 0]]], dtype=np.uint8)
    ref = np.array([[[0, 1, 1, 0],
                     [0, 1, 1, 0],
                     [0, 1, 1, 0],
                     [0, 0, 0, 0]]], dtype=np.uint8)
    return pred, ref


def test_counts_dice_iou_by_hand():
    pred, ref = _hand_masks()
    c = M.overlap_counts(pred, ref)
    # tp: (0,1),(1,1); fp: (0,0),(1,0); fn: (0,2),(1,2),(2,1),(2,2); tn: 16-8
    assert c == {"tp": 2, "fp": 2, "fn": 4, "tn": 8, "n_pred": 4, "n_ref": 6}
    assert M.dice_from_counts(2, 2, 4) == pytest.approx(4 / 10)
    assert M.iou_from_counts(2, 2, 4) == pytest.approx(2 / 8)
    out = M.case_metrics(pred, ref, (1.0, 1.0, 1.0), 1.0)
    assert out["dice"] == pytest.approx(0.4) and out["iou"] == pytest.approx(0.25)
    assert out["flag"] == "ok"
    assert {k: out[k] for k in c} == c


def test_counts_nonbinary_values_are_foreground():
    pred = np.array([[[0, 3, 255]]])
    ref = np.array([[[7, 1, 0]]])
    assert M.overlap_counts(pred, ref) == {"tp": 1, "fp": 1, "fn": 1, "tn": 0,
                                           "n_pred": 2, "n_ref": 2}


def test_dice_iou_nan_only_when_both_empty():
    assert math.isnan(M.dice_from_counts(0, 0, 0))
    assert math.isnan(M.iou_from_counts(0, 0, 0))
    assert M.dice_from_counts(0, 3, 0) == 0.0
    assert M.iou_from_counts(0, 0, 5) == 0.0
    assert M.dice_from_counts(5, 0, 0) == 1.0


def test_shape_and_spacing_validation():
    a = np.zeros((2, 3, 4), bool)
    with pytest.raises(ValueError, match="shape"):
        M.overlap_counts(a, np.zeros((2, 3, 5), bool))
    a[1, 1, 1] = True
    with pytest.raises(ValueError, match="spacing"):
        M.hd95(a, a, (1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        M.case_metrics(a, a, (1.0, 0.0, 1.0), 1.0)
    with pytest.raises(ValueError, match="tolerance"):
        M.nsd(a, a, (1.0, 1.0, 1.0), -1.0)


# ---------------------------------------------------------------- surfaces

def test_surface_of_full_block_includes_array_border():
    # border_value=0: outside the array is background, so a block filling the
    # array has every voxel but the centre on its surface
    s = M.surface(np.ones((3, 3, 3), bool))
    assert s.sum() == 26 and not s[1, 1, 1]
    # face connectivity: a 3x3x3 cube inside a larger array, only the centre is interior
    m = np.zeros((7, 7, 7), bool)
    m[2:5, 2:5, 2:5] = True
    s = M.surface(m)
    assert s.sum() == 26 and not s[3, 3, 3]


def _brute_surface(mask):
    """Foreground voxels with at least one background face neighbour (outside = bg)."""
    m = np.pad(mask.astype(bool), 1, constant_values=False)
    core = m[1:-1, 1:-1, 1:-1]
    interior = np.ones_like(core)
    for axis in range(3):
        for step in (-1, 1):
            interior &= np.roll(m, step, axis=axis)[1:-1, 1:-1, 1:-1]
    return core & ~interior


def _brute_directed(a, b, spacing):
    pa = np.argwhere(_brute_surface(a)) * np.asarray(spacing)
    pb = np.argwhere(_brute_surface(b)) * np.asarray(spacing)
    d = cdist(pa, pb)
    return d.min(axis=1), d.min(axis=0)


def _sphere(shape, centre_mm, radius_mm, spacing):
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, centre_mm)) <= radius_mm ** 2


SPACING = (3.0, 0.8, 1.1)


@pytest.fixture(scope="module")
def spheres():
    shape = (16, 48, 40)
    pred = _sphere(shape, (22.0, 18.0, 20.0), 11.0, SPACING)
    ref = _sphere(shape, (25.5, 20.3, 22.7), 13.0, SPACING)
    ref[:, :, 30:] = False  # a flat cut to make it less symmetric
    assert pred.sum() > 500 and ref.sum() > 500
    return pred, ref


def test_surface_matches_brute_force(spheres):
    for m in spheres:
        np.testing.assert_array_equal(M.surface(m), _brute_surface(m))


def test_sphere_hd95_nsd_match_brute_force(spheres):
    pred, ref = spheres
    d_pr, d_rp = _brute_directed(pred, ref, SPACING)
    a, b = M.surface_distances(pred, ref, SPACING)
    np.testing.assert_allclose(np.sort(a), np.sort(d_pr), atol=1e-9)
    np.testing.assert_allclose(np.sort(b), np.sort(d_rp), atol=1e-9)

    expected_hd95 = max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))
    assert M.hd95(pred, ref, SPACING) == pytest.approx(expected_hd95, abs=1e-6)
    assert M.hausdorff(pred, ref, SPACING) == pytest.approx(
        max(d_pr.max(), d_rp.max()), abs=1e-6)
    assert expected_hd95 > 1.0  # the case is not trivial

    for tol in (0.5, 1.0, 2.0, 3.7):
        expected = ((d_pr <= tol).sum() + (d_rp <= tol).sum()) / (d_pr.size + d_rp.size)
        assert M.nsd(pred, ref, SPACING, tol) == pytest.approx(expected, abs=1e-6)
    nsds = [M.nsd(pred, ref, SPACING, t) for t in (0.5, 1.0, 2.0, 3.7)]
    assert 0.0 < nsds[0] < nsds[-1] < 1.0

    out = M.case_metrics(pred, ref, SPACING, 2.0)
    assert out["flag"] == "ok"
    assert out["hd95"] == pytest.approx(expected_hd95, abs=1e-6)
    assert out["nsd"] == pytest.approx(nsds[2], abs=1e-12)


def test_spacing_axis_order_matters(spheres):
    pred, ref = spheres
    flipped = tuple(reversed(SPACING))
    d_pr, d_rp = _brute_directed(pred, ref, flipped)
    expected = max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))
    assert M.hd95(pred, ref, flipped) == pytest.approx(expected, abs=1e-6)
    assert abs(M.hd95(pred, ref, flipped) - M.hd95(pred, ref, SPACING)) > 0.1


@pytest.mark.parametrize("shift", [(0, 0, 3), (2, 0, 0), (2, 3, 1), (-1, 4, -2)])
def test_offset_cubes_hausdorff_is_shift_length(shift):
    # B is A translated by t: every surface voxel p of A has p+t on B's surface
    # (distance |t|), and A's corner opposite to t has B's corner as nearest voxel of
    # B at exactly |t|, so the (maximum) Hausdorff distance is |t| in mm.
    a = np.zeros((20, 30, 30), bool)
    a[6:14, 8:18, 9:19] = True
    b = np.roll(a, shift, axis=(0, 1, 2))
    expected = math.sqrt(sum((k * s) ** 2 for k, s in zip(shift, SPACING)))
    assert M.hausdorff(a, b, SPACING) == pytest.approx(expected, abs=1e-9)
    d_ab, d_ba = M.surface_distances(a, b, SPACING)
    assert d_ab.max() == pytest.approx(expected) and d_ba.max() == pytest.approx(expected)
    # with 1 mm spacing the x-shift of 3 voxels is 3 mm
    if shift == (0, 0, 3):
        assert M.hausdorff(a, b, (1.0, 1.0, 1.0)) == pytest.approx(3.0)


def test_identical_masks():
    m = np.zeros((6, 10, 10), bool)
    m[1:5, 2:8, 3:7] = True
    out = M.case_metrics(m, m, SPACING, 0.0)
    assert out["dice"] == 1.0 and out["iou"] == 1.0
    assert out["hd95"] == 0.0 and out["nsd"] == 1.0
    assert out["fp"] == 0 and out["fn"] == 0 and out["tp"] == 96


def test_object_touching_the_border_matches_brute_force():
    pred = np.zeros((5, 12, 12), bool)
    pred[:, :6, 2:9] = True            # cut by the field of view in z and y
    ref = np.zeros_like(pred)
    ref[1:, 2:9, :7] = True
    d_pr, d_rp = _brute_directed(pred, ref, SPACING)
    a, b = M.surface_distances(pred, ref, SPACING)
    np.testing.assert_allclose(np.sort(a), np.sort(d_pr), atol=1e-9)
    np.testing.assert_allclose(np.sort(b), np.sort(d_rp), atol=1e-9)


# ---------------------------------------------------------------- empty masks

def _some_mask():
    m = np.zeros((4, 6, 6), bool)
    m[1:3, 2:4, 2:5] = True
    return m


def test_empty_reference():
    pred, ref = _some_mask(), np.zeros((4, 6, 6), bool)
    out = M.case_metrics(pred, ref, SPACING, 1.0)
    assert out["flag"] == "empty_reference"
    assert out["dice"] == 0.0 and out["iou"] == 0.0 and out["nsd"] == 0.0
    assert math.isnan(out["hd95"])
    assert (out["tp"], out["fp"], out["fn"], out["n_pred"], out["n_ref"]) == (0, 12, 0, 12, 0)
    assert math.isnan(M.hd95(pred, ref, SPACING)) and M.nsd(pred, ref, SPACING, 1.0) == 0.0


def test_empty_prediction():
    pred, ref = np.zeros((4, 6, 6), bool), _some_mask()
    out = M.case_metrics(pred, ref, SPACING, 1.0)
    assert out["flag"] == "empty_prediction"
    assert out["dice"] == 0.0 and out["iou"] == 0.0 and out["nsd"] == 0.0
    assert math.isnan(out["hd95"])
    assert (out["tp"], out["fp"], out["fn"], out["n_pred"], out["n_ref"]) == (0, 0, 12, 0, 12)
    with pytest.raises(ValueError, match="empty"):
        M.surface_distances(pred, ref, SPACING)


def test_both_empty():
    z = np.zeros((4, 6, 6), bool)
    out = M.case_metrics(z, z, SPACING, 1.0)
    assert out["flag"] == "both_empty"
    for key in ("dice", "iou", "nsd", "hd95"):
        assert math.isnan(out[key]), key
    assert (out["tp"], out["fp"], out["fn"], out["tn"]) == (0, 0, 0, 144)
    assert math.isnan(M.nsd(z, z, SPACING, 1.0)) and math.isnan(M.hd95(z, z, SPACING))
    assert set(M.FLAGS) == {"ok", "empty_reference", "empty_prediction", "both_empty"}
