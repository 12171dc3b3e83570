"""fsmis.report: every metric of per_case.tsv as a table (seeds, support choices, empty-mask
flags), checked against hand-computed numbers; the further metrics of the paper table."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from fsmis.errors import InputError
from fsmis.evaluate import summarize
from fsmis.io import write_json
from fsmis.report import paper_tables as P
from fsmis.report import published as pub
from fsmis.report import results, tables

NAN = math.nan
SQ2 = math.sqrt(2.0)
CLASSES = ["spleen", "liver"]  # deliberately not alphabetical
SM, EP, ER, BE = "support_missing", "empty_prediction", "empty_reference", "both_empty"
UNDEF = (NAN, NAN, NAN, NAN)  # dice, iou, hd95, nsd of a row without any value
ZERO = (0.0, 0.0, NAN, 0.0)  # one mask empty (fsmis.metrics): overlap 0, HD95 undefined

# (method, seed, fold, case, class) -> (dice, iou, hd95 mm, nsd, flag); support choice 0.
# Fold 0 tests scans c0, c1 and its support scan lacks the spleen; fold 1 tests c2, c3.
ROWS = [
    ("a", 0, 0, "c0", "liver", (0.8, 0.6, 4.0, 0.9), "ok"), ("a", 0, 0, "c0", "spleen", UNDEF, SM),
    ("a", 0, 0, "c1", "liver", (0.6, 0.4, 6.0, 0.7), "ok"), ("a", 0, 0, "c1", "spleen", UNDEF, SM),
    ("a", 0, 1, "c2", "liver", (0.9, 0.8, 2.0, 1.0), "ok"), ("a", 0, 1, "c2", "spleen", (0.7, 0.5, 8.0, 0.6), "ok"),
    ("a", 0, 1, "c3", "liver", (0.7, 0.6, 4.0, 0.8), "ok"), ("a", 0, 1, "c3", "spleen", ZERO, EP),
    ("a", 1, 0, "c0", "liver", (0.7, 0.5, 6.0, 0.8), "ok"), ("a", 1, 0, "c0", "spleen", UNDEF, SM),
    ("a", 1, 0, "c1", "liver", (0.5, 0.3, 8.0, 0.6), "ok"), ("a", 1, 0, "c1", "spleen", UNDEF, SM),
    ("a", 1, 1, "c2", "liver", (0.8, 0.7, 4.0, 0.9), "ok"), ("a", 1, 1, "c2", "spleen", (0.5, 0.3, 12.0, 0.4), "ok"),
    ("a", 1, 1, "c3", "liver", (0.6, 0.4, 6.0, 0.7), "ok"), ("a", 1, 1, "c3", "spleen", UNDEF, BE),
    ("b", 0, 0, "c0", "liver", (0.5, 0.3, 10.0, 0.4), "ok"), ("b", 0, 0, "c0", "spleen", UNDEF, SM),
    ("b", 0, 0, "c1", "liver", (0.3, 0.2, 20.0, 0.2), "ok"), ("b", 0, 0, "c1", "spleen", UNDEF, SM),
    ("b", 0, 1, "c2", "liver", (0.4, 0.2, 12.0, 0.3), "ok"), ("b", 0, 1, "c2", "spleen", (0.2, 0.1, 30.0, 0.1), "ok"),
    ("b", 0, 1, "c3", "liver", ZERO, ER), ("b", 0, 1, "c3", "spleen", (0.4, 0.3, 20.0, 0.3), "ok"),
    ("b", 1, 0, "c0", "liver", (0.7, 0.5, 6.0, 0.6), "ok"), ("b", 1, 0, "c0", "spleen", UNDEF, SM),
    ("b", 1, 0, "c1", "liver", (0.5, 0.4, 10.0, 0.4), "ok"), ("b", 1, 0, "c1", "spleen", UNDEF, SM),
    ("b", 1, 1, "c2", "liver", (0.6, 0.4, 8.0, 0.5), "ok"), ("b", 1, 1, "c2", "spleen", (0.4, 0.3, 16.0, 0.3), "ok"),
    ("b", 1, 1, "c3", "liver", ZERO, ER), ("b", 1, 1, "c3", "spleen", (0.6, 0.5, 10.0, 0.5), "ok"),
]
# another support scan (choice 1): far-off values and a flag that no table or note may count
CHOICE_1 = [
    ("a", 0, 0, "c0", "liver", (0.1, 0.05, 50.0, 0.1), "ok"), ("a", 0, 0, "c1", "liver", ZERO, EP),
]


def _frame(rows, choice=0) -> pd.DataFrame:
    records = [{"method": m, "setting": "1", "protocol": "full", "seed": seed, "fold": fold,
                "support_choice": choice, "support": f"s{fold}{choice}", "case": case, "class": name,
                "dice": v[0], "iou": v[1], "hd95": v[2], "nsd": v[3], "flag": flag}
               for m, seed, fold, case, name, v, flag in rows]
    return pd.DataFrame(records, columns=results.CASE_COLUMNS)


@pytest.fixture
def cases() -> pd.DataFrame:
    return pd.concat([_frame(ROWS), _frame(CHOICE_1, choice=1)], ignore_index=True)


# by hand: per (method, fold, class) the mean over scans (NaN skipped) of each seed, then
# over the two seeds; fold mean = mean of the classes with a value; then over folds.
# Fold 0 has no spleen (support missing): spleen has one fold and no spread.
EXPECTED = {  # metric -> method -> column -> (mean, std) over folds, percent or mm
    "dice": {
        # a: liver f0 (.7+.6)/2, f1 (.8+.7)/2; spleen f1 ((.7+0)/2 + .5)/2 (both_empty left out)
        "a": {"liver": (70.0, 10 / SQ2), "spleen": (42.5, NAN), "mean": (61.875, 6.25 / SQ2)},
        # b: liver f0 (.4+.6)/2, f1 ((.4+0)/2 + (.6+0)/2)/2 (empty_reference scores 0)
        "b": {"liver": (37.5, 25 / SQ2), "spleen": (40.0, NAN), "mean": (41.25, 17.5 / SQ2)},
    },
    "iou": {
        "a": {"liver": (53.75, 17.5 / SQ2), "spleen": (27.5, NAN), "mean": (45.0, 0.0)},
        "b": {"liver": (25.0, 20 / SQ2), "spleen": (30.0, NAN), "mean": (28.75, 12.5 / SQ2)},
    },
    "hd95": {  # mm; one empty mask: undefined, left out (b's fold-1 liver from c2 alone)
        "a": {"liver": (5.0, SQ2), "spleen": (10.0, NAN), "mean": (6.5, 1 / SQ2)},
        "b": {"liver": (10.75, 1.5 / SQ2), "spleen": (19.0, NAN), "mean": (13.0, 3 / SQ2)},
    },
    "nsd": {
        "a": {"liver": (80.0, 10 / SQ2), "spleen": (35.0, NAN), "mean": (67.5, 15 / SQ2)},
        "b": {"liver": (30.0, 20 / SQ2), "spleen": (30.0, NAN), "mean": (32.5, 15 / SQ2)},
    },
}


def _close(value, expected) -> bool:
    return math.isnan(value) if math.isnan(expected) else value == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("metric", list(EXPECTED))
def test_metric_table_cell_by_cell(cases, metric):
    table = tables.metric_table(cases, CLASSES, ["b", "a"], metric)
    assert list(table.index) == ["b", "a"]
    assert list(dict.fromkeys(table.columns.get_level_values(0))) == ["spleen", "liver", "mean", "n_folds"]
    assert list(table[("n_folds", "")]) == [2, 2]
    for method, columns in EXPECTED[metric].items():
        for column, (mean, std) in columns.items():
            got = table.loc[method, (column, "mean")], table.loc[method, (column, "std")]
            assert _close(got[0], mean) and _close(got[1], std), (metric, method, column, got)


def test_case_fold_values_per_fold_and_seed_average(cases):
    hd95 = results.case_fold_values(cases, CLASSES, "hd95")
    assert list(hd95.index) == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    assert list(hd95.columns) == ["spleen", "liver", "mean"]
    # a, fold 1: liver seeds 3 and 5 -> 4; spleen seeds 8 (empty prediction left out) and 12 -> 10
    assert hd95.loc[("a", 1)].tolist() == pytest.approx([10.0, 4.0, 7.0])
    assert math.isnan(hd95.loc[("a", 0), "spleen"]) and hd95.loc[("a", 0), "mean"] == pytest.approx(6.0)
    # the choice-1 rows are not read: a's fold-0 liver Dice stays (.7 + .6) / 2
    dice = results.case_fold_values(cases, CLASSES)
    assert dice.loc[("a", 0), "liver"] == pytest.approx(0.65)
    with pytest.raises(ValueError, match="unknown metric"):
        results.case_fold_values(cases, CLASSES, "hausdorff")
    twice = pd.concat([cases, cases[cases["support_choice"] == 0].head(1)])
    with pytest.raises(ValueError, match="several dice values"):
        results.case_fold_values(twice, CLASSES)
    other = cases.assign(protocol=np.where(cases["method"] == "a", "oracle", "full"))
    with pytest.raises(ValueError, match="mixes settings/protocols"):
        results.case_fold_values(other, CLASSES)


def _write_fold(tmp_path, part: pd.DataFrame, method: str, seed: int, fold: int, per_case: bool = True):
    """metrics.json as the evaluate stage writes it (fsmis.evaluate.summarize of the
    choice-0 rows) and per_case.tsv beside it."""
    folder = tmp_path / method / "setting1" / f"seed{seed}" / f"fold{fold}"
    rows = part[part["support_choice"] == 0].to_dict("records")
    summary = summarize(rows, CLASSES)
    write_json({"method": method, "setting": "1", "fold": fold, "seed": seed, "dataset": "phantom",
                "supports": [f"s{fold}0", f"s{fold}1"], "support": f"s{fold}0",
                "protocols": {"full": summary}}, folder / "metrics.json")
    if per_case:
        keep = ["protocol", "case", "class", "support_choice", "support", "dice", "iou", "hd95", "nsd", "flag"]
        part[keep].to_csv(folder / "per_case.tsv", sep="\t", index=False)
    return folder / "metrics.json"


def _write_all(tmp_path, cases):
    return [_write_fold(tmp_path, part, m, int(seed), int(fold))
            for (m, seed, fold), part in cases.groupby(["method", "seed", "fold"])]


def test_dice_from_cases_equals_fold_values_of_metrics_json(tmp_path, cases):
    paths = _write_all(tmp_path, cases)
    long_df = results.collect(paths)
    assert list(long_df.columns) == results.LONG_COLUMNS
    assert results.LONG_COLUMNS.index("seed") == results.LONG_COLUMNS.index("fold") + 1
    assert sorted(set(long_df["seed"])) == [0, 1]
    read = results.read_cases(paths)
    assert list(read.columns) == results.CASE_COLUMNS and len(read) == len(cases)
    from_json = results.fold_values(long_df, CLASSES)
    from_cases = results.case_fold_values(read, CLASSES, "dice")
    pd.testing.assert_frame_equal(from_json, from_cases, check_exact=False, atol=1e-12)
    # the same numbers as by hand: a fold 1 = (liver .75, spleen .425)
    assert from_json.loc[("a", 1)].tolist() == pytest.approx([0.425, 0.75, 0.5875])
    # and so the same table, whichever way it is computed
    by_json = tables.dice_table(long_df, CLASSES, ["a", "b"])
    by_cases = tables.metric_table(read, CLASSES, ["a", "b"], "dice")
    pd.testing.assert_frame_equal(by_json, by_cases, check_exact=False, atol=1e-9)


def test_fold_values_average_seeds_and_refuse_duplicates():
    rows = [("m", 0, 0, "liver", 0.8), ("m", 1, 0, "liver", 0.6), ("m", 0, 0, "spleen", 0.4),
            ("m", 1, 0, "spleen", NAN), ("m", 0, 1, "liver", 0.5), ("m", 0, 1, "spleen", 0.3)]
    long_df = pd.DataFrame(rows, columns=["method", "seed", "fold", "class", "dice"])
    wide = results.fold_values(long_df, CLASSES)
    assert list(wide.index) == [("m", 0), ("m", 1)]
    # fold 0: liver (.8 + .6) / 2, spleen .4 (the seed without a value is skipped)
    assert wide.loc[("m", 0)].tolist() == pytest.approx([0.4, 0.7, 0.55])
    assert wide.loc[("m", 1)].tolist() == pytest.approx([0.3, 0.5, 0.4])
    # a frame without seeds is one seed
    assert results.fold_values(long_df[long_df["seed"] == 0].drop(columns="seed"), CLASSES).loc[
        ("m", 0), "liver"] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="seed, fold and class"):
        results.fold_values(pd.concat([long_df, long_df.head(1)]), CLASSES)


def test_collect_refuses_only_the_same_seed_twice(tmp_path, cases):
    paths = _write_all(tmp_path, cases)
    copy = tmp_path / "copy" / "metrics.json"
    copy.parent.mkdir()
    copy.write_text(paths[0].read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(InputError, match="seed 0 is already given by"):
        results.collect([*paths, copy])


def test_read_cases_fills_older_files(tmp_path):
    folder = tmp_path / "m" / "setting1" / "fold0"
    write_json({"method": "m", "setting": "1", "fold": 0, "seed": 3, "support": "s0",
                "support_by_class": {"spleen": "s9"}, "protocols": {"oracle": {"dice": {"liver": 0.5}}}},
               folder / "metrics.json")
    pd.DataFrame({"case": ["a", "a", "b"], "class": ["liver", "spleen", "liver"], "dice": ["0.5", "n/a", "0.25"],
                  "flag": ["ok", "empty_reference", None]}).to_csv(folder / "per_case.tsv", sep="\t", index=False)
    read = results.read_cases([folder / "metrics.json"])
    assert list(read.columns) == results.CASE_COLUMNS
    assert read["seed"].tolist() == [3, 3, 3] and read["support_choice"].tolist() == [0, 0, 0]
    assert read["protocol"].tolist() == ["oracle"] * 3 and read["fold"].tolist() == [0, 0, 0]
    assert read["support"].tolist() == ["s0", "s9", "s0"]  # support_by_class, else support
    assert read["dice"].tolist()[0] == 0.5 and math.isnan(read["dice"].tolist()[1])  # coerced
    assert read[["iou", "hd95", "nsd"]].isna().all().all()
    assert read["flag"].tolist() == ["ok", "empty_reference", ""]


def test_read_cases_takes_support_and_choice_from_the_file(tmp_path):
    folder = tmp_path / "m" / "setting1" / "fold0"
    write_json({"method": "m", "setting": "1", "fold": 0, "support": "s0",
                "protocols": {"full": {"dice": {"liver": 0.5}}}}, folder / "metrics.json")
    table = pd.DataFrame({"protocol": ["full", "full"], "case": ["a", "a"], "class": ["liver", "liver"],
                          "support_choice": [0, 1], "support": ["s0", "s7"], "dice": [0.5, 0.4],
                          "iou": [0.3, 0.2], "hd95": [4.5, "inf?"], "nsd": [0.6, 0.5], "flag": ["ok", "ok"]})
    table.to_csv(folder / "per_case.tsv", sep="\t", index=False)
    read = results.read_cases([folder / "metrics.json"])
    assert read["support_choice"].tolist() == [0, 1] and read["support"].tolist() == ["s0", "s7"]
    assert read["seed"].tolist() == [0, 0]  # a file older than seeds: seed 0
    assert read["hd95"].iloc[0] == 4.5 and math.isnan(read["hd95"].iloc[1])
    table.assign(support_choice=[0, "x"]).to_csv(folder / "per_case.tsv", sep="\t", index=False)
    with pytest.raises(InputError, match="support_choice"):
        results.read_cases([folder / "metrics.json"])


def test_flag_note_counts_and_says_what_each_flag_does(cases):
    hd95 = tables.flag_note(cases, "hd95")
    dice = tables.flag_note(cases, "dice")
    # choice 0 only: 2 empty references (b, c3 liver), 1 empty prediction, 1 both empty, 8 without support
    assert hd95 == (
        "Empty masks, per-case rows (method, seed, fold, scan, organ; support choice 0) flagged: "
        "empty_reference 2 (no reference mask, the organ is absent from the scan: HD95 undefined, left out of "
        "the means); empty_prediction 1 (nothing predicted where the organ is: HD95 undefined, left out of the "
        "means); both_empty 1 (neither mask: HD95 undefined, left out of the means); support_missing 8 (the "
        "support scan lacks the organ, nothing segmented: HD95 undefined, left out of the means).")
    assert "empty_reference 2 (no reference mask, the organ is absent from the scan: Dice 0, counted in the means)" \
        in dice
    assert "empty_prediction 1 (nothing predicted where the organ is: Dice 0, counted in the means)" in dice
    assert "both_empty 1 (neither mask: Dice undefined, left out of the means)" in dice
    # a flag whose rows differ (oracle: nothing segmented, NaN; full: 0)
    mixed = _frame([("m", 0, 0, "c0", "liver", ZERO, ER), ("m", 0, 0, "c1", "liver", UNDEF, ER)])
    assert "empty_reference 2 (no reference mask, the organ is absent from the scan: NSD 0 in 1 (counted), " \
        "undefined in 1 (left out))" in tables.flag_note(mixed, "nsd")
    assert tables.flag_note(_frame([("m", 0, 0, "c0", "liver", (0.5, 0.3, 2.0, 0.6), "ok")]), "dice") is None


def test_notes_support_missing_and_seeds(cases):
    assert tables.support_missing_note(cases) == (
        "Support scan without the class: 1 (fold, class) pair(s) not evaluated and left out of the means "
        "(fold 0: spleen); flag support_missing in dice_per_case.csv.")
    assert tables.seed_note(cases) == (
        "Each fold's value is the mean over its training seeds (seeds 0, 1); mean ± std are over folds.")
    uneven = cases[~((cases["method"] == "b") & (cases["seed"] == 1))]
    assert tables.seed_note(uneven) == ("Each fold's value is the mean over its training seeds (a: seed(s) 0, 1; "
                                        "b: seed(s) 0); mean ± std are over folds.")
    assert tables.seed_note(cases[cases["seed"] == 0]) is None
    notes = tables.metric_notes(cases, "nsd")
    assert len(notes) == 3 and notes[0].startswith("Support scan") and notes[1].startswith("Empty masks")
    # the long table of metrics.json keeps its own column
    long_df = pd.DataFrame({"fold": [0, 1], "class": ["liver", "liver"], "support_missing": [True, NAN]})
    assert "(fold 0: liver)" in tables.support_missing_note(long_df)


def test_metric_writers_csv_markdown_and_latex(tmp_path, cases):
    table = tables.metric_table(cases, CLASSES, ["a", "b"], "hd95")
    notes = tables.metric_notes(cases, "hd95")
    written = tables.write_metric_tables(table, tmp_path, "hd95_setting1_full", "hd95", notes)
    assert [w.rsplit("/", 1)[1] for w in written] == ["hd95_setting1_full.csv", "hd95_setting1_full.md",
                                                      "hd95_setting1_full.tex"]
    csv = pd.read_csv(tmp_path / "hd95_setting1_full.csv", index_col="method")
    assert list(csv.columns) == ["spleen_mean", "spleen_std", "liver_mean", "liver_std", "mean_mean", "mean_std",
                                 "n_folds"]
    assert csv.loc["b", "mean_mean"] == pytest.approx(13.0) and math.isnan(csv.loc["a", "spleen_std"])

    md = (tmp_path / "hd95_setting1_full.md").read_text(encoding="utf-8").splitlines()
    assert md[0] == ("HD95 (mm), lower is better; mean ± standard deviation over folds "
                     "(folds per method: 2).")
    assert "| method | spleen | liver | mean |" in md
    assert "| a | 10.0 | 5.0 ± 1.4 | 6.5 ± 0.7 |" in md
    assert "| b | 19.0 | 10.8 ± 1.1 | 13.0 ± 2.1 |" in md
    assert notes[1] in md

    tex = (tmp_path / "hd95_setting1_full.tex").read_text(encoding="utf-8").splitlines()
    assert tex[0] == "% generated by fsmis.report.tables; needs \\usepackage{booktabs}"
    assert r"\caption{HD95 (mm), lower is better; mean $\pm$ standard deviation over folds (folds per method: 2).}" \
        in tex
    assert r"\label{tab:hd95-setting1-full}" in tex
    start = tex.index(r"\begin{tabular}{lrrr}")
    assert tex[start:start + 7] == [
        r"\begin{tabular}{lrrr}", r"\toprule", r"Method & spleen & liver & Mean \\", r"\midrule",
        r"a & 10.0 & 5.0 $\pm$ 1.4 & 6.5 $\pm$ 0.7 \\", r"b & 19.0 & 10.8 $\pm$ 1.1 & 13.0 $\pm$ 2.1 \\",
        r"\bottomrule"]
    footnote = next(line for line in tex if line.startswith(r"\par\smallskip"))
    assert r"support\_missing 8" in footnote and r"(fold 0: spleen)" in footnote
    assert tex[-1] == r"\end{table}"

    nsd = tables.metric_table(cases, CLASSES, None, "nsd")
    tables.write_metric_tables(nsd, tmp_path, "nsd_setting1_full", "nsd", tolerance_mm=2.0)
    text = (tmp_path / "nsd_setting1_full.tex").read_text(encoding="utf-8")
    assert r"\caption{NSD (\%) at a tolerance of 2 mm, higher is better;" in text
    assert r"a & 35.0 & 80.0 $\pm$ 7.1 & 67.5 $\pm$ 10.6 \\" in text
    assert r"\par\smallskip" not in text  # no notes given


def test_dice_writer_keeps_two_files_and_dice_caption(tmp_path, cases):
    table = tables.dice_table(results.collect(_write_all(tmp_path / "exp", cases)), CLASSES)
    written = tables.write_tables(table, tmp_path, "dice_setting1_full")
    assert [w.rsplit("/", 1)[1] for w in written] == ["dice_setting1_full.csv", "dice_setting1_full.md"]
    first = (tmp_path / "dice_setting1_full.md").read_text(encoding="utf-8").splitlines()[0]
    assert first == "Dice (%), higher is better; mean ± standard deviation over folds (folds per method: 2)."
    assert tables.metric_of("iou").described() == "IoU (%, higher is better)"
    assert tables.metric_of("nsd").described(1.5) == "NSD (%, tolerance 1.5 mm, higher is better)"
    with pytest.raises(ValueError, match="unknown metric"):
        tables.metric_of("hd")


# --------------------------------------------------------------------------- paper table


PAPER_CLASSES = ["spleen", "liver"]


def _published() -> pd.DataFrame:
    rows = [("a", "abd_mri", "1", "spleen", 40.0, "Paper A", ""), ("a", "abd_mri", "1", "liver", 70.0, "Paper A", ""),
            ("a", "abd_mri", "1", "mean", 55.0, "Paper A", ""),
            ("z", "abd_mri", "1", "spleen", 30.0, "Paper Z", ""), ("z", "abd_mri", "1", "liver", 60.0, "Paper Z", ""),
            ("z", "abd_mri", "1", "mean", 45.0, "Paper Z", "")]
    return pd.DataFrame(rows, columns=pub.PUBLISHED_COLUMNS)


def test_paper_table_extra_columns_ours_only(tmp_path, cases):
    long_df = results.collect(_write_all(tmp_path / "exp", cases))
    dice = tables.dice_table(long_df, PAPER_CLASSES, ["a", "b"])
    extra = {name: tables.metric_table(cases, PAPER_CLASSES, ["a", "b"], name) for name in ("hd95", "nsd")}
    table = P.paper_table(dice, _published(), "chaos_mr", "1", PAPER_CLASSES, "full", reference="a",
                          extra=extra, nsd_tolerance_mm=2.0)
    d = table.data
    assert list(d.index) == ["a", "b", "z"] and list(d["kind"]) == ["ours", "ours", "published"]
    assert table.extras == [("hd95", "HD95 (mm, ours)"), ("nsd", "NSD (%, ours)")]
    assert d.loc["a", "hd95_ours"] == pytest.approx(6.5) and d.loc["a", "hd95_ours_std"] == pytest.approx(1 / SQ2)
    assert d.loc["b", "nsd_ours"] == pytest.approx(32.5) and d.loc["b", "nsd_ours_std"] == pytest.approx(15 / SQ2)
    assert d.loc[["z"], ["hd95_ours", "hd95_ours_std", "nsd_ours", "nsd_ours_std"]].isna().all().all()
    assert d.loc["a", "mean_diff"] == pytest.approx(61.875 - 55.0)  # the Dice columns are untouched
    note = ("HD95 (mm, lower is better) and NSD (%, tolerance 2 mm, higher is better): ours only, no paper in "
            "published_results.csv reports them; per method the mean over organs of each fold (each organ's value "
            "the mean over the fold's test scans and seeds), mean ± standard deviation over folds.")
    assert note in table.notes
    assert table.caption.endswith(" HD95 (mm, ours) and NSD (%, ours): no published numbers, see the notes.")

    md = P.to_markdown(table).splitlines()
    assert ("| method | spleen | pub. | Δ | liver | pub. | Δ | Mean | pub. | Δ | HD95 (mm, ours) | NSD (%, ours)"
            " | p vs a |") in md
    row_a = next(line for line in md if line.startswith("| a "))
    # the cells of the Dice mean (61.875 and +6.875, ties in rounding) are checked above, by number
    cells = [c.strip() for c in row_a.strip("|").split("|")]
    assert cells[:7] == ["a [1]", "42.50", "40.00", "+2.50", "70.00 ± 7.07", "70.00", "+0.00"]
    assert cells[8] == "55.00" and cells[10:] == ["6.50 ± 0.71", "67.50 ± 10.61", "ref."]
    row_z = next(line for line in md if line.startswith("| z "))
    assert row_z.endswith("| 45.00 | – | – | – |  |")
    assert f"- {note}" in md

    csv = P.to_csv_frame(table)
    assert list(csv.columns[-8:]) == ["hd95_ours", "hd95_ours_std", "nsd_ours", "nsd_ours_std", "p_value",
                                      "p_label", "published_as", "source"]
    assert csv.loc["b", "hd95_ours"] == pytest.approx(13.0) and math.isnan(csv.loc["z", "nsd_ours"])

    tex = P.to_latex(table, label="tab:p").splitlines()
    assert r"\begin{tabular}{l" + "r" * 12 + "}" in tex
    assert any(line.startswith(r" & \multicolumn{3}{c}{spleen}") and line.endswith(r"{Mean} & & & \\")
               for line in tex)
    assert (r"Method & Ours & Pub. & $\Delta$ & Ours & Pub. & $\Delta$ & Ours & Pub. & $\Delta$ & HD95 (mm, ours) "
            r"& NSD (\%, ours) & $p$ \\") in tex
    row = next(line for line in tex if line.startswith("b &"))
    assert row.endswith(r"& 13.00 $\pm$ 2.12 & 32.50 $\pm$ 10.61 & n/a \\")
    z = next(line for line in tex if line.startswith("z"))
    assert z.endswith(r"& -- & -- & -- &  \\")


def test_paper_table_extra_without_published_numbers_and_refusals(cases):
    long_df = pd.DataFrame([{"method": "a", "setting": "1", "protocol": "full", "fold": f, "seed": 0,
                             "dataset": "phantom", "class": c, "dice": 0.5, "n_cases": 2}
                            for f in (0, 1) for c in PAPER_CLASSES], columns=results.LONG_COLUMNS)
    dice = tables.dice_table(long_df, PAPER_CLASSES)
    hd95 = tables.metric_table(cases[cases["method"] == "a"], PAPER_CLASSES, None, "hd95")
    table = P.paper_table(dice, _published(), "phantom", "1", PAPER_CLASSES, "full", reference="a",
                          extra={"hd95": hd95})
    md = P.to_markdown(table)
    assert "| method | spleen | liver | Mean | HD95 (mm, ours) | p vs a |" in md
    assert "| a | 50.00 ± 0.00 | 50.00 ± 0.00 | 50.00 ± 0.00 | 6.50 ± 0.71 | ref. |" in md
    assert "Method & spleen & liver & Mean & HD95 (mm, ours) & $p$ \\\\" in P.to_latex(table)
    assert any(n.startswith("HD95 (mm, lower is better): ours only") for n in table.notes)
    # without extra, nothing changes
    plain = P.paper_table(dice, _published(), "phantom", "1", PAPER_CLASSES, "full", reference="a")
    assert plain.extras == [] and "HD95" not in P.to_markdown(plain) and "hd95_ours" not in P.to_csv_frame(plain)
    with pytest.raises(ValueError, match="Dice is the table's own metric"):
        P.paper_table(dice, _published(), "phantom", "1", PAPER_CLASSES, extra={"dice": hd95})
    with pytest.raises(ValueError, match="unknown metric"):
        P.paper_table(dice, _published(), "phantom", "1", PAPER_CLASSES, extra={"hd": hd95})
