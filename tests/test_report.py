"""fsmis.report: tables checked against hand-computed numbers, figures written as real files."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from fsmis import report
from fsmis.errors import InputError
from fsmis.io import write_json

CLASSES = ["spleen", "liver"]  # deliberately not alphabetical
ORDER = ["panet", "dspnet"]  # `untrained` is left out: it must come last
SQ2 = math.sqrt(2.0)

# method -> fold -> {class: Dice fraction}
DICE = {
    "dspnet": {0: {"liver": 0.80, "spleen": 0.60}, 1: {"liver": 0.70, "spleen": 0.50}},
    "panet": {0: {"liver": 0.90, "spleen": 0.40}, 1: {"liver": 0.86, "spleen": 0.50}},
    "untrained": {0: {"liver": 0.10, "spleen": 0.20}},
}


def _metrics(tmp_path, dice=DICE, setting="1", protocol="oracle"):
    paths = []
    for method, folds in dice.items():
        for fold, values in folds.items():
            path = tmp_path / "exp" / method / f"setting{setting}" / f"fold{fold}" / "metrics.json"
            mean = float(np.nanmean([np.nan if v is None else v for v in values.values()]))
            write_json(
                {
                    "method": method,
                    "setting": setting,
                    "fold": fold,
                    "dataset": "phantom",
                    "support": "phantom_000",
                    "protocols": {protocol: {"dice": values, "mean_dice": mean, "n_cases": 2}},
                },
                path,
            )
            paths.append(path)
    return paths


def test_collect_long_table(tmp_path):
    paths = _metrics(tmp_path)
    long_df = report.collect(paths)
    assert list(long_df.columns) == report.LONG_COLUMNS
    assert len(long_df) == 5 * 2  # 5 files x 2 classes
    row = long_df[(long_df["method"] == "panet") & (long_df["fold"] == 1) & (long_df["class"] == "liver")]
    assert row["dice"].item() == 0.86 and row["protocol"].item() == "oracle" and row["setting"].item() == "1"
    assert row["source"].item().endswith("panet/setting1/fold1/metrics.json")


def test_dice_table_against_hand_computation(tmp_path):
    table = report.dice_table(report.collect(_metrics(tmp_path)), CLASSES, ORDER)
    assert list(table.index) == ["panet", "dspnet", "untrained"]
    assert list(dict.fromkeys(table.columns.get_level_values(0))) == ["spleen", "liver", "mean", "n_folds"]

    # dspnet: liver 80/70, spleen 60/50 -> fold means 70/60
    d = table.loc["dspnet"]
    assert d[("liver", "mean")] == pytest.approx(75.0) and d[("liver", "std")] == pytest.approx(10 / SQ2)
    assert d[("spleen", "mean")] == pytest.approx(55.0) and d[("spleen", "std")] == pytest.approx(10 / SQ2)
    assert d[("mean", "mean")] == pytest.approx(65.0) and d[("mean", "std")] == pytest.approx(10 / SQ2)
    # panet: liver 90/86, spleen 40/50 -> fold means 65/68
    p = table.loc["panet"]
    assert p[("liver", "mean")] == pytest.approx(88.0) and p[("liver", "std")] == pytest.approx(4 / SQ2)
    assert p[("spleen", "mean")] == pytest.approx(45.0) and p[("spleen", "std")] == pytest.approx(10 / SQ2)
    assert p[("mean", "mean")] == pytest.approx(66.5) and p[("mean", "std")] == pytest.approx(3 / SQ2)
    assert list(table[("n_folds", "")]) == [2, 2, 1]
    # one fold: no spread
    assert table.loc["untrained", ("mean", "mean")] == pytest.approx(15.0)
    assert math.isnan(table.loc["untrained", ("mean", "std")])

    view = report.formatted(table)
    assert list(view.columns) == ["spleen", "liver", "mean"]
    assert view.loc["panet", "liver"] == "88.0 ± 2.8"
    assert view.loc["panet", "mean"] == "66.5 ± 2.1"
    assert view.loc["untrained", "spleen"] == "20.0"


def test_mean_column_skips_a_class_missing_in_a_fold(tmp_path):
    dice = {"panet": {0: {"liver": 0.9, "spleen": None}, 1: {"liver": 0.7, "spleen": 0.5}}}
    table = report.dice_table(report.collect(_metrics(tmp_path, dice)), CLASSES)
    # fold means: 90 (spleen undefined) and 60
    assert table.loc["panet", ("mean", "mean")] == pytest.approx(75.0)
    assert table.loc["panet", ("spleen", "mean")] == pytest.approx(50.0)


def test_write_tables_csv_and_markdown(tmp_path):
    table = report.dice_table(report.collect(_metrics(tmp_path)), CLASSES, ORDER)
    csv_path, md_path = report.write_tables(table, tmp_path / "out", "dice_setting1_oracle")
    csv = pd.read_csv(csv_path, index_col="method")
    assert list(csv.columns) == [
        "spleen_mean", "spleen_std", "liver_mean", "liver_std", "mean_mean", "mean_std", "n_folds"
    ]
    assert csv.loc["dspnet", "mean_mean"] == pytest.approx(65.0)
    assert csv.loc["panet", "liver_std"] == pytest.approx(4 / SQ2, abs=1e-4)

    lines = open(md_path).read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    assert lines[start] == "| method | spleen | liver | mean |"
    assert lines[start + 1] == "| --- | ---: | ---: | ---: |"
    assert [line.split("|")[1].strip() for line in lines[start + 2 :]] == ["panet", "dspnet", "untrained"]
    assert lines[start + 2] == "| panet | 45.0 ± 7.1 | 88.0 ± 2.8 | 66.5 ± 2.1 |"
    assert "Dice (%)" in lines[0]


@pytest.mark.parametrize(
    "content, problem",
    [
        ("{not json", "invalid JSON"),
        (json.dumps({"method": "panet", "setting": "1", "fold": 0}), "missing key(s) protocols"),
        (json.dumps({"method": "panet", "setting": "1", "fold": "a", "protocols": {}}), "fold must be an integer"),
        (json.dumps({"method": "p", "setting": "1", "fold": 0, "protocols": {"oracle": {"dice": {"liver": 78.4}}}}),
         "not a Dice fraction"),
        (json.dumps({"method": "p", "setting": "1", "fold": 0, "protocols": {"oracle": {"mean_dice": 0.5}}}),
         "protocols.oracle.dice"),
    ],
)
def test_malformed_metrics_raise_input_error_naming_the_file(tmp_path, content, problem):
    good = _metrics(tmp_path)
    bad = tmp_path / "broken" / "metrics.json"
    bad.parent.mkdir()
    bad.write_text(content)
    with pytest.raises(InputError) as err:
        report.collect([*good, bad])
    assert str(bad) in str(err.value) and problem in str(err.value)


def test_two_files_for_one_fold_are_refused(tmp_path):
    paths = _metrics(tmp_path)
    copy = tmp_path / "copy.json"
    copy.write_text(paths[0].read_text())
    with pytest.raises(InputError, match="already given by"):
        report.collect([*paths, copy])


def _is_png(path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(8) == b"\x89PNG\r\n\x1a\n"


def _panels():
    yy, xx = np.mgrid[:32, :32]
    image = np.sin(xx / 4.0) + yy / 32.0
    panels = []
    for name, centre in (("liver", 10), ("spleen", 20)):
        truth = (yy - centre) ** 2 + (xx - 16) ** 2 < 36
        panels.append(
            {
                "class": name,
                "image": image,
                "ground_truth": truth,
                "predictions": {"panet": np.roll(truth, 2, axis=1), "dspnet": truth.copy()},
                "support_image": image.T,
                "support_mask": truth.T,
            }
        )
    return panels


def test_build_report_writes_tables_and_figures(tmp_path):
    paths = _metrics(tmp_path) + _metrics(tmp_path, setting="2", protocol="full")
    logs = {
        f"panet fold{f}": pd.DataFrame({"step": np.arange(0, 100, 10), "loss": np.linspace(2, 0.5, 10) + f})
        for f in (0, 1)
    }
    out = tmp_path / "report"
    written = report.build_report(paths, out, CLASSES, ORDER, qualitative_panels=_panels(), train_logs=logs)
    names = sorted(p.rsplit("/", 1)[1] for p in written)
    expected = ["dice_per_fold.csv", "qualitative.pdf", "qualitative.png", "training_curves.pdf", "training_curves.png"]
    for stem in ("setting1_oracle", "setting2_full"):
        expected += [f"dice_{stem}.csv", f"dice_{stem}.md", f"dice_bars_{stem}.pdf", f"dice_bars_{stem}.png"]
    assert names == sorted(expected)
    for path in written:
        assert (out / path.rsplit("/", 1)[1]).stat().st_size > 0
        if path.endswith(".png"):
            assert _is_png(path) and (out / path.rsplit("/", 1)[1]).stat().st_size > 5000
        if path.endswith(".pdf"):
            assert open(path, "rb").read(5) == b"%PDF-"
    assert not [p for p in out.iterdir() if ".tmp" in p.name]  # nothing half-written left
    long_df = pd.read_csv(out / "dice_per_fold.csv")
    assert len(long_df) == 20 and set(long_df["protocol"]) == {"oracle", "full"}


def test_figures_without_report(tmp_path):
    long_df = report.collect(_metrics(tmp_path))
    png, pdf = report.bar_figure(long_df, CLASSES, ORDER, tmp_path / "bars")
    assert png.endswith("bars.png") and pdf.endswith("bars.pdf") and _is_png(png)
    logs = {"a": pd.DataFrame({"step": [0, 1, 2, 3], "loss": [1.0, 0.8, 0.9, 0.5]})}
    png, _ = report.curve_figure(logs, tmp_path / "curves.png", smoothing=0.6, log_scale=True)
    assert _is_png(png)
    with pytest.raises(ValueError, match="lacks column"):
        report.curve_figure({"b": pd.DataFrame({"step": [0]})}, tmp_path / "x.png")
    bad = _panels()
    bad[0]["predictions"]["panet"] = np.zeros((3, 3), bool)
    with pytest.raises(ValueError, match="shape"):
        report.qualitative_figure(bad, tmp_path / "q.png")


def test_slice_dice_and_smoothing():
    a = np.zeros((4, 4), bool)
    b = a.copy()
    a[:2] = True  # 8 pixels
    b[1:3] = True  # 8 pixels, 4 shared
    assert report.slice_dice(a, b) == pytest.approx(0.5)
    assert math.isnan(report.slice_dice(np.zeros((2, 2)), np.zeros((2, 2))))
    assert report._smooth(np.array([2.0, 2.0, 2.0]), 0.9) == pytest.approx([2.0, 2.0, 2.0])
