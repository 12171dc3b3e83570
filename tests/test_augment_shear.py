"""Where the episode augmentation shears: about the slice centre (default) or, as the
reference's cv2 matrix does, about the top-left pixel (``shear_about: corner``)."""

import math

import pytest
import torch

from fsmis.data.augment import affine_matrix, augment


def _apply(m, x, y):
    p = m @ torch.tensor([x, y, 1.0], dtype=m.dtype)
    return float(p[0]), float(p[1])


def test_corner_shear_fixes_the_top_left_pixel_and_shifts_the_centre():
    size, shear = 64, 5.0
    o = -(size - 1) / 2  # the top-left pixel in centred coordinates
    centre = affine_matrix(0, 0, 0, shear, 1.0, size, "centre")
    corner = affine_matrix(0, 0, 0, shear, 1.0, size, "corner")
    assert _apply(centre, 0, 0) == pytest.approx((0, 0))
    assert _apply(corner, o, o) == pytest.approx((o, o), abs=1e-5)
    # the centre moves by S o - o: x by -sin(s) o ... with o negative, +sin(s)(size-1)/2
    s = math.radians(shear)
    x, y = _apply(corner, 0, 0)
    assert x == pytest.approx(math.sin(s) * o, abs=1e-5)  # -sin(s) (H - 1) / 2 for s > 0
    assert y == pytest.approx((1 - math.cos(s)) * o, abs=1e-5)


def test_zoom_scales_the_corner_shift_and_a_zero_shear_changes_nothing():
    size = 32
    a = affine_matrix(3, 1, -2, 4, 1.1, size, "corner")
    b = affine_matrix(3, 1, -2, 4, 1.1, size, "centre")
    o = -(size - 1) / 2
    s = math.radians(4)
    assert float(a[0, 2] - b[0, 2]) == pytest.approx(1.1 * math.sin(s) * o, abs=1e-5)
    assert torch.allclose(affine_matrix(3, 1, -2, 0, 1.1, size, "corner"), affine_matrix(3, 1, -2, 0, 1.1))


def test_bad_shear_centre_and_missing_size_are_named():
    with pytest.raises(ValueError, match="shear_about must be one of"):
        affine_matrix(0, 0, 0, 5, 1.0, 32, "middle")
    with pytest.raises(ValueError, match="needs the slice size"):
        affine_matrix(0, 0, 0, 5, 1.0, None, "corner")


def test_augment_reads_shear_about_from_its_config():
    img = torch.zeros(32, 32)
    img[8:24, 8:24] = torch.arange(16.0)[None, :] + 1
    cfg = dict(rotate_deg=0, translate_px=0, shear_deg=5, zoom=[1.0, 1.0], elastic_alpha=0, elastic_sigma=5,
               gamma=[1.0, 1.0])
    views = {}
    for about in ("centre", "corner"):
        gen = torch.Generator().manual_seed(3)
        views[about] = augment(img, img > 0, {**cfg, "shear_about": about}, gen)[1]
    # same draws, different fixed point: the masks differ (the corner one is shifted in x)
    assert not torch.equal(views["centre"], views["corner"])
    assert float(views["centre"].sum()) == pytest.approx(float(views["corner"].sum()), rel=0.1)
