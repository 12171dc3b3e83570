"""Canonical conversion: explicit label maps, clear errors, nothing half-written."""

import numpy as np
import pytest
import SimpleITK as sitk

from fsmis.data import canonical
from fsmis.errors import InputError
from fsmis.labels import class_id

CHAOS_MAP = {63: "liver", 126: "right_kidney", 189: "left_kidney", 252: "spleen"}  # CHAOS PNG grey values


def _write(path, arr, spacing=(0.8, 0.8, 2.5), origin=(-10.0, 5.0, 100.0), direction=None):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    sitk.WriteImage(img, str(path))
    return str(path)


def _pair(tmp_path, case="c1", values=(63, 252), image_geom=None, label_geom=None):
    img = np.random.default_rng(0).integers(-1000, 1000, (4, 6, 7)).astype(np.int16)
    lab = np.zeros((4, 6, 7), np.uint8)
    for z, v in enumerate(values):
        lab[z, :2, :3] = v
    return (case, _write(tmp_path / f"{case}_img.nii.gz", img, **(image_geom or {})),
            _write(tmp_path / f"{case}_lab.nii.gz", lab, **(label_geom or {})))


def _read(path):
    img = sitk.ReadImage(str(path))
    return img, sitk.GetArrayFromImage(img)


def test_maps_raw_values_explicitly(tmp_path):
    pair = _pair(tmp_path, values=(252, 63, 189))
    canonical.build([pair], tmp_path / "out", CHAOS_MAP, "MR")
    lab, arr = _read(tmp_path / "out" / "c1_label.nii.gz")
    assert lab.GetPixelID() == sitk.sitkUInt8
    # by the map, not by sorted value: 252 is spleen even though it is the largest value
    assert arr[0, 0, 0] == class_id("spleen") == 2
    assert arr[1, 0, 0] == class_id("liver") == 1
    assert arr[2, 0, 0] == class_id("left_kidney") == 3
    assert set(np.unique(arr)) == {0, 1, 2, 3}
    assert (arr[:, 2:, :] == 0).all()


def test_writes_image_unchanged_and_table(tmp_path):
    pairs = [_pair(tmp_path, "p10", values=(63,)), _pair(tmp_path, "p2", values=(252, 126))]
    table = canonical.build(pairs, tmp_path / "out", {str(k): v for k, v in CHAOS_MAP.items()}, "CT")
    img, arr = _read(tmp_path / "out" / "p10_image.nii.gz")
    src, src_arr = _read(pairs[0][1])
    assert img.GetPixelID() == sitk.sitkInt16 and np.array_equal(arr, src_arr)
    assert img.GetOrigin() == src.GetOrigin() and img.GetSpacing() == src.GetSpacing()
    assert list(table.columns) == ["case", "source_image", "source_label", "modality", "orientation_source",
                                   "orientation", "spacing_x", "spacing_y", "spacing_z", "size_x", "size_y",
                                   "size_z", "labels"]
    assert table["orientation_source"].tolist() == ["LPS", "LPS"] and set(table["orientation"]) == {"LPS"}
    assert table["case"].tolist() == ["p10", "p2"]
    row = table.iloc[1]
    assert row["labels"] == "spleen,right_kidney"  # canonical id order
    assert (row["size_x"], row["size_y"], row["size_z"]) == (7, 6, 4)
    assert row["spacing_x"] == pytest.approx(0.8) and row["spacing_z"] == pytest.approx(2.5)
    assert row["modality"] == "CT" and row["source_label"] == pairs[1][2]


def test_unknown_label_values_name_file_values_and_allowed(tmp_path):
    pair = _pair(tmp_path, values=(63, 7, 9))
    with pytest.raises(InputError) as err:
        canonical.build([pair], tmp_path / "out", CHAOS_MAP, "MR")
    msg = str(err.value)
    assert msg.startswith(pair[2]) and "unknown label values [7, 9]" in msg
    assert "allowed: [0, 63, 126, 189, 252]" in msg
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("what, label_geom, shown", [
    ("spacing", {"spacing": (0.8, 0.8, 3.0)}, "spacing (0.8, 0.8, 3) (label) vs (0.8, 0.8, 2.5) (image)"),
    ("origin", {"origin": (-10.0, 5.0, 100.01)}, "origin (-10, 5, 100.01) (label) vs (-10, 5, 100) (image)"),
    ("direction", {"direction": (1.0, 0, 0, 0, -1.0, 0, 0, 0, -1.0)}, "direction (1, 0, 0, 0, -1, 0, 0, 0, -1)"),
])
def test_geometry_mismatch_names_both_files(tmp_path, what, label_geom, shown):
    pair = _pair(tmp_path, label_geom=label_geom)
    with pytest.raises(InputError) as err:
        canonical.build([pair], tmp_path / "out", CHAOS_MAP, "MR")
    msg = str(err.value)
    assert msg.startswith(pair[2]) and pair[1] in msg and shown in msg


def test_size_mismatch(tmp_path):
    case, image, _ = _pair(tmp_path)
    label = _write(tmp_path / "small_lab.nii.gz", np.zeros((4, 6, 6), np.uint8))
    with pytest.raises(InputError, match=r"small_lab.nii.gz: geometry differs from its image .*c1_img.nii.gz: size"):
        canonical.build([(case, image, label)], tmp_path / "out", CHAOS_MAP, "MR")


def test_tiny_geometry_differences_are_tolerated(tmp_path):
    pair = _pair(tmp_path, label_geom={"origin": (-10.0, 5.0, 100.00005)})
    assert len(canonical.build([pair], tmp_path / "out", CHAOS_MAP, "MR")) == 1


def test_corrupt_file_names_it_and_nothing_is_written(tmp_path):
    good, bad = _pair(tmp_path, "a"), _pair(tmp_path, "b")
    with open(bad[1], "wb") as fh:
        fh.write(b"\x1f\x8b\x08 not a nifti")
    with pytest.raises(InputError, match=r"b_img.nii.gz: not a readable image"):
        canonical.build([good, bad], tmp_path / "out", CHAOS_MAP, "MR")
    assert not (tmp_path / "out").exists()  # the good case before it was not written either


def test_missing_file(tmp_path):
    case, image, _ = _pair(tmp_path)
    with pytest.raises(InputError, match="nope.nii.gz: file does not exist"):
        canonical.build([(case, image, str(tmp_path / "nope.nii.gz"))], tmp_path / "out", CHAOS_MAP, "MR")


def test_bad_label_map_and_case_ids(tmp_path):
    pair = _pair(tmp_path)
    with pytest.raises(ValueError, match="unknown class 'livr'"):
        canonical.build([pair], tmp_path / "out", {63: "livr"}, "MR")
    with pytest.raises(ValueError, match="duplicate case id 'c1'"):
        canonical.build([pair, pair], tmp_path / "out", CHAOS_MAP, "MR")


def test_case_table_joins_the_per_case_rows_exactly(tmp_path):
    from fsmis.errors import InputError
    from fsmis.stages import data

    header = "case\tspacing_x\tlabels"
    (tmp_path / "b.tsv").write_text(f"{header}\nb_1\t0.7031250000000001\tliver\n")
    (tmp_path / "a.tsv").write_text(f"{header}\na_1\t1.5\tliver,spleen\n")
    data.case_table([str(tmp_path / "b.tsv"), str(tmp_path / "a.tsv")], str(tmp_path / "cases.tsv"))
    # rows in the order given, values as written (no float round trip)
    expected = f"{header}\nb_1\t0.7031250000000001\tliver\na_1\t1.5\tliver,spleen\n"
    assert (tmp_path / "cases.tsv").read_text(encoding="utf-8") == expected
    (tmp_path / "c.tsv").write_text("case\tlabels\nc_1\tliver\n")
    with pytest.raises(InputError, match="c.tsv.*columns differ"):
        data.case_table([str(tmp_path / "a.tsv"), str(tmp_path / "c.tsv")], str(tmp_path / "bad.tsv"))
    with pytest.raises(ValueError, match="duplicate case id 'a_1'"):
        data.case_table([str(tmp_path / "a.tsv"), str(tmp_path / "a.tsv")], str(tmp_path / "bad.tsv"))
    assert not (tmp_path / "bad.tsv").exists()


def test_usable_cases_of_an_inventory(tmp_path):
    from fsmis.data.adapters import usable_cases

    (tmp_path / "inventory.tsv").write_text("case\tusable\treason\nc_1\t1\t\nc_2\t0\tno mask below x\nc_3\t1\t\n")
    assert usable_cases(tmp_path / "inventory.tsv") == ["c_1", "c_3"]


# -- one anatomical orientation ------------------------------------------------------

def _stored_as(img: sitk.Image, flip=(), order=(0, 1, 2)) -> sitk.Image:
    """The same anatomy stored differently: array axes (x, y, z) flipped and/or
    permuted, with origin and direction updated so that every voxel keeps its
    physical position (what another scanner or converter would write)."""
    out = sitk.Flip(img, [a in flip for a in range(3)]) if flip else img
    return sitk.PermuteAxes(out, list(order)) if tuple(order) != (0, 1, 2) else out


@pytest.mark.parametrize(("flip", "order", "code"), [
    ((0,), (0, 1, 2), "RPS"), ((2,), (0, 1, 2), "LPI"), ((0, 1), (0, 1, 2), "RAS"),
    ((), (2, 0, 1), "SLP"), ((1,), (1, 2, 0), "ASL")])
def test_every_storage_order_gives_the_same_canonical_volume(tmp_path, flip, order, code):
    case, image_path, label_path = _pair(tmp_path, "ref", values=(63, 252, 126))
    canonical.build([(case, image_path, label_path)], tmp_path / "ref", CHAOS_MAP, "CT")
    other = tmp_path / "other"
    other.mkdir()
    for src, name in ((image_path, "img"), (label_path, "lab")):
        moved = _stored_as(sitk.ReadImage(src), flip, order)
        sitk.WriteImage(moved, str(other / f"c_{name}.nii.gz"))
    assert canonical.orientation_of(sitk.ReadImage(str(other / "c_img.nii.gz"))) == code
    table = canonical.build([("c", str(other / "c_img.nii.gz"), str(other / "c_lab.nii.gz"))], tmp_path / "out",
                            CHAOS_MAP, "CT")
    assert table.iloc[0]["orientation_source"] == code and table.iloc[0]["orientation"] == "LPS"
    for kind in ("image", "label"):
        ref, ref_arr = _read(tmp_path / "ref" / f"ref_{kind}.nii.gz")
        got, got_arr = _read(tmp_path / "out" / f"c_{kind}.nii.gz")
        # axes are only permuted and flipped: the arrays are identical, not merely close
        assert np.array_equal(got_arr, ref_arr)
        assert np.allclose(got.GetOrigin(), ref.GetOrigin(), atol=1e-6)
        assert np.allclose(got.GetDirection(), ref.GetDirection(), atol=1e-12)
        assert np.allclose(got.GetSpacing(), ref.GetSpacing(), atol=1e-12)
    # spacing and size in the table are those of the canonical volume
    assert (table.iloc[0]["size_x"], table.iloc[0]["size_z"]) == (7, 4)


def test_reorientation_keeps_every_voxel_at_its_physical_position(tmp_path):
    img = sitk.ReadImage(_pair(tmp_path)[1])
    stored = _stored_as(img, flip=(0, 2), order=(1, 0, 2))
    canon = canonical.reorient(stored)
    arr = sitk.GetArrayViewFromImage(stored)
    canon_arr = sitk.GetArrayViewFromImage(canon)
    for idx in [(0, 0, 0), (5, 3, 1), (2, 6, 3)]:  # (x, y, z) indices of the stored volume
        point = stored.TransformIndexToPhysicalPoint(idx)
        cx, cy, cz = canon.TransformPhysicalPointToIndex(point)
        assert canon_arr[cz, cy, cx] == arr[idx[2], idx[1], idx[0]]


def test_predictions_go_back_to_the_raw_grid(tmp_path):
    """A label on the canonical grid, resampled back, lands on the raw file's grid and
    axis order, voxel for voxel."""
    case, image_path, label_path = _pair(tmp_path, "ref", values=(63, 252, 126))
    raw = _stored_as(sitk.ReadImage(label_path), flip=(1,), order=(2, 0, 1))
    sitk.WriteImage(raw, str(tmp_path / "raw_lab.nii.gz"))
    sitk.WriteImage(_stored_as(sitk.ReadImage(image_path), flip=(1,), order=(2, 0, 1)), str(tmp_path / "raw.nii.gz"))
    canonical.build([("c", str(tmp_path / "raw.nii.gz"), str(tmp_path / "raw_lab.nii.gz"))], tmp_path / "out",
                    CHAOS_MAP, "CT")
    canon_label = sitk.ReadImage(str(tmp_path / "out" / "c_label.nii.gz"))
    canon_image = sitk.ReadImage(str(tmp_path / "out" / "c_image.nii.gz"))
    back = canonical.to_source_grid(canon_label, canon_image, canonical.orientation_of(raw))
    assert back.GetSize() == raw.GetSize()
    assert np.allclose(back.GetOrigin(), raw.GetOrigin(), atol=1e-6)
    assert np.allclose(back.GetDirection(), raw.GetDirection(), atol=1e-12)
    raw_ids = sitk.GetArrayFromImage(raw)
    expected = np.zeros_like(raw_ids)
    for value, name in CHAOS_MAP.items():
        expected[raw_ids == value] = class_id(name)
    assert np.array_equal(sitk.GetArrayFromImage(back), expected)
