"""Real datasets through the workflow: the DAG each paper preset implies, the early stop
for a missing hand-placed dataset, and a fake Zenodo record of CHAOS taken through
download -> unpack -> canonical -> preprocess by the real rules and code.
"""

import json
import time
from pathlib import Path

import fake_datasets
import pandas as pd
import pytest
import SimpleITK as sitk
from conftest import run_workflow
from fake_zenodo import FakeZenodo

REPO = Path(__file__).resolve().parents[1]
PRESETS = REPO / "workflow" / "presets"


def preset_dry_run(dry_run, tmp_path, name, *extra):
    return dry_run(tmp_path, "--replace-workflow-config", *extra, config=PRESETS / f"{name}.yaml")


# The hand-placed datasets of the presets, at their dataset.root (checked when the
# workflow is parsed, dry-runs included): tiny files with the release's names.
HAND_PLACED = {
    "abd-ct": lambda workdir: fake_datasets.synapse_folder(workdir / "resources" / "synapse_ct",
                                                           numbers=(*range(1, 11), *range(21, 41))),
    "card-mri": lambda workdir: fake_datasets.cmr_folder(workdir / "resources" / "cmr_bssfp", numbers=range(1, 36)),
}


# methods ssl_alpnet, panet, dspnet, iplsl + baselines untrained (a 0-step model) and
# mask_transfer (evaluated only): 5 models and 6 evaluated rows per fold and setting.
# Setting 2 trains one model per label group (2 groups on the abdominal datasets).
@pytest.mark.parametrize(
    ("preset", "n_cases", "downloads", "settings_models", "n_settings"),
    [
        ("abd-mri", 20, 1, 1 + 2, 2),  # CHAOS_Train_Sets.zip; settings 1 and 2
        ("abd-ct", 30, 0, 1 + 2, 2),  # Synapse: placed by hand, nothing downloaded
        ("card-mri", 35, 0, 1, 1),  # MS-CMRSeg: setting 1 only
        ("abdomenct1k", 50, 1, 1 + 2, 2),  # Subtask1.zip; the first 50 cases
    ],
)
def test_preset_dag_from_download_to_report(tmp_path, preset, n_cases, downloads, settings_models, n_settings, dry_run):
    if preset in HAND_PLACED:
        HAND_PLACED[preset](tmp_path)
    counts = preset_dry_run(dry_run, tmp_path, preset)
    assert counts.get("download", 0) == downloads
    assert counts.get("unpack", 0) == downloads
    assert counts["fetch_weights"] == 1  # the COCO DeepLabV3 weights of model.pretrained
    assert counts["canonical"] == n_cases and counts["case_table"] == 1  # one conversion job per case
    assert counts["preprocess"] == counts["superpixels"] == n_cases
    assert counts["train"] == 5 * 5 * settings_models
    assert counts["evaluate"] == 6 * 5 * n_settings
    assert counts["report"] == 1 and "generate_phantom" not in counts


def test_abdomenct1k_full_release_downloads_every_part(tmp_path, dry_run):
    counts = preset_dry_run(dry_run, tmp_path, "abdomenct1k", "--config",
                            "dataset={name: abdomenct1k, form: full, cases: 20}")
    assert counts["download"] == counts["unpack"] == 4  # three image parts and Mask.7z
    # which of the 20 have a mask is known once Mask.7z is unpacked: the inventory
    # checkpoint decides, and the per-case jobs join the plan after it has run
    assert counts["inventory"] == 1 and "preprocess" not in counts
    assert counts["train"] == 5 * 5 * 3 and counts["report"] == 1


def test_archive_placed_by_hand_is_not_downloaded(tmp_path, dry_run):
    # the offline way (docs/data.md): the archive at the download rule's output path
    archive = tmp_path / "resources" / "chaos_mr" / "downloads" / "CHAOS_Train_Sets.zip"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"PK")
    counts = preset_dry_run(dry_run, tmp_path, "abd-mri")
    assert "download" not in counts and counts["unpack"] == 1


@pytest.mark.parametrize("mode", [["--dry-run"], []], ids=["dry-run", "run"])
def test_missing_hand_placed_dataset_stops_before_any_job(tmp_path, mode):
    root = tmp_path / "empty"
    root.mkdir()
    args = ["--cores", "2", "--replace-workflow-config", "--config", f"dataset={{name: synapse_ct, root: {root}}}"]
    start = time.perf_counter()
    result = run_workflow(tmp_path, *mode, *args, config=PRESETS / "abd-ct.yaml")
    seconds = time.perf_counter() - start
    out = result.stdout + result.stderr
    assert result.returncode != 0
    # one paragraph: how many of the expected files are where, the page, where to read how
    (line,) = [line for line in out.splitlines() if line.startswith("dataset 'synapse_ct'")]
    assert line.startswith(f"dataset 'synapse_ct': 0 of 60 expected files under {root}. ")
    assert "https://www.synapse.org/" in line and 'README.md, section "Running the paper experiments"' in line
    assert 'docs/datasets.md, section "Synapse / BTCV (Abd-CT)"' in line
    assert "Job stats" not in out and "rule " not in out  # stopped before any job was planned
    assert not (tmp_path / "resources" / "weights").exists() and not (tmp_path / "results" / "data").exists()
    assert seconds < 60
    if mode:  # commands that do not read the data still work without it
        lint = run_workflow(tmp_path, "--lint", *args, config=PRESETS / "abd-ct.yaml")
        assert lint.returncode == 0, lint.stdout + lint.stderr


def run_against(server, tmp_path, config: dict, *targets):
    """The real workflow in ``tmp_path`` with ``config``, its Zenodo requests going to
    the fake ``server``; returns the finished process."""
    return run_workflow(tmp_path, "--cores", "2", *targets, config=config, timeout=300,
                        env={"FSMIS_ZENODO_API": server.api_base, "FSMIS_TRACKING": "off"})


@pytest.mark.slow
def test_chaos_from_a_fake_zenodo_record_to_preprocessed_volumes(tmp_path):
    source = fake_datasets.chaos(patients=(1, 2, 3), n_slices=4)
    # 3 cases in 3 folds: the smallest dataset whose folds keep a training case each
    config = {
        "experiment": "chaos-fake", "dataset": {"name": "chaos_mr", "cases": [1, 2, 3]}, "n_folds": 3,
        "preprocess": {"image_size": 32},
    }
    targets = [f"results/data/chaos_mr/preprocessed/chaos_{n}_{kind}.nii.gz" for n in (1, 2)
               for kind in ("image", "label")] + ["results/data/chaos_mr/cases.tsv"]
    with FakeZenodo(source.records) as server:
        first = run_against(server, tmp_path, config, *targets)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-6000:]
        assert server.count("CHAOS_Train_Sets.zip") == 1
        again = run_against(server, tmp_path, config, *targets)
        assert again.returncode == 0 and server.count("CHAOS_Train_Sets.zip") == 1  # nothing downloaded again
    archive = tmp_path / "resources" / "chaos_mr" / "downloads" / "CHAOS_Train_Sets.zip"
    assert archive.read_bytes() == source.records["3431873"]["CHAOS_Train_Sets.zip"]  # kept, verified
    for n in (1, 2):
        image = sitk.ReadImage(str(tmp_path / f"results/data/chaos_mr/preprocessed/chaos_{n}_image.nii.gz"))
        label = sitk.ReadImage(str(tmp_path / f"results/data/chaos_mr/preprocessed/chaos_{n}_label.nii.gz"))
        # MRI preprocessing: 1.25 x 1.25 mm in-plane, 7.7 mm slices, centre crop/pad to image_size
        assert image.GetSpacing() == pytest.approx((1.25, 1.25, 7.7))
        assert image.GetSize()[:2] == (32, 32)
        assert image.GetSize() == label.GetSize()
        values = set(sitk.GetArrayViewFromImage(label).ravel().tolist())
        assert values <= {0, 1, 2, 3, 4} and len(values) > 1  # canonical ids, organs kept
    cases = pd.read_csv(tmp_path / "results/data/chaos_mr/cases.tsv", sep="\t")
    assert cases["case"].tolist() == ["chaos_1", "chaos_2", "chaos_3"]
    # the table names the raw DICOM series and PNG masks, which exist; not the deleted work copies
    for path in [*cases["source_image"], *cases["source_label"]]:
        assert (tmp_path / path).is_dir() and ".work-" not in path, path


@pytest.mark.slow
def test_abdomenct1k_full_release_skips_maskless_cases_with_a_message(tmp_path):
    source = fake_datasets.abdomenct1k_full(numbers=(1, 2, 3, 401, 801), maskless=(2,))
    config = {
        "experiment": "ct1k-fake", "dataset": {"name": "abdomenct1k", "form": "full", "cases": [1, 2, 3, 401, 801]},
        "n_folds": 2, "folds": [0, 1], "preprocess": {"image_size": 32},
    }
    targets = ["results/ct1k-fake/splits.json", "results/data/abdomenct1k_full/classmap.json"]
    with FakeZenodo(source.records) as server:
        result = run_against(server, tmp_path, config, *targets)
        again = run_against(server, tmp_path, config, *targets)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    # the maskless case is named at the end of the run, and in the inventory with its reason
    assert "1 of 5 requested case(s) were skipped (no mask): case_00002" in out
    inventory = (tmp_path / "results/data/abdomenct1k_full/inventory.tsv").read_text(encoding="utf-8").splitlines()
    assert inventory[0].split("\t") == ["case", "usable", "reason"]
    rows = {line.split("\t")[0]: line.split("\t")[1:] for line in inventory[1:]}
    assert rows["case_00002"][0] == "0" and "no mask" in rows["case_00002"][1]
    assert [rows[c][0] for c in ("case_00001", "case_00003", "case_00401", "case_00801")] == ["1"] * 4
    # everything after it is built from the four usable cases only
    cases = [line.split("\t")[0] for line in
             (tmp_path / "results/data/abdomenct1k_full/cases.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    assert cases == ["case_00001", "case_00003", "case_00401", "case_00801"]
    assert not list((tmp_path / "results/data/abdomenct1k_full").rglob("case_00002*"))
    classmap = (tmp_path / "results/data/abdomenct1k_full/classmap.json").read_text(encoding="utf-8")
    assert "case_00002" not in classmap and "case_00801" in classmap
    splits = json.loads((tmp_path / "results/ct1k-fake/splits.json").read_text(encoding="utf-8"))
    assert "case_00002" not in json.dumps(splits)
    assert sorted(c for fold in splits["folds"] for c in fold["test"]) == cases
