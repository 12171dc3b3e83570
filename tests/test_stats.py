"""fsmis.report.stats: the paired test against hand calculations and scipy, spreads by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from fsmis.io import write_json
from fsmis.report import results, stats


def test_wilcoxon_tiny_case_by_hand():
    # d = 1, 2, 3, -4, 5, 6: ranks of |d| are 1..6, W- = 4, W+ = 17.
    # Exact null: subsets of {1..6} with rank sum <= 4 are {}, {1}, {2}, {3}, {1,2},
    # {4}, {1,3}: 7 of 2**6 = 64, so the two-sided p = 2 * 7 / 64 = 0.21875.
    y = np.full(6, 0.5)
    x = y + np.array([1, 2, 3, -4, 5, 6]) / 100.0
    res = stats.wilcoxon_paired(x, y)
    assert res.n_pairs == 6 and res.n_nonzero == 6
    assert res.statistic == pytest.approx(4.0)
    assert res.p_value == pytest.approx(14 / 64, abs=1e-12)
    assert res.mean_diff == pytest.approx(13 / 600)
    assert res.label() == "0.219"


def test_wilcoxon_matches_scipy_with_zeros_and_ties():
    # hand data (Dice in percent points / 100) with two zero differences and tied |d|
    x = np.array([81, 72, 66, 90, 55, 70, 62, 77, 84, 58, 69, 73, 80, 64, 71]) / 100
    y = np.array([76, 72, 61, 85, 60, 70, 50, 70, 80, 60, 60, 70, 81, 55, 69]) / 100
    res = stats.wilcoxon_paired(x, y)
    assert res.n_pairs == 15 and res.n_nonzero == 13
    # the rule: zeros dropped first, then scipy's default test on the 13 differences;
    # 0.81 - 0.76 and 0.66 - 0.61 differ in float but are the same tie after rounding
    d = np.round(x - y, 2)
    ref = sps.wilcoxon(d[d != 0])
    assert res.statistic == pytest.approx(ref.statistic)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-12)
    # the same numbers as ranks by hand: |d| = 5,5,5,5,12,7,4,2,9,3,1,9,2 (x100),
    # negatives at 5 (the 0.55/0.60 pair), 2 (0.58/0.60) and 1 (0.80/0.81)
    assert res.statistic == pytest.approx(1 + 2.5 + 7.5)


def test_wilcoxon_normal_approximation_by_hand():
    # 60 distinct differences (more than scipy's exact limit of 50): the p-value is
    # the normal approximation without continuity correction, computed here by hand.
    rng = np.random.default_rng(3)
    d = rng.permutation(np.arange(1, 61)) * np.where(rng.random(60) < 0.35, -1, 1) / 1000.0
    res = stats.wilcoxon_paired(d, np.zeros(60))
    ranks = np.argsort(np.argsort(np.abs(d))) + 1
    w_plus = ranks[d > 0].sum()
    n = 60
    z = (w_plus - n * (n + 1) / 4) / math.sqrt(n * (n + 1) * (2 * n + 1) / 24)
    p = math.erfc(abs(z) / math.sqrt(2))  # = 2 * (1 - Phi(|z|))
    assert res.statistic == pytest.approx(min(w_plus, n * (n + 1) / 2 - w_plus))
    assert res.p_value == pytest.approx(p, rel=1e-9)


def test_wilcoxon_not_tested_rules():
    five = stats.wilcoxon_paired([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.0, 0.1, 0.2, 0.3, 0.4, 0.6])
    assert five.n_pairs == 6 and five.n_nonzero == 5
    assert math.isnan(five.p_value) and five.label() == "n/a" and "6 needed" in five.note
    same = stats.wilcoxon_paired([0.3] * 8, [0.3] * 8)
    assert math.isnan(same.p_value) and same.note == "all differences are zero" and same.mean_diff == 0.0
    # NaN on either side drops the pair; float noise counts as no difference
    x = [np.nan, 0.5, 0.7 + 1e-15, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8]
    y = [0.2, np.nan, 0.7, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    res = stats.wilcoxon_paired(x, y)
    assert res.n_pairs == 7 and res.n_nonzero == 6 and res.tested
    assert res.p_value == pytest.approx(2 / 2**6)  # all six positive: the most extreme outcome
    empty = stats.wilcoxon_paired([], [])
    assert empty.n_pairs == 0 and empty.label() == "n/a"
    with pytest.raises(ValueError, match="equal length"):
        stats.wilcoxon_paired([1, 2], [1])


def _cases(rows, seed=0, support_choice=0):
    frame = pd.DataFrame(rows, columns=["method", "fold", "case", "class", "dice"])
    frame = frame.assign(setting="1", protocol="oracle", flag="ok", seed=seed, support_choice=support_choice,
                         support="s0")
    return frame.reindex(columns=results.CASE_COLUMNS)


def test_paired_tests_match_by_fold_case_and_class():
    rows = []
    for k in range(7):  # seven scans, two classes, reference always 0.1 (liver) / 0.2 (spleen) lower
        fold, case = k % 2, f"c{k}"
        rows += [("ref", fold, case, "liver", 0.5), ("ref", fold, case, "spleen", 0.4)]
        rows += [("m", fold, case, "liver", 0.6 + k / 100), ("m", fold, case, "spleen", 0.6 + k / 100)]
    rows.append(("m", 5, "c0", "liver", 0.0))  # a fold the reference lacks: no partner
    rows.append(("ref", 0, "c9", "liver", 0.9))  # no partner either
    rows.append(("m", 1, "c1", "kidney", np.nan))  # undefined Dice
    tests = stats.paired_tests(_cases(rows), "ref", ["liver", "spleen"])
    assert tests[("m", "liver")].n_pairs == 7 and tests[("m", "spleen")].n_pairs == 7
    assert tests[("m", "liver")].p_value == pytest.approx(2 / 2**7)
    # per-scan means: d = ((0.1 + k/100) + (0.2 + k/100)) / 2
    assert tests[("m", "mean")].n_pairs == 7
    assert tests[("m", "mean")].mean_diff == pytest.approx(0.15 + 0.03)
    assert tests[("ref", "liver")].note == "reference method"
    missing = stats.paired_tests(_cases(rows), "absent", ["liver"])
    assert "has no per-case results" in missing[("m", "liver")].note


def test_summary_table_spreads_by_hand():
    # method m: fold 0 scans 0.6, 0.8; fold 1 scans 0.4, 0.6 (one class)
    rows = [("m", 0, "a", "liver", 0.6), ("m", 0, "b", "liver", 0.8),
            ("m", 1, "c", "liver", 0.4), ("m", 1, "d", "liver", 0.6)]
    cases = _cases(rows)
    per_fold = pd.DataFrame({"liver": [70.0, 50.0], "mean": [70.0, 50.0]},
                            index=pd.MultiIndex.from_tuples([("m", 0), ("m", 1)], names=["method", "fold"]))
    table = stats.summary_table(per_fold, cases, ["liver"], ["m"], reference="m")
    liver = table[table["class"] == "liver"].iloc[0]
    assert liver["fold_mean"] == pytest.approx(60.0) and liver["fold_std"] == pytest.approx(10 * math.sqrt(2))
    assert liver["n_folds"] == 2 and liver["n_cases"] == 4
    assert liver["case_mean"] == pytest.approx(60.0)
    assert liver["case_std"] == pytest.approx(100 * np.std([0.6, 0.8, 0.4, 0.6], ddof=1))
    assert liver["p_note"] == "reference method"
    assert list(table["class"]) == ["liver", "mean"]
    back = stats.tests_of(table)
    assert back[("m", "liver")].note == "reference method"
    md = stats.summary_markdown(table, "m")
    assert "| m | liver | 60.0 ± 14.1 (n=2) | 60.0 ± 16.3 (n=4) | – | ref. |" in md


def test_read_cases_defaults_protocol_and_skips_missing_files(tmp_path):
    paths = []
    for fold in (0, 1):
        folder = tmp_path / "m" / "setting1" / f"fold{fold}"
        write_json({"method": "m", "setting": "1", "fold": fold, "protocols": {"oracle": {"dice": {"liver": 0.5}}}},
                   folder / "metrics.json")
        paths.append(folder / "metrics.json")
    pd.DataFrame({"case": ["a", "a"], "class": ["liver", "spleen"], "dice": [0.5, np.nan],
                  "flag": ["ok", "empty_reference"]}).to_csv(paths[0].with_name("per_case.tsv"), sep="\t", index=False)
    cases = results.read_cases(paths)  # fold 1 has no per_case.tsv
    assert list(cases.columns) == results.CASE_COLUMNS
    assert len(cases) == 2 and set(cases["protocol"]) == {"oracle"} and set(cases["fold"]) == {0}
    assert cases["dice"].isna().sum() == 1
    means = stats.case_means(cases)
    assert means["dice"].tolist() == [0.5]  # the NaN organ is skipped
