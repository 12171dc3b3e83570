"""A tiny end-to-end run of the real workflow in a temporary directory.

4 phantom cases at 64x64, 3 folds of which fold 0 runs, SSL-ALPNet for a few steps,
both baselines: every stage executes for real (generation, canonical checks,
preprocessing, superpixels, splits, training, evaluation, report, MLflow).
"""

import json
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import run_workflow, tiny_config

REPO = Path(__file__).resolve().parents[1]

TINY = tiny_config(settings=["1", "2"], baselines=["untrained", "mask_transfer"])

pytestmark = pytest.mark.slow


def workflow(workdir, *args):
    """The tiny experiment's workflow in ``workdir`` (tests/conftest.py)."""
    return run_workflow(workdir, "--cores", "2", *args, config=workdir / "tiny.yaml")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("e2e")
    (wd / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    first = workflow(wd)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-8000:]
    return wd, first


def test_report_and_metrics_exist(run):
    wd, _ = run
    report = wd / "results" / "tiny" / "report"
    table = pd.read_csv(report / "dice_setting1_oracle.csv")
    assert set(table["method"]) == {"ssl_alpnet", "untrained", "mask_transfer"}
    for name in ("dice_setting1_oracle.md", "dice_bars_setting1_oracle.png", "qualitative.png",
                 "training_curves.png"):
        assert (report / name).stat().st_size > 0, name
    fold = wd / "results/tiny/ssl_alpnet/setting1/seed1234/fold0"
    metrics = json.loads((fold / "metrics.json").read_text(encoding="utf-8"))
    oracle = metrics["protocols"]["oracle"]
    assert set(oracle["dice"]) == {"left_kidney", "right_kidney", "spleen", "liver"}
    assert 0.0 <= oracle["mean_dice"] <= 1.0
    full = metrics["protocols"]["full"]  # the same model without ground truth at inference
    assert set(full["dice"]) == set(oracle["dice"]) and 0.0 <= full["mean_dice"] <= 1.0
    preds = sorted(p.name for p in (fold / "predictions").glob("*.nii.gz"))
    # 4 cases in 3 folds: blocks of 2, 1, 1 cases; one prediction per case and protocol
    assert preds == ["phantom_000.nii.gz", "phantom_000_full.nii.gz", "phantom_001.nii.gz", "phantom_001_full.nii.gz"]


def test_setting_2_trains_a_model_per_label_group_and_evaluates_with_it(run):
    wd, _ = run
    fold = wd / "results/tiny/ssl_alpnet/setting2/seed1234/fold0"
    assert sorted(p.name for p in fold.iterdir() if (p / "model.pt").exists()) == [
        "left_kidney+right_kidney", "liver+spleen"]
    metrics = json.loads((fold / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["groups"] == {"left_kidney+right_kidney": ["left_kidney", "right_kidney"],
                                 "liver+spleen": ["liver", "spleen"]}
    assert set(metrics["protocols"]["oracle"]["dice"]) == {"left_kidney", "right_kidney", "spleen", "liver"}
    per_case = pd.read_csv(fold / "per_case.tsv", sep="\t")
    assert set(zip(per_case["class"], per_case["group"])) == {
        ("left_kidney", "left_kidney+right_kidney"), ("right_kidney", "left_kidney+right_kidney"),
        ("liver", "liver+spleen"), ("spleen", "liver+spleen")}
    # the kidney model never saw a slice with a kidney: its training log says how many went
    log_file = wd / "logs/train/tiny/ssl_alpnet/setting2/seed1234/fold0/left_kidney+right_kidney.log"
    log_text = log_file.read_text(encoding="utf-8")
    assert "excluded" in log_text
    assert (wd / "results/tiny/report/paper_setting2_oracle.md").exists()


def test_mlflow_store_holds_a_parent_and_a_child_per_job(run):
    wd, _ = run
    db = wd / "results" / "mlflow" / "mlflow.db"
    con = sqlite3.connect(db)
    tags = con.execute("select run_uuid, key, value from tags").fetchall()
    stages = {v for _, k, v in tags if k == "stage"}
    assert {"fetch", "canonical", "preprocess", "superpixels", "splits", "train", "evaluate", "report"} <= stages
    parents = {v for _, k, v in tags if k == "mlflow.parentRunId"}
    assert len(parents) == 1
    children = {r for r, k, _ in tags if k == "mlflow.parentRunId"}
    # 1 fetch + 4 canonical (one per case) + 4 preprocess + 1 classmap + 4 superpixels + 1 splits
    # + 6 train (ssl_alpnet and untrained: setting 1 one model, setting 2 one per label
    # group) + 6 evaluate (3 rows x 2 settings) + 1 report
    assert len(children) == 28
    keys = {k for (k,) in con.execute("select distinct key from metrics")}
    assert {"loss", "oracle/mean_dice", "oracle/dice_liver", "full/mean_dice"} <= keys
    status = dict(con.execute("select run_uuid, status from runs").fetchall())
    assert status[next(iter(parents))] == "FINISHED"
    assert set(status.values()) == {"FINISHED"}
    # jobs recorded their runs in the spool; the end of the invocation stored them all
    assert not list((wd / "results" / "mlflow" / "spool").glob("*.jsonl"))


def test_second_invocation_runs_nothing(run):
    wd, _ = run
    again = workflow(wd)
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr


def _corrupt(path):
    path.write_bytes(b"\x1f\x8b garbage")


def _shift_spacing(path):
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    img.SetSpacing(tuple(s * 1.5 for s in img.GetSpacing()))
    sitk.WriteImage(img, str(path))


def _unknown_label(path):
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(img)
    arr[0, :2, :2] = 9
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, str(path))


@pytest.mark.parametrize("damage,name,message", [
    (_corrupt, "phantom_002_image.nii.gz", "not a readable image"),
    (_shift_spacing, "phantom_001_label.nii.gz", "geometry differs from its image"),
    (_unknown_label, "phantom_003_label.nii.gz", "unknown label values [9]"),
])
def test_bad_raw_input_stops_with_the_file_and_problem_named(run, damage, name, message):
    wd, _ = run
    path = wd / "resources" / "phantom" / "raw" / name
    original = path.read_bytes()
    damage(path)
    try:
        result = workflow(wd, "results/data/phantom/cases.tsv", "--forcerun", "canonical", "--show-failed-logs")
    finally:
        path.write_bytes(original)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert name in out and message in out, out[-3000:]


def test_html_report_holds_the_tables_and_figures(run):
    wd, _ = run
    result = workflow(wd, "--report", "report.html")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    html = (wd / "report.html").read_text(encoding="utf-8", errors="replace")
    # the declared report items, by name: tables, spread, reproduction, figures
    for name in ("dice_setting1_oracle.csv", "hd95_setting1_oracle.csv", "spread_setting1_oracle.csv",
                 "reproduction_setting1_oracle.csv", "dice_bars_setting1_oracle.png", "training_curves.png"):
        assert name in html, name


def test_the_end_of_run_summary_says_where_the_report_is(run):
    _, first = run
    output = first.stdout + first.stderr
    assert "fsmis: experiment tiny finished in" in output
    assert "results/tiny/report/" in output and "| ssl_alpnet |" in output
    assert "snakemake --report report.html" in output and "mlflow ui --backend-store-uri" in output
