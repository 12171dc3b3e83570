"""The embedded phantom: deterministic, varied, anatomically plausible."""

import numpy as np
import pytest
import SimpleITK as sitk

from fsmis.data import phantom


@pytest.fixture(scope="module")
def cases():
    return [phantom.generate_case(i, 2024) for i in range(3)]


def _arr(img):
    return sitk.GetArrayFromImage(img)


def test_deterministic_and_cases_differ(cases):
    img, lab = phantom.generate_case(1, 2024)
    assert np.array_equal(_arr(img), _arr(cases[1][0])) and np.array_equal(_arr(lab), _arr(cases[1][1]))
    assert cases[0][0].GetSize() != cases[1][0].GetSize() or not np.array_equal(_arr(cases[0][0]), _arr(cases[1][0]))
    other_seed, _ = phantom.generate_case(1, 7)
    assert other_seed.GetSpacing() != img.GetSpacing() or not np.array_equal(_arr(other_seed), _arr(img))


def test_geometry(cases):
    spacings = {c[0].GetSpacing() for c in cases}
    assert len(spacings) == 3  # spacing varies between cases
    for img, lab in cases:
        assert img.GetSize() == lab.GetSize() and img.GetSpacing() == lab.GetSpacing()
        assert img.GetOrigin() == lab.GetOrigin() and img.GetDirection() == lab.GetDirection()
        assert img.GetPixelID() == sitk.sitkInt16 and lab.GetPixelID() == sitk.sitkUInt8
        assert 1.5 <= img.GetSpacing()[0] <= 2.2 and 3.5 <= img.GetSpacing()[2] <= 6.5


def test_organs_volumes_and_intensities(cases):
    for img, lab in cases:
        a, l = _arr(img).astype(float), _arr(lab)
        voxel_ml = np.prod(img.GetSpacing()) / 1000
        vols = {v: (l == v).sum() * voxel_ml for v in (1, 2, 3, 4)}
        assert 600 < vols[1] < 2500, vols  # liver
        assert 20 < vols[2] < 400, vols  # spleen
        assert 40 < vols[3] < 300 and 40 < vols[4] < 300, vols  # kidneys
        hu = {v: np.median(a[l == v]) for v in (1, 2, 3, 4)}
        assert abs(hu[1] - hu[2]) <= 15  # liver and spleen close, as in real CT
        assert hu[3] > hu[1] + 30 and hu[4] > hu[1] + 30  # enhancing kidneys
        assert a.min() <= -900 and a.max() >= 400  # air and bone present


def test_laterality_and_height(cases):
    for img, lab in cases:
        l = _arr(lab)
        cent = {v: np.argwhere(l == v).mean(axis=0) for v in (1, 2, 3, 4)}  # (z, y, x)
        assert cent[1][2] < cent[2][2]  # liver on the patient's right (small x), spleen left
        assert cent[3][2] < cent[4][2]  # right kidney at smaller x than the left
        assert cent[3][0] < cent[4][0]  # right kidney lower (slice 0 is inferior)
        assert cent[1][0] > cent[3][0]  # liver above the right kidney


def test_write_dataset(tmp_path):
    cases = phantom.write_dataset(tmp_path, 2, seed=3)
    assert cases == ["phantom_000", "phantom_001"]
    assert (tmp_path / "phantom_001_label.nii.gz").exists()
    with pytest.raises(TypeError, match="unknown phantom parameter"):
        phantom.generate_case(0, 0, bogus=1)
