"""Canonical conversion: explicit label maps and clear errors for bad input."""

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from fsmis.data import canonical
from fsmis.errors import InputError
from fsmis.labels import class_id

LABEL_MAP = {63: "liver", 126: "right_kidney", 189: "left_kidney", 252: "spleen"}  # CHAOS PNG values


def _write(path, arr, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0)):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    sitk.WriteImage(img, str(path))
    return str(path)


def _pair(tmp_path, case="c1", label_values=(63, 252), **geom):
    img = np.random.default_rng(0).integers(-100, 100, (4, 6, 6)).astype(np.int16)
    lab = np.zeros((4, 6, 6), np.uint8)
    for i, v in enumerate(label_values):
        lab[i, :2, :2] = v
    return (case, _write(tmp_path / f"{case}_img.nii.gz", img), _write(tmp_path / f"{case}_lab.nii.gz", lab, **geom))


def test_maps_values_explicitly_and_writes_table(tmp_path):
    table = canonical.build([_pair(tmp_path)], tmp_path / "out", LABEL_MAP, "MR")
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "c1_label.nii.gz")))
    assert lab[0, 0, 0] == class_id("liver") and lab[1, 0, 0] == class_id("spleen")
    assert set(np.unique(lab)) == {0, class_id("liver"), class_id("spleen")}
    assert isinstance(table, pd.DataFrame) and table.loc[0, "labels"] == "liver,spleen"
    assert (table.loc[0, "spacing_z"], table.loc[0, "size_x"]) == (2.0, 6)


def test_unknown_label_value_names_file_and_values(tmp_path):
    pair = _pair(tmp_path, label_values=(63, 7))
    with pytest.raises(InputError, match=r"c1_lab.nii.gz: unknown label values \[7\]"):
        canonical.build([pair], tmp_path / "out", LABEL_MAP, "MR")
    assert not (tmp_path / "out").exists()


def test_geometry_mismatch_names_both_files(tmp_path):
    pair = _pair(tmp_path, spacing=(1.0, 1.0, 3.0))
    with pytest.raises(InputError, match=r"c1_lab.nii.gz: geometry differs from its image .*c1_img.nii.gz: spacing"):
        canonical.build([pair], tmp_path / "out", LABEL_MAP, "MR")


def test_bad_case_writes_nothing_even_after_good_ones(tmp_path):
    good = _pair(tmp_path, "a")
    bad = _pair(tmp_path, "b")
    open(bad[1], "wb").write(b"\x1f\x8b not a nifti")
    with pytest.raises(InputError, match="b_img.nii.gz: not a readable image"):
        canonical.build([good, bad], tmp_path / "out", LABEL_MAP, "MR")
    assert not (tmp_path / "out" / "a_image.nii.gz").exists()
