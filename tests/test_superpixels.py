"""Superpixels: consecutive ids, 0 exactly outside the body, parallel == serial, the body
mask's connectivity (the reference's 8 or 4)."""

from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import ndimage
from skimage.measure import label as skimage_label

from fsmis.data import superpixels as S

P = {"scale": 1.0, "sigma": 1.0, "min_size": 400}
SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


def _disk(shape=(64, 64), centre=(32, 32), radius=26):
    y, x = np.mgrid[:shape[0], :shape[1]]
    return (y - centre[0]) ** 2 + (x - centre[1]) ** 2 <= radius ** 2


def _volume(n=3, size=64, seed=0):
    """Slices with a noisy body (two "organs" inside), a hole and an island."""
    rng = np.random.default_rng(seed)
    body = _disk((size, size), (size // 2, size // 2), int(size * 0.4))
    vol = np.zeros((n, size, size), np.float32)
    for z in range(n):
        s = np.where(body, 90.0, 0.0)
        s[size // 4:size // 2, size // 4:size // 2] = 200.0
        s[size // 2 + 4:size // 2 + 12, size // 2:size // 2 + 14] = 140.0
        s += np.where(body, rng.normal(0, 4, s.shape), 0)
        s[size // 2, size // 2 + 2] = 0.0  # a one-pixel hole: filled into the body
        s[1:4, 1:4] = 120.0  # an island outside the body: not the largest component
        vol[z] = s
    return vol, body


def _consecutive(sp_slice):
    ids = set(np.unique(sp_slice).tolist()) - {0}
    return ids == set(range(1, len(ids) + 1))


def test_ids_consecutive_and_zero_exactly_outside_body():
    vol, body = _volume()
    vol[1] = 0.0  # an empty slice (all air): no superpixels, no error
    sp = S.compute(vol, "CT", P)
    assert sp.dtype == np.int32 and sp.shape == vol.shape
    for z in (0, 2):
        assert _consecutive(sp[z]) and sp[z].max() >= 3
        assert np.array_equal(sp[z] > 0, body)  # hole filled, island dropped
    assert not sp[1].any()


def test_known_regions_are_separate_superpixels():
    s = np.full((64, 64), 50.0, np.float32)
    s[:, 32:] = 200.0
    sp = S.compute(s[None], "CT", P)[0]
    assert (sp > 0).all() and _consecutive(sp)  # the body fills the slice: no 0 at all
    left, right = sp[0, 0], sp[0, -1]
    assert left != right
    # each flat region is one superpixel; only the blurred edge (sigma 1) forms thin strips
    assert (sp[:, :28] == left).all() and (sp[:, 36:] == right).all()
    assert not np.isin(sp[:, 28:36], [left, right]).all()


def test_reference_segment_zero_is_kept():
    # skimage numbers the top-left segment 0; the reference drops it even inside the body
    s = np.full((32, 32), 60.0, np.float32)
    s[:, 16:] = 180.0
    sp = S.compute(s[None], "CT", P)[0]
    assert sp[0, 0] > 0 and (sp > 0).all()


def test_parallel_identical_to_serial():
    vol, _ = _volume(n=6, seed=1)
    one = S.compute(vol, "CT", P, workers=1)
    assert np.array_equal(S.compute(vol, "CT", P, workers=2), one)


def test_min_size_scales_with_slice_area():
    assert S.scaled_min_size(P, (256, 256)) == 400
    assert S.scaled_min_size(P, (128, 128)) == 100
    assert S.scaled_min_size(P, (512, 512)) == 1600
    assert S.scaled_min_size({"min_size": 1}, (8, 8)) == 1
    # on pure noise every superpixel reaches the scaled minimum (the body fills the slice)
    noise = np.random.default_rng(3).uniform(10, 250, (1, 128, 128)).astype(np.float32)
    sp = S.compute(noise, "CT", P)[0]
    sizes = np.bincount(sp.ravel())[1:]
    assert sizes.min() >= 100 and len(sizes) > 128 * 128 // 400


def test_mr_threshold_and_unknown_modality():
    s = np.full((1, 32, 32), 40.0, np.float32)
    s[0, 8:24, 8:24] = 300.0
    sp = S.compute(s, "MR", P)[0]
    assert np.array_equal(sp > 0, s[0] > 50.0001)  # MR body: above 50, not above 0
    assert (S.compute(s, "CT", P)[0] > 0).all()
    with pytest.raises(ValueError, match="unknown modality"):
        S.compute(s, "PET", P)


def test_body_mask():
    s = np.zeros((20, 20), np.float32)
    s[2:18, 2:12] = 5
    s[8:10, 5:7] = 0  # hole
    s[15:17, 15:17] = 5  # small island
    m = S.body_mask(s, 1e-4)
    assert m[9, 6] and not m[16, 16] and m.sum() == 16 * 10
    assert not S.body_mask(np.zeros((5, 5)), 1e-4).any()


def _corner_touching_body():
    """Three parts: A (3 x 3) and B (4 x 4) meet only at one corner, C (3 x 7) stands
    apart. 4-connected the largest is C (21 px); 8-connected, A + B (25 px)."""
    s = np.zeros((12, 12), np.float32)
    s[1:4, 1:4] = 5  # A: rows 1-3, columns 1-3
    s[4:8, 4:8] = 5  # B: rows 4-7, columns 4-7; (3, 3) and (4, 4) touch diagonally
    s[9:12, 0:7] = 5  # C: rows 9-11, columns 0-6
    a, b, c = (np.zeros((12, 12), bool) for _ in range(3))
    a[1:4, 1:4], b[4:8, 4:8], c[9:12, 0:7] = True, True, True
    return s, a | b, c


def test_body_connectivity_8_keeps_the_corner_connected_part_4_the_largest_edge_connected_one():
    s, a_and_b, c = _corner_touching_body()
    assert np.array_equal(S.body_mask(s, 1e-4), a_and_b)  # default: the reference's 8
    assert np.array_equal(S.body_mask(s, 1e-4, 8), a_and_b)
    assert np.array_equal(S.body_mask(s, 1e-4, 4), c)
    with pytest.raises(ValueError, match="4 or 8"):
        S.body_mask(s, 1e-4, 6)


def _reference_body_mask(img, thresh):
    """The reference notebook's fg_mask2d, written after it with skimage."""
    mask = np.float32(img > thresh)
    if mask.max() < 0.999:
        return mask.astype(bool)
    labels = skimage_label(mask)
    return ndimage.binary_fill_holes(labels == np.argmax(np.bincount(labels.flat)[1:]) + 1)


def test_body_mask_with_8_neighbours_is_the_references():
    rng = np.random.default_rng(11)
    for _ in range(40):  # smoothed noise at its median: many parts, corner contacts, holes, ties
        img = ndimage.gaussian_filter(rng.random((40, 40)), 1.0)
        thresh = float(np.median(img))
        assert np.array_equal(S.body_mask(img, thresh, 8), _reference_body_mask(img, thresh))
    assert not S.body_mask(np.zeros((5, 5)), 1e-4, 8).any()


def test_body_connectivity_reaches_compute_from_the_config_section():
    s, a_and_b, c = _corner_touching_body()
    params = {**P, "min_size": 1}
    assert S.DEFAULTS["body_connectivity"] == 8
    assert np.array_equal(S.compute(s[None], "CT", params)[0] > 0, a_and_b)
    assert np.array_equal(S.compute(s[None], "CT", {**params, "body_connectivity": 4})[0] > 0, c)
    assert np.array_equal(S.compute(np.stack([s, s]), "CT", {**params, "body_connectivity": 4}, workers=2)[1] > 0, c)


def test_superpixel_schema_defaults_are_the_module_defaults():
    section = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))["properties"]["superpixels"]["properties"]
    assert section["body_connectivity"]["enum"] == [4, 8]
    for key in ("scale", "sigma", "min_size", "body_connectivity"):
        assert section[key]["default"] == S.DEFAULTS[key]


def test_summary():
    sp = np.zeros((3, 4, 4), np.int32)
    sp[0, :2], sp[0, 2:] = 1, 2
    sp[1, :1] = 1
    s = S.summary(sp)
    assert s == {"n_slices": 3, "superpixels": 3, "per_slice_mean": 1.0, "median_size_px": 8.0}
