"""fsmis.report: tables checked against hand-computed numbers, figures written as real files."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fsmis import report
from fsmis.errors import InputError
from fsmis.io import write_json
from fsmis.report import figures, tables

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
    table = tables.dice_table(report.collect(_metrics(tmp_path)), CLASSES, ORDER)
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

    view = tables.formatted(table)
    assert list(view.columns) == ["spleen", "liver", "mean"]
    assert view.loc["panet", "liver"] == "88.0 ± 2.8"
    assert view.loc["panet", "mean"] == "66.5 ± 2.1"
    assert view.loc["untrained", "spleen"] == "20.0"


def test_mean_column_skips_a_class_missing_in_a_fold(tmp_path):
    dice = {"panet": {0: {"liver": 0.9, "spleen": None}, 1: {"liver": 0.7, "spleen": 0.5}}}
    table = tables.dice_table(report.collect(_metrics(tmp_path, dice)), CLASSES)
    # fold means: 90 (spleen undefined) and 60
    assert table.loc["panet", ("mean", "mean")] == pytest.approx(75.0)
    assert table.loc["panet", ("spleen", "mean")] == pytest.approx(50.0)


def test_write_tables_csv_and_markdown(tmp_path):
    table = tables.dice_table(report.collect(_metrics(tmp_path)), CLASSES, ORDER)
    csv_path, md_path = tables.write_tables(table, tmp_path / "out", "dice_setting1_oracle")
    csv = pd.read_csv(csv_path, index_col="method")
    assert list(csv.columns) == [
        "spleen_mean", "spleen_std", "liver_mean", "liver_std", "mean_mean", "mean_std", "n_folds"
    ]
    assert csv.loc["dspnet", "mean_mean"] == pytest.approx(65.0)
    assert csv.loc["panet", "liver_std"] == pytest.approx(4 / SQ2, abs=1e-4)

    lines = open(md_path, encoding="utf-8").read().splitlines()
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
    copy.write_text(paths[0].read_text(encoding="utf-8"))
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


def _per_case(paths, dice=DICE, protocol="oracle"):
    """per_case.tsv beside each metrics.json: two scans whose mean is the fold's Dice."""
    for path in paths:
        method, fold = path.parts[-4], int(path.parts[-2][4:])
        values = dice[method][fold]
        rows = [{"protocol": protocol, "case": f"c{fold}{k}", "class": name, "dice": v + (0.05 if k else -0.05),
                 "flag": "ok"} for name, v in values.items() for k in (0, 1)]
        pd.DataFrame(rows).to_csv(path.with_name("per_case.tsv"), sep="\t", index=False)


def test_build_report_writes_tables_and_figures(tmp_path):
    paths = _metrics(tmp_path) + _metrics(tmp_path, setting="2", protocol="full")
    _per_case(paths[:5])
    logs = {
        f"panet fold{f}": pd.DataFrame({"step": np.arange(0, 100, 10), "loss": np.linspace(2, 0.5, 10) + f})
        for f in (0, 1)
    }
    out = tmp_path / "report"
    panels = {("1", "oracle"): _panels(), ("2", "full"): _panels()[:1]}
    written = report.build_report(paths, out, CLASSES, ORDER, qualitative_panels=panels, train_logs=logs,
                                  reference="dspnet", slices=[("1", "oracle"), ("2all", "oracle")])
    names = sorted(p.rsplit("/", 1)[1] for p in written)
    expected = ["dice_per_fold.csv", "dice_per_case.csv", "qualitative.pdf", "qualitative.png", "qualitative.svg",
                "training_curves.pdf", "training_curves.png", "training_curves.svg"]
    # configured slices first (2all has no results: files that say so), then the others found
    for stem in ("setting1_oracle", "setting2all_oracle", "setting2_full"):
        expected += [f"{figure}_{stem}.{ext}" for figure in ("dice_bars", "qualitative")
                     for ext in ("png", "pdf", "svg")]
        expected += [f"stats_{stem}.csv", f"stats_{stem}.md", f"spread_{stem}.csv", f"spread_{stem}.md"]
        expected += [f"{name}_{stem}.{ext}" for name in ("dice", "iou", "hd95", "nsd", "paper", "reproduction")
                     for ext in ("md", "csv", "tex")]
    assert names == sorted(expected)
    for path in written:
        assert (out / path.rsplit("/", 1)[1]).stat().st_size > 0
        if path.endswith(".png"):
            assert _is_png(path) and (out / path.rsplit("/", 1)[1]).stat().st_size > 5000
        if path.endswith(".pdf"):
            assert open(path, "rb").read(5) == b"%PDF-"
        if path.endswith(".svg"):
            assert ET.parse(path).getroot().tag == "{http://www.w3.org/2000/svg}svg"
    assert not [p for p in out.iterdir() if ".tmp" in p.name]  # nothing half-written left
    long_df = pd.read_csv(out / "dice_per_fold.csv")
    assert len(long_df) == 20 and set(long_df["protocol"]) == {"oracle", "full"}
    assert (out / "qualitative.png").read_bytes() == (out / "qualitative_setting1_oracle.png").read_bytes()
    assert "No results for setting 2all" in (out / "paper_setting2all_oracle.md").read_text(encoding="utf-8")

    # the statistics: per-case spread and the paired test against the reference
    stats = pd.read_csv(out / "stats_setting1_oracle.csv")
    panet_liver = stats[(stats["method"] == "panet") & (stats["class"] == "liver")].iloc[0]
    assert panet_liver["fold_mean"] == pytest.approx(88.0) and panet_liver["n_cases"] == 4
    assert panet_liver["case_std"] == pytest.approx(100 * np.std([0.85, 0.95, 0.81, 0.91], ddof=1))
    assert panet_liver["n_pairs"] == 4 and pd.isna(panet_liver["p_value"])  # 4 < 6 pairs: n/a
    assert "6 needed" in panet_liver["p_note"]
    # the paper table of the phantom: our numbers, a note instead of published ones
    paper = (out / "paper_setting1_oracle.md").read_text(encoding="utf-8")
    # HD95 and NSD, which no paper reports, beside (none here: these per-case rows predate them)
    assert "| method | spleen | liver | Mean | HD95 (mm, ours) | NSD (%, ours) | p vs dspnet |" in paper
    assert "| panet | 45.00 ± 7.07 | 88.00 ± 2.83 | 66.50 ± 2.12 | – | – | n/a |" in paper
    assert "No published numbers for dataset phantom" in paper
    tex = (out / "paper_setting1_oracle.tex").read_text(encoding="utf-8")
    assert "\\toprule" in tex and "Method & spleen & liver & Mean & HD95 (mm, ours) & NSD (\\%, ours) & $p$" in tex


def test_figures_without_report(tmp_path):
    long_df = report.collect(_metrics(tmp_path))
    png, pdf, svg = figures.bar_figure(long_df, CLASSES, ORDER, tmp_path / "bars")
    assert png.endswith("bars.png") and pdf.endswith("bars.pdf") and svg.endswith("bars.svg") and _is_png(png)
    logs = {"a": pd.DataFrame({"step": [0, 1, 2, 3], "loss": [1.0, 0.8, 0.9, 0.5]})}
    png, _, _ = figures.curve_figure(logs, tmp_path / "curves.png", smoothing=0.6, log_scale=True)
    assert _is_png(png)
    with pytest.raises(ValueError, match="lacks column"):
        figures.curve_figure({"b": pd.DataFrame({"step": [0]})}, tmp_path / "x.png")
    bad = _panels()
    bad[0]["predictions"]["panet"] = np.zeros((3, 3), bool)
    with pytest.raises(ValueError, match="shape"):
        figures.qualitative_figure(bad, tmp_path / "q.png")


def test_slice_dice_and_smoothing():
    a = np.zeros((4, 4), bool)
    b = a.copy()
    a[:2] = True  # 8 pixels
    b[1:3] = True  # 8 pixels, 4 shared
    assert figures.slice_dice(a, b) == pytest.approx(0.5)
    assert math.isnan(figures.slice_dice(np.zeros((2, 2)), np.zeros((2, 2))))
    assert figures._smooth(np.array([2.0, 2.0, 2.0]), 0.9) == pytest.approx([2.0, 2.0, 2.0])


def test_qualitative_panels_hold_support_query_truth_and_each_protocols_predictions(tmp_path):
    """fsmis.stages.reporting._qualitative_panels on tiny volumes: every panel has the support
    slice and mask, the query slice, the ground truth and one prediction per method,
    read from the protocol's own prediction files in the declared predictions folders
    (names of fsmis.paths.prediction)."""
    import SimpleITK as sitk

    from fsmis.stages import reporting

    def volume(array, path):
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(sitk.GetImageFromArray(array), str(path))

    label = np.zeros((9, 8, 8), np.uint8)
    label[2:7, 2:5, 2:5] = 1  # liver (class id 1) on slices 2..6
    label[3:6, 5:7, 5:7] = 2  # spleen (2) on slices 3..5
    data = tmp_path / "data"
    images, labels = {}, {}
    for case in ("s", "q"):
        image = np.arange(label.size, dtype=np.float32).reshape(label.shape)
        images[case], labels[case] = str(data / f"{case}_image.nii.gz"), str(data / f"{case}_label.nii.gz")
        volume(image, Path(images[case]))
        volume(label, Path(labels[case]))
    exp = tmp_path / "exp"
    splits = exp / "splits.json"
    write_json({"n_folds": 1, "folds": [{"fold": 0, "test": ["q"], "support": "s", "train": []}]}, splits)
    oracle_only = np.where(label == 1, 1, 0).astype(np.uint8)
    paths, predictions = [], []
    for method in ("a", "b"):
        fold = exp / method / "setting1" / "fold0"
        protocols = {"oracle": {"dice": {"liver": 0.5}}, "full": {"dice": {"liver": 0.4}}}
        write_json({"method": method, "setting": "1", "fold": 0, "protocols": protocols}, fold / "metrics.json")
        paths.append(str(fold / "metrics.json"))
        predictions.append(str(fold / "predictions"))
    volume(oracle_only, exp / "a" / "setting1" / "fold0" / "predictions" / "q.nii.gz")  # oracle only
    volume(label, exp / "b" / "setting1" / "fold0" / "predictions" / "q.nii.gz")
    volume(np.ones_like(label), exp / "b" / "setting1" / "fold0" / "predictions" / "q_full.nii.gz")
    # a file in a layout no rule writes is not looked for
    volume(np.ones_like(label), exp / "a" / "setting1" / "fold0" / "predictions" / "full" / "q.nii.gz")
    config = {"dataset": {"name": "phantom"}, "settings": ["1"], "evaluate": {"n_parts": 3}}

    def panels(protocol):
        return reporting._qualitative_panels(paths, predictions, config, images, labels, splits, "1", protocol)

    oracle = panels("oracle")
    assert [p["class"] for p in oracle] == ["spleen", "liver"]  # papers' order, classes present only
    liver = oracle[1]
    assert liver["slice"] == 4 and liver["case"] == "q"
    for key in ("support_image", "support_mask", "image", "ground_truth"):
        assert liver[key].shape == (8, 8)
    assert liver["support_mask"].sum() == 9 and liver["ground_truth"].sum() == 9
    assert sorted(liver["predictions"]) == ["a", "b"]
    assert liver["predictions"]["a"].sum() == 9
    full = panels("full")
    # only b wrote full-protocol predictions; a's oracle file is not shown as "full"
    assert sorted(full[1]["predictions"]) == ["b"]
    assert full[1]["predictions"]["b"].sum() == 64  # b's full-protocol file: liver everywhere
