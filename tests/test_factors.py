"""Support choice and training seed as measured factors, through the real workflow.

A tiny phantom experiment (6 cases in 3 folds, fold 0, PANet for a few steps) is run
with two seeds; then with three support choices, which reruns the evaluations only;
then one seed's model is forced, which reruns that seed's jobs only.
"""

import math
import statistics

import pandas as pd
import pytest
import yaml
from conftest import job_counts, run_workflow, tiny_config

pytestmark = pytest.mark.slow

CLASSES = ["left_kidney", "right_kidney", "spleen", "liver"]
BASE = tiny_config(dataset={"name": "phantom", "n_cases": 6}, methods=["panet"], seeds=[0, 1],
                   evaluate={"protocols": ["oracle"]})


def workflow(workdir, config, *args):
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    result = run_workflow(workdir, "--cores", "2", *args, config=workdir / "tiny.yaml")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    return output


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    wd = tmp_path_factory.mktemp("factors")
    first = workflow(wd, BASE)
    second = workflow(wd, {**BASE, "evaluate": {"protocols": ["oracle"], "supports": 3}})
    return wd, first, second


def _fold(wd, seed):
    return wd / f"results/tiny/panet/setting1/seed{seed}/fold0"


def test_each_seed_trains_its_own_model(runs):
    wd, first, _ = runs
    counts = job_counts(first)
    assert counts["train"] == 2 and counts["evaluate"] == 2
    models = [(_fold(wd, s) / "all" / "model.pt").read_bytes() for s in (0, 1)]
    assert models[0] != models[1]  # another seed, other weights


def test_more_support_choices_rerun_evaluation_only(runs):
    wd, _, second = runs
    counts = job_counts(second)
    assert "train" not in counts
    assert counts["evaluate"] == 2 and counts["report"] == 1
    table = pd.read_csv(_fold(wd, 0) / "per_case.tsv", sep="\t")
    # fold 0 tests phantom_000/001; its support is phantom_002, then the next non-test scans
    per_key = table.groupby(["case", "class"])["support"].apply(list)
    assert all(v == ["phantom_002", "phantom_003", "phantom_004"] for v in per_key)
    assert sorted(table["support_choice"].unique()) == [0, 1, 2]
    assert len(per_key) == 2 * len(CLASSES)


def _fold_value(table, choice):
    """By hand: the fold's mean Dice (per class the mean over scans, then over classes)."""
    part = table[table["support_choice"] == choice]
    per_class = []
    for name in CLASSES:
        vals = [v for v in part[part["class"] == name]["dice"] if not math.isnan(v)]
        if vals:
            per_class.append(statistics.mean(vals))
    return statistics.mean(per_class)


def test_report_spread_over_supports_and_seeds_matches_a_hand_computation(runs):
    wd, _, _ = runs
    tables = {s: pd.read_csv(_fold(wd, s) / "per_case.tsv", sep="\t") for s in (0, 1)}
    spread = pd.read_csv(wd / "results/tiny/report/spread_setting1_oracle.csv").set_index(["method", "class"])
    row = spread.loc[("panet", "mean")]
    # one fold: the experiment value of a choice is the fold's value, averaged over the two seeds
    per_choice = [statistics.mean(_fold_value(tables[s], k) for s in (0, 1)) for k in range(3)]
    assert row["n_supports"] == 3  # (abs=1e-3: the CSV keeps 6 significant digits)
    assert row["support_std"] == pytest.approx(100 * statistics.stdev(per_choice), abs=1e-3)
    assert row["support_min"] == pytest.approx(100 * min(per_choice), abs=1e-3)
    per_seed = [100 * _fold_value(tables[s], 0) for s in (0, 1)]
    half = 12.706204736174707 * statistics.stdev(per_seed) / math.sqrt(2)  # t(0.975, 1)
    assert row["n_seeds"] == 2
    assert row["seed_ci_high"] == pytest.approx(statistics.mean(per_seed) + half, abs=1e-3)
    assert row["value"] == pytest.approx(statistics.mean(per_seed), abs=1e-3)
    text = (wd / "results/tiny/report/spread_setting1_oracle.md").read_text(encoding="utf-8")
    assert "(n=3)" in text and "(n=2)" in text
    # the Dice table reports support choice 0, averaged over the seeds
    dice = pd.read_csv(wd / "results/tiny/report/dice_setting1_oracle.csv").set_index("method")
    assert dice.loc["panet", "mean_mean"] == pytest.approx(row["value"], abs=1e-3)


def test_forcing_one_seeds_model_reruns_only_that_seed(runs):
    wd, _, _ = runs
    config = {**BASE, "evaluate": {"protocols": ["oracle"], "supports": 3}}
    target = "results/tiny/panet/setting1/seed1/fold0/all/model.pt"
    output = workflow(wd, config, "--dry-run", "--forcerun", target)
    assert job_counts(output) == {"train": 1, "evaluate": 1, "report": 1, "all": 1}
    outputs = [line for line in output.splitlines() if line.strip().startswith("output:")]
    # the jobs that run write seed 1's files (and the report's), never seed 0's
    assert any("seed1/fold0" in line for line in outputs)
    assert not any("seed0/fold0" in line for line in outputs)


def _list_param_changes(wd, config):
    (wd / "tiny.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    result = run_workflow(wd, "--list-changes", "params", config=wd / "tiny.yaml")
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return sorted(line for line in result.stdout.splitlines() if line.startswith("results/"))


def test_list_changes_params_names_exactly_what_a_config_change_reruns(runs):
    wd, _, _ = runs
    config = {**BASE, "evaluate": {"protocols": ["oracle"], "supports": 3}}
    assert _list_param_changes(wd, config) == []  # nothing changed: nothing listed
    # more training steps: the two models (and their logs), nothing else
    changed = _list_param_changes(wd, {**config, "train": {**BASE["train"], "steps": 7}})
    assert changed == [f"results/tiny/panet/setting1/seed{s}/fold0/all/{name}" for s in (0, 1)
                       for name in ("model.pt", "train_log.tsv")]
    _list_param_changes(wd, config)  # leave the config as the other tests expect it
