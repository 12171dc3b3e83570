"""Superpixel ids, body mask and parallel identity."""

import numpy as np

from fsmis.data import superpixels as S

P = {"scale": 1.0, "sigma": 1.0, "min_size": 400}


def _volume():
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[0:3, 0:64, 0:64]
    body = ((y - 32) / 26.0) ** 2 + ((x - 32) / 30.0) ** 2 <= 1
    img = np.where(body, 80.0, 0.0)
    img[:, 20:36, 14:30] = 200.0  # an "organ"
    img[:, 40:50, 34:54] = 140.0
    img += np.where(body, rng.normal(0, 3, img.shape), 0)
    img[2] = 0  # an empty slice (outside the body)
    return img.astype(np.float32), body


def test_ids_consecutive_and_zero_exactly_outside_body():
    img, body = _volume()
    sp = S.compute(img, "CT", P)
    assert sp.dtype == np.int32
    for z in range(2):
        ids = np.unique(sp[z])
        assert ids[0] == 0 and list(ids[1:]) == list(range(1, ids.max() + 1))
        assert ((sp[z] > 0) == body[z]).all()
    assert not sp[2].any()


def test_min_size_scales_with_slice_area():
    assert S.scaled_min_size(P, (256, 256)) == 400
    assert S.scaled_min_size(P, (128, 128)) == 100
    assert S.scaled_min_size(P, (64, 64)) == 25


def test_parallel_identical_to_serial():
    img, _ = _volume()
    assert np.array_equal(S.compute(img, "CT", P, workers=2), S.compute(img, "CT", P, workers=1))


def test_body_mask_largest_component_with_holes_filled():
    s = np.zeros((20, 20), np.float32)
    s[2:18, 2:12] = 5
    s[8:10, 5:7] = 0  # hole
    s[15:17, 15:17] = 5  # small island
    m = S.body_mask(s, 1e-4)
    assert m[9, 6] and not m[16, 16] and m.sum() == 16 * 10


def test_summary_counts():
    sp = np.zeros((2, 4, 4), np.int32)
    sp[0, :2], sp[0, 2:] = 1, 2
    sp[1, :1] = 1
    s = S.summary(sp)
    assert s["superpixels"] == 3 and s["per_slice_mean"] == 1.5 and s["median_size_px"] == 8
