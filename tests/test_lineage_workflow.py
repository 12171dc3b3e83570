"""The ADNet lineage end to end on a tiny phantom experiment: 3D supervoxels as a rule,
supervoxel episodes, per-scan normalisation, the lineage's overlapping folds and
RPT-fixed's setting 2any, and the report's protocol key saying which folds it ran."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import run_workflow, tiny_config

pytestmark = pytest.mark.slow

TINY = tiny_config(experiment="lineage", methods=["adnet"], settings=["1", "2any"],
                   splits={"lineage": "adnet", "supp_idx": -1})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("lineage")
    result = run_workflow(wd, "--cores", "2", "all", config=TINY)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return wd


def test_supervoxels_are_made_and_superpixels_are_not(run):
    data = run / "results/data/phantom"
    assert not (data / "superpixels").exists()
    maps = sorted((data / "supervoxels").glob("*.nii.gz"))
    assert len(maps) == 4
    sv = sitk.GetArrayFromImage(sitk.ReadImage(str(maps[0])))
    image_path = data / "preprocessed" / maps[0].name.replace(".nii", "_image.nii")
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(image_path)))
    assert sv.shape == image.shape and sv.max() >= 2
    # ids 1..K without gaps inside the body, 0 outside
    assert set(np.unique(sv)) == set(range(int(sv.max()) + 1))


def test_the_lineage_folds_and_normalisation_are_recorded(run):
    import torch

    splits = json.loads((run / "results/lineage/splits.json").read_text(encoding="utf-8"))
    assert (splits["lineage"], splits["supp_idx"]) == ("adnet", -1)
    for setting in ("1", "2any"):
        state = torch.load(run / f"results/lineage/adnet/setting{setting}/seed1234/fold0/all/model.pt",
                           weights_only=True)
        assert state["meta"]["norm"] == {"scheme": "per_scan"}
        assert state["meta"]["architecture"] == "adnet"
    metrics = json.loads((run / "results/lineage/adnet/setting2any/seed1234/fold0/metrics.json").read_text())
    assert metrics["support"] == splits["folds"][0]["support"]


def test_the_reproduction_key_names_the_lineage_folds(run):
    text = (run / "results/lineage/report/reproduction_setting1_oracle.md").read_text(encoding="utf-8")
    assert "ADNet lineage: overlapping folds (3), support = the test fold's scan at index supp_idx=-1" in text
