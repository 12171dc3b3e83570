"""Dataset adapters: real raw layouts (faked small) -> checked (case, image, label) pairs."""

import dataclasses
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import fake_datasets as F
import numpy as np
import pytest
import SimpleITK as sitk

from fsmis.data import adapters, canonical
from fsmis.data.adapters import ManualDataMissing
from fsmis.errors import InputError
from fsmis.labels import CLASSES, class_id


def _arr(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _build(name, pairs, tmp_path, cfg=None):
    facts = adapters.facts(cfg or {"name": name})
    return canonical.build(pairs, tmp_path / "canonical", facts["label_map"], facts["modality"])


# -- registry and facts ---------------------------------------------------------------

def test_modules_import_only_the_standard_library():
    """The Snakefile imports the registry and every adapter at parse time."""
    code = ("import sys, importlib\nfrom fsmis.data import adapters\n"
            "for name in (*adapters.DATASETS, 'manual', '__main__'):\n"
            "    importlib.import_module(f'fsmis.data.adapters.{name}')\n"
            "heavy = [m for m in ('numpy', 'SimpleITK', 'pandas', 'torch') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True)


# every registered dataset with fixed facts (nifti_folder's come from the config)
FIXED = [n for n in adapters.DATASETS if n != "nifti_folder"]


@pytest.mark.parametrize("name", FIXED)
def test_dataset_facts_are_consistent(name):
    module = adapters.get(name)
    facts = adapters.facts({"name": name})
    assert facts == dataclasses.asdict(module.FACTS)
    assert facts["modality"] in ("CT", "MR")
    assert all(v in CLASSES and isinstance(k, int) and k != 0 for k, v in facts["label_map"].items())
    assert set(facts["classes"]) <= set(facts["label_map"].values())
    assert all(set(g) <= set(facts["classes"]) for g in facts["label_groups"])
    kind = facts["source"]["kind"]
    if kind == "manual":
        assert facts["source"]["page"].startswith("https://") and facts["source"]["layout"]
    if kind == "zenodo":
        assert adapters.downloads({"name": name})
    if kind == "generated":  # the workflow hashes the generator and calls generate()
        assert (Path(adapters.__file__).parents[3] / facts["source"]["generator"]).is_file()  # relative to src/
        assert callable(module.generate)
    assert all(callable(getattr(module, f)) for f in ("case_ids", "check_source", "pairs"))
    assert module.case_ids({"name": name, "n_cases": 3})


def test_registry():
    assert set(adapters.DATASETS) == {"phantom", "chaos_mr", "abdomenct1k", "synapse_ct", "cmr_bssfp",
                                      "nifti_folder"}
    assert [adapters.source_kind(n) for n in ("phantom", "chaos_mr", "cmr_bssfp", "nifti_folder", "nope")] == \
        ["generated", "zenodo", "manual", "local", None]
    with pytest.raises(ValueError, match="no adapter for dataset 'nope'; registered datasets: phantom, chaos_mr"):
        adapters.get("nope")
    with pytest.raises(ValueError, match="source kind 'ftp'"):
        adapters.Facts("CT", {1: "liver"}, ["liver"], [["liver"]], {"kind": "ftp"})
    assert adapters.unpack_dir("raw", "Mask.7z").as_posix() == "raw/Mask"
    assert adapters.downloads({"name": "chaos_mr"}) == {"3431873": ["CHAOS_Train_Sets.zip"]}


# -- CHAOS ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chaos_raw(tmp_path_factory):
    return F.unpack(F.chaos(patients=(1, 2)).records, tmp_path_factory.mktemp("chaos") / "raw")


def test_chaos_case_ids():
    m = adapters.get("chaos_mr")
    ids = m.case_ids({"name": "chaos_mr"})
    assert len(ids) == 20 and ids[:4] == ["chaos_1", "chaos_2", "chaos_3", "chaos_5"] and ids[-1] == "chaos_39"
    assert m.case_ids({"name": "chaos_mr", "cases": 3}) == ["chaos_1", "chaos_2", "chaos_3"]
    assert m.case_ids({"name": "chaos_mr", "cases": [39, "chaos_2"]}) == ["chaos_2", "chaos_39"]
    assert m.case_ids({"name": "chaos_mr", "cases": 2, "exclude": [1]}) == ["chaos_2", "chaos_3"]
    with pytest.raises(ValueError, match="unknown cases"):
        m.case_ids({"name": "chaos_mr", "cases": ["chaos_4"]})


def test_chaos_conversion_geometry_and_slices(chaos_raw, tmp_path):
    m = adapters.get("chaos_mr")
    cfg = {"name": "chaos_mr", "cases": [1, 2]}
    m.check_source(cfg, chaos_raw)
    pairs = m.pairs(cfg, chaos_raw, tmp_path / "work", m.case_ids(cfg))
    case, image_path, label_path, source_image, source_label = pairs[0]
    assert case == "chaos_1"
    # cases.tsv will name the DICOM series and the PNG masks, not the deleted work copies
    assert source_image.endswith("MR/1/T2SPIR/DICOM_anon")
    assert Path(source_image).is_dir() and Path(source_label).is_dir() and source_label.endswith("T2SPIR/Ground")
    image, label = sitk.ReadImage(image_path), sitk.ReadImage(label_path)
    n = 4
    assert image.GetSize() == (12, 10, n)
    assert np.allclose(image.GetSpacing(), F.CHAOS_SPACING)
    # slices ascend along the normal: the origin is the lowest slice (the last instance)
    lowest = F.CHAOS_TOP[2] - F.CHAOS_SPACING[2] * (n - 1)
    assert np.allclose(image.GetOrigin(), (F.CHAOS_TOP[0], F.CHAOS_TOP[1], lowest))
    assert np.allclose(image.GetDirection(), np.eye(3).ravel())
    for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert np.allclose(getattr(label, get)(), getattr(image, get)())
    img, lab = _arr(image_path), _arr(label_path)
    instance_of_z = img[:, 0, 0] // 100  # each DICOM slice's pixels encode its InstanceNumber
    assert instance_of_z.tolist() == [4, 3, 2, 1]
    z = int(np.flatnonzero(instance_of_z == F.MARKED)[0])
    assert {int(v) for v in np.unique(lab[z])} == {0, 63, 252}  # 68 snapped onto 63 (CHAOS liver range)
    assert (lab[z][F.SPLEEN_BLOCK] == 252).all() and (lab == 252).sum() == lab[z][F.SPLEEN_BLOCK].size
    assert all(252 not in lab[k] for k in range(n) if k != z)
    assert (lab[:, -3:, :3] == 63).all()  # in-plane orientation: rows stay rows
    table = _build("chaos_mr", pairs, tmp_path)
    assert table["labels"].tolist() == ["liver,spleen", "liver,spleen"]
    out = _arr(tmp_path / "canonical" / "chaos_1_label.nii.gz")
    assert (out[z][F.SPLEEN_BLOCK] == class_id("spleen")).all()


@pytest.mark.parametrize("fault, message", [
    ("short", "mask stack does not match the 4 DICOM slices"),
    ("flipped_names", "file numbering disagrees with InstanceNumber"),
    ("shuffled_instances", "InstanceNumber order disagrees with ImagePositionPatient"),
    ("transposed", "transposed or from another series"),
])
def test_chaos_refuses_mismatched_masks(tmp_path, fault, message):
    raw = F.unpack(F.chaos(patients=(1,), n_slices=4, fault=fault).records, tmp_path / "raw")
    m = adapters.get("chaos_mr")
    with pytest.raises(InputError, match=message) as err:
        m.pairs({"name": "chaos_mr"}, raw, tmp_path / "work", ["chaos_1"])
    assert "MR/1/T2SPIR" in str(err.value)  # names the folder (or file) to look at
    assert not (tmp_path / "work" / "chaos_1_label.nii.gz").exists()


def test_chaos_missing_archive_content(tmp_path):
    with pytest.raises(InputError, match="Train_Sets/MR"):
        adapters.get("chaos_mr").check_source({"name": "chaos_mr"}, tmp_path)


# -- AbdomenCT-1K ---------------------------------------------------------------------

def test_abdomenct1k_case_ids_and_downloads():
    m = adapters.get("abdomenct1k")
    ids = m.case_ids({"name": "abdomenct1k"})
    assert len(ids) == 361 and ids[0] == "subtask1_0001" and ids[-1] == "subtask1_0361"
    assert m.case_ids({"name": "abdomenct1k", "subtask": 2, "cases": 2}) == ["subtask2_0001", "subtask2_0002"]
    full = m.case_ids({"name": "abdomenct1k", "form": "full"})
    assert len(full) == 1062 and full[0] == "case_00001" and full[-1] == "case_01062"
    assert m.case_ids({"name": "abdomenct1k", "form": "full", "cases": [801, 1]}) == ["case_00001", "case_00801"]
    assert adapters.downloads({"name": "abdomenct1k"}) == {"5903037": ["Subtask1.zip"]}
    assert adapters.downloads({"name": "abdomenct1k", "form": "full"}) == {
        "5903099": ["AbdomenCT-1K-ImagePart1.zip"], "5903846": ["AbdomenCT-1K-ImagePart2.zip"],
        "5903769": ["AbdomenCT-1K-ImagePart3.zip", "Mask.7z"]}
    with pytest.raises(ValueError, match="dataset.form"):
        m.case_ids({"name": "abdomenct1k", "form": "half"})


def test_abdomenct1k_benchmark_pairs_and_maskless(tmp_path):
    src = F.abdomenct1k_benchmark(subtask=1, numbers=(1, 2, 3), maskless=(2,))
    names = zipfile.ZipFile(io.BytesIO(src.records["5903037"]["Subtask1.zip"])).namelist()
    assert {"TrainImage/train_0001_0000.nii.gz", "TrainMask/train_0001.nii.gz"} <= set(names)
    raw = F.unpack(src.records, tmp_path / "raw")
    m = adapters.get("abdomenct1k")
    cfg = {"name": "abdomenct1k", "cases": 3}
    m.check_source(cfg, raw)
    with pytest.raises(InputError, match=r"1 requested case\(s\) have no mask: \['subtask1_0002'\]") as err:
        m.pairs(cfg, raw, tmp_path / "work", m.case_ids(cfg))
    assert "exclude: [subtask1_0002]" in str(err.value)
    assert not m.cases_known_after_unpack(cfg)  # the benchmark form has every mask: a static case list
    pairs = m.pairs(cfg, raw, tmp_path / "work", ["subtask1_0001", "subtask1_0003"])
    assert [p[0] for p in pairs] == ["subtask1_0001", "subtask1_0003"]
    assert pairs[1][1].endswith("TrainImage/train_0003_0000.nii.gz")
    assert pairs[1][2].endswith("TrainMask/train_0003.nii.gz")
    cfg = {"name": "abdomenct1k", "cases": 2, "exclude": [2]}
    assert m.case_ids(cfg) == ["subtask1_0001", "subtask1_0003"]
    table = _build("abdomenct1k", m.pairs(cfg, raw, tmp_path / "work", m.case_ids(cfg)), tmp_path)
    assert table["labels"].tolist() == ["liver,spleen,kidney,pancreas"] * 2
    with pytest.raises(InputError, match="TrainImage"):  # Subtask2 was not unpacked
        m.check_source({"name": "abdomenct1k", "subtask": 2}, raw)


def test_abdomenct1k_full_release(tmp_path):
    src = F.abdomenct1k_full(numbers=(1, 2, 401, 801), maskless=(2,))
    assert set(src.records) == {"5903099", "5903846", "5903769"}
    raw = F.unpack(src.records, tmp_path / "raw")
    m = adapters.get("abdomenct1k")
    cfg = {"name": "abdomenct1k", "form": "full", "cases": [1, 401, 801]}
    m.check_source(cfg, raw)
    pairs = m.pairs(cfg, raw, tmp_path / "work", m.case_ids(cfg))
    assert [p[0] for p in pairs] == ["case_00001", "case_00401", "case_00801"]
    assert "AbdomenCT-1K-ImagePart2" in pairs[1][1] and pairs[1][2].endswith("Mask/Case_00401.nii.gz")
    assert _build("abdomenct1k", pairs, tmp_path)["case"].tolist() == ["case_00001", "case_00401", "case_00801"]
    with pytest.raises(InputError, match=r"Mask: 1 requested case\(s\) have no mask: \[.case_00002.\]. The full"):
        m.pairs({**cfg, "cases": [1, 2]}, raw, tmp_path / "work", ["case_00001", "case_00002"])
    with pytest.raises(InputError, match=r"no image after unpacking: \['case_00003'\]"):
        m.check_source({**cfg, "cases": 3}, raw)
    # the workflow's inventory: which requested cases are usable, and why not
    assert adapters.cases_known_after_unpack(cfg) and not adapters.cases_known_after_unpack({"name": "chaos_mr"})
    verdict = adapters.inventory({**cfg, "cases": [1, 2, 801]}, raw, ["case_00001", "case_00002", "case_00801"])
    assert list(verdict) == ["case_00001", "case_00002", "case_00801"]
    assert verdict["case_00001"] is None and verdict["case_00801"] is None
    assert verdict["case_00002"].startswith("no mask below") and verdict["case_00002"].endswith("Mask")
    with pytest.raises(InputError, match=r"have no image: \['case_00003'\]"):
        adapters.inventory(cfg, raw, ["case_00001", "case_00003"])


# -- nnU-Net / MSD folder --------------------------------------------------------------

def test_nifti_folder_nnunet_v2(tmp_path):
    root = F.nnunet_folder(tmp_path / "ds", "v2")
    m = adapters.get("nifti_folder")
    cfg = {"name": "nifti_folder", "root": str(root), "label_map": {"liver": "liver", "tumour": "liver"}}
    assert m.case_ids(cfg) == ["liver_0", "liver_1", "liver_2"]  # liver-1.nii.gz -> liver_1
    facts = adapters.facts(cfg)
    assert facts["modality"] == "CT" and facts["label_map"] == {1: "liver", 2: "liver"}
    assert facts["classes"] == ["liver"] and facts["label_groups"] == [["liver"]]
    m.check_source(cfg, root)
    pairs = m.pairs(cfg, root, tmp_path / "work", m.case_ids(cfg))
    assert pairs[1][1].endswith("imagesTr/liver-1_0000.nii.gz") and pairs[1][2].endswith("labelsTr/liver-1.nii.gz")
    _build("nifti_folder", pairs, tmp_path, cfg)
    assert set(np.unique(_arr(tmp_path / "canonical" / "liver_1_label.nii.gz"))) == {0, class_id("liver")}
    # ignore the tumour instead of merging it: a filtered copy, the source untouched
    cfg = {**cfg, "label_map": {1: "liver"}, "ignore_labels": ["tumour"], "cases": 1}
    pairs = m.pairs(cfg, root, tmp_path / "work", m.case_ids(cfg))
    assert pairs[0][2] == str(tmp_path / "work" / "liver_0_label.nii.gz")
    assert set(np.unique(_arr(pairs[0][2]))) == {0, 1} and 2 in _arr(root / "labelsTr" / "liver_0.nii.gz")
    # the table records the raw label, which outlives the work folder
    table = _build("nifti_folder", pairs, tmp_path, cfg)
    assert table.loc[0, "source_label"] == str(root / "labelsTr" / "liver_0.nii.gz")
    assert table.loc[0, "source_image"] == str(root / "imagesTr" / "liver_0_0000.nii.gz")
    with pytest.raises(ValueError, match="neither a number nor a label"):
        adapters.facts({**cfg, "label_map": {"kidney": "left_kidney"}})
    with pytest.raises(ValueError, match="label_map is required"):
        adapters.facts({"name": "nifti_folder", "root": str(root)})
    # files gone: how many of the expected ones are there, which are missing, where to read
    (root / "imagesTr" / "liver-1_0000.nii.gz").unlink()
    with pytest.raises(InputError) as err:
        m.check_source({**cfg, "cases": None}, root)
    assert str(err.value).startswith(f"{root}: dataset 'nifti_folder': 5 of 6 expected files are there ")
    assert "Missing: imagesTr/liver-1_0000.nii.gz (or liver-1.nii.gz)." in str(err.value)
    assert 'docs/data.md, section "Hand-placed datasets"' in str(err.value)


def test_nifti_folder_msd(tmp_path):
    root = F.nnunet_folder(tmp_path / "Task03_Liver", "msd")
    m = adapters.get("nifti_folder")
    cfg = {"name": "nifti_folder", "root": str(root), "label_map": {1: "liver", "cancer": "liver"}, "modality": "CT"}
    assert m.case_ids(cfg) == ["liver_0", "liver_1", "liver_2"]  # ._ junk ignored
    pairs = m.pairs(cfg, root, tmp_path / "work", m.case_ids(cfg))
    assert pairs[0][1].endswith("imagesTr/liver_0.nii.gz")
    assert len(_build("nifti_folder", pairs, tmp_path, cfg)) == 3
    # the training list names the cases: a label gone is a missing file, counted
    (root / "labelsTr" / "liver_2.nii.gz").unlink()
    (root / "imagesTr" / "liver_2.nii.gz").unlink()
    with pytest.raises(InputError, match=r"4 of 6 expected files are there \(3 cases, image and label each\)\. "
                                         r"Missing: imagesTr/liver_2_0000\.nii\.gz \(or liver_2\.nii\.gz\), "
                                         r"labelsTr/liver_2\.nii\.gz\."):
        m.check_source(cfg, root)


# -- registration-only datasets --------------------------------------------------------

def test_synapse_missing_says_where_from_and_how(tmp_path):
    m = adapters.get("synapse_ct")
    page = m.FACTS.source["page"]
    with pytest.raises(ManualDataMissing) as err:
        m.check_source({"name": "synapse_ct"}, None)
    text = str(err.value)
    assert text.startswith("dataset 'synapse_ct': dataset.root is not set (60 files expected). ")
    assert page in text and 'docs/datasets.md, section "Synapse / BTCV (Abd-CT)"' in text and "\n" not in text
    (tmp_path / "RawData.zip").write_bytes(b"PK")
    with pytest.raises(ManualDataMissing) as err:
        m.check_source({"name": "synapse_ct"}, tmp_path)
    text = str(err.value)
    # one paragraph: how many of the expected files are where, where to read how to place them
    assert text.startswith(f"dataset 'synapse_ct': 0 of 60 expected files under {tmp_path}. ") and "\n" not in text
    assert 'README.md, section "Running the paper experiments"' in text
    assert "Missing: img0001.nii.gz, label0001.nii.gz, img0002.nii.gz, label0002.nii.gz and 56 more." in text
    assert "unpack them there" in text
    assert err.value.missing[0] == "img0001.nii.gz" and len(err.value.missing) == 60 and err.value.expected == 60
    with pytest.raises(ManualDataMissing, match=r"0 of 6 expected files under \S+nowhere \(the folder does not"):
        m.check_source({"name": "synapse_ct", "cases": 3}, tmp_path / "nowhere")
    F.synapse_folder(tmp_path / "part", numbers=(1, 2))
    with pytest.raises(ManualDataMissing, match="'synapse_ct': 4 of 60 expected files under") as err:
        m.check_source({"name": "synapse_ct"}, tmp_path / "part")
    assert "Missing: img0003.nii.gz, label0003.nii.gz" in str(err.value)


@pytest.mark.parametrize("name", ["synapse_ct", "cmr_bssfp"])
def test_the_sections_a_missing_dataset_names_exist(name):
    docs = adapters.get(name).FACTS.source["docs"]
    path, _, section = docs.partition(", section ")
    headings = Path(__file__).resolve().parents[1].joinpath(path).read_text(encoding="utf-8").splitlines()
    assert f"## {section.strip(chr(34))}" in headings
    readme = Path(__file__).resolve().parents[1].joinpath("README.md").read_text(encoding="utf-8").splitlines()
    assert "## Running the paper experiments" in readme


def test_synapse_pairs_keep_the_fsmis_organs(tmp_path):
    root = F.synapse_folder(tmp_path / "btcv", numbers=(1, 2, 21))
    m = adapters.get("synapse_ct")
    ids = m.case_ids({"name": "synapse_ct"})
    assert len(ids) == 30 and ids[9:11] == ["synapse_0010", "synapse_0021"]
    with pytest.raises(ManualDataMissing, match="img0003.nii.gz"):
        m.check_source({"name": "synapse_ct"}, root)
    cfg = {"name": "synapse_ct", "cases": [1, 2, 21]}
    m.check_source(cfg, root)
    pairs = m.pairs(cfg, root, tmp_path / "work", m.case_ids(cfg))
    assert [p[0] for p in pairs] == ["synapse_0001", "synapse_0002", "synapse_0021"]
    lab = _arr(pairs[0][2])
    assert set(np.unique(lab)) == {0, 1, 2, 3, 6}  # gallbladder (4) and pancreas (11) -> background
    table = _build("synapse_ct", pairs, tmp_path)
    assert table["labels"].tolist() == ["liver,spleen,left_kidney,right_kidney"] * 3


def test_cmr_pairs(tmp_path):
    root = F.cmr_folder(tmp_path / "mscmr", numbers=(1, 2, 3))
    m = adapters.get("cmr_bssfp")
    assert m.case_ids({"name": "cmr_bssfp"})[-1] == "cmr_35"
    with pytest.raises(ManualDataMissing, match="patient4_C0_manual.nii.gz"):
        m.check_source({"name": "cmr_bssfp", "cases": 4}, root)
    cfg = {"name": "cmr_bssfp", "cases": 3}
    pairs = m.pairs(cfg, root, tmp_path / "work", m.case_ids(cfg))
    assert pairs[2][1].endswith("c0t2lge/patient3_C0.nii.gz") and pairs[2][2].endswith("c0gt/patient3_C0_manual.nii.gz")
    table = _build("cmr_bssfp", pairs, tmp_path)
    assert table["labels"].tolist() == ["lv_bp,lv_myo,rv"] * 3


# -- per-case modality -----------------------------------------------------------------

def _mixed_folder(root, mr_cases=("liver_1",), training_modality=None):
    """An nnU-Net folder whose dataset.json says CT but whose ``mr_cases`` hold MR-like
    intensities (non-negative); CT cases hold air (-1000) around a body."""
    root = F.nnunet_folder(root, "msd")
    for stem in ("liver_0", "liver-1", "liver_2"):
        case = stem.replace("-", "_")
        image, _ = F._pair_arrays(1, (1, 2))
        if case in mr_cases:
            image = (image.astype(np.int32) + 300).astype(np.int16)  # 100..600, no air
        else:
            image[:, 0, :] = -1000  # air rows: a CT signature
        F.write_nifti(root / "imagesTr" / f"{stem}.nii.gz", image)
    if training_modality:
        meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
        for entry in meta["training"]:
            case = Path(entry["label"]).name[: -len(".nii.gz")].replace("-", "_")
            if case in training_modality:
                entry["modality"] = training_modality[case]
        (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _canonical(cfg, root, tmp_path):
    cases = adapters.get("nifti_folder").case_ids(cfg)
    claims = adapters.modality_claims(cfg, cases)
    pairs = adapters.get("nifti_folder").pairs(cfg, root, tmp_path / "work", cases)
    return canonical.build(pairs, tmp_path / "canonical", adapters.facts(cfg)["label_map"],
                           {c: m for c, (m, _, _) in claims.items()},
                           claims={c: w for c, (_, w, own) in claims.items() if not own})


def test_intensity_signature_tells_ct_from_mr():
    ct = np.full((4, 8, 8), 40, np.int16)
    ct[:, :2] = -1000
    assert canonical.intensity_modality(ct)[0] == "CT"
    assert canonical.intensity_modality(np.abs(ct))[0] == "MR"
    zscored = np.linspace(-2.5, 3.0, 256).reshape(4, 8, 8)
    assert canonical.intensity_modality(zscored)[0] == "MR"
    soft_tissue_only = np.linspace(-200, 300, 256).reshape(4, 8, 8)  # cropped CT: no verdict
    assert canonical.intensity_modality(soft_tissue_only)[0] is None


def test_nifti_folder_mixing_ct_and_mr_without_saying_so_is_refused(tmp_path):
    root = _mixed_folder(tmp_path / "ds")
    cfg = {"name": "nifti_folder", "root": str(root), "label_map": {1: "liver"}, "ignore_labels": [2]}
    assert adapters.case_modalities(cfg, ["liver_0", "liver_1"]) == {"liver_0": "CT", "liver_1": "CT"}
    with pytest.raises(InputError, match=r"(?s)liver-1\.nii\.gz: case liver_1 is CT by dataset\.json channel 'CT', "
                                         r"but its intensities look like MR.*modality: \{liver_1: MR"):
        _canonical(cfg, root, tmp_path)


def test_nifti_folder_per_case_modality_from_config_or_dataset_json(tmp_path):
    root = _mixed_folder(tmp_path / "ds")
    cfg = {"name": "nifti_folder", "root": str(root), "label_map": {1: "liver"}, "ignore_labels": [2],
           "modality": {"liver_1": "MR"}}
    assert adapters.case_modalities(cfg, ["liver_0", "liver_1", "liver_2"]) == {
        "liver_0": "CT", "liver_1": "MR", "liver_2": "CT"}
    assert adapters.facts(cfg)["modality"] == "mixed"
    table = _canonical(cfg, root, tmp_path)
    assert table.set_index("case")["modality"].to_dict() == {"liver_0": "CT", "liver_1": "MR", "liver_2": "CT"}
    # the same statement in dataset.json's training entry
    root2 = _mixed_folder(tmp_path / "ds2", training_modality={"liver_1": "MR"})
    cfg2 = {**cfg, "root": str(root2)}
    del cfg2["modality"]
    assert adapters.modality_claims(cfg2, ["liver_1"])["liver_1"] == (
        "MR", "dataset.json training entry of liver_1", True)
    assert _canonical(cfg2, root2, tmp_path / "b").set_index("case").loc["liver_1", "modality"] == "MR"
    # a folder-wide config value is still checked against each case
    with pytest.raises(InputError, match="case liver_1 is CT by dataset.modality, but"):
        _canonical({**cfg, "modality": "CT"}, root, tmp_path / "c")
    with pytest.raises(ValueError, match=r"dataset.modality names unknown cases \['liver_9'\]"):
        adapters.case_modalities({**cfg, "modality": {"liver_9": "MR"}}, ["liver_0"])
