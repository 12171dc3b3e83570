"""The embedded phantom: deterministic, varied between cases, anatomically plausible."""

import numpy as np
import pytest
import SimpleITK as sitk

from fsmis.data import phantom

LIVER, SPLEEN, RKID, LKID = 1, 2, 3, 4


@pytest.fixture(scope="module")
def cases():
    return [phantom.generate_case(i, 2024) for i in range(3)]


def _arr(img):
    return sitk.GetArrayFromImage(img)


def test_label_map_is_the_phantoms_own():
    assert phantom.PHANTOM_LABEL_MAP == {1: "liver", 2: "spleen", 3: "right_kidney", 4: "left_kidney"}


def test_deterministic_for_index_and_seed(cases):
    img, lab = phantom.generate_case(1, 2024)
    assert np.array_equal(_arr(img), _arr(cases[1][0])) and np.array_equal(_arr(lab), _arr(cases[1][1]))
    assert img.GetSpacing() == cases[1][0].GetSpacing() and img.GetOrigin() == cases[1][0].GetOrigin()


def test_cases_and_seeds_differ(cases):
    def fingerprint(img):
        return img.GetSize(), img.GetSpacing(), float(_arr(img).astype(float).mean())

    prints = [fingerprint(img) for img, _ in cases] + [fingerprint(phantom.generate_case(1, 7)[0])]
    assert len(set(prints)) == 4


def test_geometry(cases):
    spacings = {img.GetSpacing() for img, _ in cases}
    assert len(spacings) == 3  # spacing varies between cases
    for img, lab in cases:
        for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
            assert getattr(img, get)() == getattr(lab, get)()
        assert img.GetPixelID() == sitk.sitkInt16 and lab.GetPixelID() == sitk.sitkUInt8
        assert img.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
        sx, sy, sz = img.GetSpacing()
        nx, ny, nz = img.GetSize()
        assert 1.7 <= sx == sy <= 2.1 and 4.0 <= sz <= 6.0
        assert 176 <= nx == ny <= 208 and 36 <= nz <= 48


def test_all_organs_with_plausible_volumes(cases):
    for img, lab in cases:
        lab_arr = _arr(lab)
        assert set(np.unique(lab_arr)) == {0, 1, 2, 3, 4}
        ml = {v: (lab_arr == v).sum() * np.prod(img.GetSpacing()) / 1000 for v in (LIVER, SPLEEN, RKID, LKID)}
        assert 700 < ml[LIVER] < 2500, ml
        assert 50 < ml[SPLEEN] < 450, ml
        assert 50 < ml[RKID] < 250 and 50 < ml[LKID] < 250, ml


def test_intensities(cases):
    for img, lab in cases:
        a, lab_arr = _arr(img).astype(float), _arr(lab)
        hu = {v: a[lab_arr == v].mean() for v in (LIVER, SPLEEN, RKID, LKID)}
        # liver and spleen look alike: only shape and context tell them apart
        assert abs(hu[LIVER] - hu[SPLEEN]) < 15, hu
        assert 30 < hu[LIVER] < 90 and 30 < hu[SPLEEN] < 90, hu
        assert hu[RKID] > hu[LIVER] + 25 and hu[LKID] > hu[LIVER] + 25, hu  # enhancing cortex
        assert a[0, 0, 0] < -950 and a.max() > 500  # air outside the body, bone inside
        # noise and texture: an organ is not a flat region
        assert 8 < a[lab_arr == LIVER].std() < 60


def test_laterality_and_height(cases):
    """x index 0 is the patient's right; z index 0 is the most inferior slice."""
    for _, lab in cases:
        lab_arr = _arr(lab)
        zyx = {v: np.argwhere(lab_arr == v).mean(axis=0) for v in (LIVER, SPLEEN, RKID, LKID)}
        assert zyx[LIVER][2] < zyx[SPLEEN][2]  # liver on the right, spleen on the left
        assert zyx[RKID][2] < lab_arr.shape[2] / 2 < zyx[LKID][2]
        assert zyx[RKID][0] < zyx[LKID][0]  # right kidney lower
        assert zyx[LIVER][0] > zyx[RKID][0]  # liver above the right kidney
        assert zyx[RKID][1] > zyx[LIVER][1]  # kidneys posterior (larger y) to the liver
        top = np.flatnonzero((lab_arr == LIVER).any(axis=(1, 2))).max()
        assert top < lab_arr.shape[0] - 1  # the liver dome lies inside the scan, not cut by it
        kidney_bottom = np.flatnonzero(np.isin(lab_arr, (RKID, LKID)).any(axis=(1, 2))).min()
        assert kidney_bottom > 0  # the scan reaches below the kidneys


def test_write_dataset(tmp_path):
    ids = phantom.write_dataset(tmp_path, 2, seed=3)
    assert ids == ["phantom_000", "phantom_001"]
    img = sitk.ReadImage(str(tmp_path / "phantom_001_image.nii.gz"))
    lab = sitk.ReadImage(str(tmp_path / "phantom_001_label.nii.gz"))
    ref_img, ref_lab = phantom.generate_case(1, 3)
    assert np.array_equal(_arr(img), _arr(ref_img)) and np.array_equal(_arr(lab), _arr(ref_lab))
    assert np.allclose(img.GetSpacing(), ref_img.GetSpacing()) and np.allclose(img.GetOrigin(), ref_img.GetOrigin())
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "phantom_000_image.nii.gz", "phantom_000_label.nii.gz", "phantom_001_image.nii.gz", "phantom_001_label.nii.gz"]


def test_the_phantom_is_an_adapter_like_any_other(tmp_path):
    """Its facts, case ids, generation (the fetch step of source kind "generated") and
    pairs all come from its adapter module; nothing else knows its name."""
    from fsmis.data import adapters
    from fsmis.errors import InputError

    m, cfg = adapters.get("phantom"), {"name": "phantom", "n_cases": 1, "phantom_seed": 3}
    assert m.FACTS.label_map == phantom.PHANTOM_LABEL_MAP and m.FACTS.source["kind"] == "generated"
    cases = m.case_ids(cfg)
    assert cases == ["phantom_000"]
    with pytest.raises(InputError, match="generated file"):
        m.check_source(cfg, tmp_path)
    assert m.generate(cfg, tmp_path, cases) == cases
    m.check_source(cfg, tmp_path)
    assert m.pairs(cfg, str(tmp_path), tmp_path / "work", cases) == [
        ("phantom_000", str(tmp_path / "phantom_000_image.nii.gz"), str(tmp_path / "phantom_000_label.nii.gz"))]
    with pytest.raises(ValueError, match="n_cases"):
        m.case_ids({"name": "phantom"})


def test_params_are_keyword_overridable():
    img, _ = phantom.generate_case(0, 1, noise_sd=0.0, texture_scale=0.0, n_slices_range=(36, 36))
    assert img.GetSize()[2] == 36
    with pytest.raises(TypeError, match="unknown phantom parameter"):
        phantom.generate_case(0, 0, bogus=1)
