"""python -m fsmis.compare against a temporary MLflow store filled by fsmis.tracking."""

from __future__ import annotations

import io
import time

import pandas as pd
import pytest

from fsmis import compare, tracking


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Evaluate runs as the workflow logs them (tags = wildcards, params.protocol)."""
    mp = pytest.MonkeyPatch()
    # jobs log directly (no spool folder, no parent), strictly, into this store only
    for name in ("FSMIS_MLFLOW_SPOOL", "FSMIS_MLFLOW_PARENT_RUN_ID", "FSMIS_TRACKING", "MLFLOW_TRACKING_URI"):
        mp.delenv(name, raising=False)
    mp.setenv("FSMIS_TRACKING_STRICT", "1")
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    uri = f"sqlite:///{db}"

    def evaluate_run(method, setting, fold, metrics, protocol="oracle", fail=False):
        tags = {"rule": "evaluate", "wildcards": {"exp": "exp", "method": method, "setting": setting,
                                                  "fold": str(fold)}}
        params = {"method": method, "setting": setting, "fold": fold, "protocol": protocol}
        try:
            with tracking.job_run("evaluate", "exp", params=params, tags=tags, uri=uri) as run:
                run.log_metrics(metrics)
                if fail:
                    raise RuntimeError("job failed")
        except RuntimeError:
            pass
        time.sleep(0.01)  # distinct start times: "newest" is well defined

    tracking.init_store("exp", uri=uri)
    for fold, value in enumerate([0.60, 0.70, 0.65]):
        evaluate_run("ssl_alpnet", "1", fold, {"mean_dice": value, "dice_liver": value + 0.1})
    evaluate_run("panet", "1", 0, {"mean_dice": 0.10})  # replaced by the rerun below
    evaluate_run("panet", "1", 0, {"mean_dice": 0.40, "full/mean_dice": 0.30})
    evaluate_run("panet", "1", 1, {"mean_dice": 0.50, "full/mean_dice": 0.20})
    evaluate_run("panet", "1", 1, {"mean_dice": 0.99}, fail=True)  # failed: ignored
    evaluate_run("panet", "2", 0, {"mean_dice": 0.33, "eval_seconds": 12.5})
    with tracking.job_run("train", "exp", tags={"rule": "train", "wildcards": {"method": "panet", "setting": "1",
                                                                                 "fold": "2"}}, uri=uri) as run:
        run.log_metrics({"mean_dice": 0.01})  # not an evaluate run
    yield db
    mp.undo()


def test_cli_prints_folds_mean_and_std(store, capsys):
    """Dice is logged as a fraction and printed in percent, the unit in the header line."""
    assert compare.main(["--experiment", "exp", "--store", str(store), "--setting", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("mean_dice as Dice (%), oracle protocol, setting 1; experiment exp")
    assert lines[1].split() == ["fold0", "fold1", "fold2", "mean", "std", "n"]
    assert lines[3].split() == ["panet", "40.00", "50.00", "45.00", "7.07", "2"]
    assert lines[4].split() == ["ssl_alpnet", "60.00", "70.00", "65.00", "65.00", "5.00", "3"]


def test_protocol_prefixed_metric_and_markdown(store, capsys):
    args = ["--experiment", "exp", "--store", str(store), "--protocol", "full", "--format", "markdown"]
    assert compare.main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "| method | fold0 (%) | fold1 (%) | mean (%) | std (%) | n |"
    # only panet logged full/...; its bare mean_dice belongs to the oracle protocol
    assert out[2:] == ["| panet | 30.00 | 20.00 | 25.00 | 7.07 | 2 |"]


def test_all_settings_and_other_metric(store, capsys):
    assert compare.main(["--experiment", "exp", "--store", str(store), "--metric", "dice_liver",
                         "--format", "csv"]) == 0
    out = capsys.readouterr().out
    # numbers in percent, the unit in the value columns' names: no comment line to skip
    assert out.splitlines() == ["method,fold0 (%),fold1 (%),fold2 (%),mean (%),std (%),n",
                                "ssl_alpnet,70.00,80.00,75.00,75.00,5.00,3"]
    read = pd.read_csv(io.StringIO(out), index_col="method")
    assert read.loc["ssl_alpnet", "mean (%)"] == pytest.approx(75.0) and read["n"].dtype.kind == "i"
    table = compare.compare_table(tracking.search("exp", "tags.stage = 'evaluate'", uri=compare.store_uri(str(store))))
    assert list(table.index.names) == ["method", "setting"]  # several settings: one line each
    assert table.loc[("panet", "2"), "fold0"] == pytest.approx(33.0) and table.attrs["unit"] == "%"


def test_other_metrics_keep_their_unit(store, capsys):
    """eval_seconds is no Dice: printed as logged, 4 decimals, no percent label anywhere."""
    args = ["--experiment", "exp", "--store", str(store), "--metric", "eval_seconds", "--setting", "2"]
    assert compare.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("eval_seconds, oracle protocol, setting 2; experiment exp")
    assert "%" not in "".join(lines)
    assert lines[3].split() == ["panet", "12.5000", "12.5000", "1"]  # one fold: no std
    assert compare.main([*args, "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["method,fold0,mean,std,n", "panet,12.5000,12.5000,,1"]
    assert [m for m in ("mean_dice", "dice_liver", "mean_dice_support1", "eval_seconds", "iou_liver")
            if compare.is_dice(m)] == ["mean_dice", "dice_liver", "mean_dice_support1"]


def test_missing_store_or_runs(tmp_path, store, capsys):
    assert compare.main(["--experiment", "exp", "--store", str(tmp_path / "none.db")]) == 2
    assert "no MLflow store" in capsys.readouterr().err
    assert compare.main(["--experiment", "nope", "--store", str(store)]) == 1
    assert "no finished evaluate run" in capsys.readouterr().err


def test_metric_name_rules():
    run = pd.Series({"metrics.mean_dice": 0.5, "metrics.full_mean_dice": 0.2, "params.protocol": "oracle"})
    assert compare.metric_of(run, "mean_dice", "oracle") == 0.5
    assert compare.metric_of(run, "mean_dice", "full") == 0.2
    both = pd.Series({"metrics.mean_dice": 0.5, "params.protocol": '["oracle", "full"]'})
    assert compare.metric_of(both, "mean_dice", "oracle") == 0.5
    assert pd.isna(compare.metric_of(both, "mean_dice", "full"))
    assert compare.metric_of(pd.Series({"metrics.mean_dice": 0.7}), "mean_dice", "oracle") == 0.7
    assert compare.store_uri("results/x.db").startswith("sqlite:////")
    assert compare.store_uri("http://h:5000") == "http://h:5000"
