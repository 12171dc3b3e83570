"""The spread over folds, support choices and seeds (fsmis.report.spread) against hand
computations, and the paired tests over several seeds (fsmis.report.stats)."""

import math
import statistics

import numpy as np
import pandas as pd
import pytest

from fsmis.report import results, spread, stats

CLASSES = ["liver", "spleen"]


def _dice(seed, choice, fold, case, name):
    # distinct, easy values; spleen of case c1 in fold 1 is undefined (NaN) for every choice
    if (fold, case, name) == (1, "c1", "spleen"):
        return math.nan
    return 0.5 + 0.1 * seed + 0.05 * choice + 0.02 * fold + 0.01 * int(case[1:]) + (0.1 if name == "liver" else 0)


def _cases(method="a", seeds=(0, 1), choices=(0, 1, 2)):
    rows = []
    for seed in seeds:
        for choice in choices:
            for fold in (0, 1):
                for case in (f"c{2 * fold}", f"c{2 * fold + 1}"):
                    for name in CLASSES:
                        rows.append({"method": method, "setting": "1", "protocol": "oracle", "seed": seed,
                                     "fold": fold, "support_choice": choice, "support": f"s{choice}",
                                     "case": case, "class": name, "dice": _dice(seed, choice, fold, case, name),
                                     "flag": "ok"})
    return pd.DataFrame(rows).reindex(columns=results.CASE_COLUMNS)


def _fold_value(seed, choice, fold, name):
    """By hand: the fold's value of a class (mean over its scans, NaN skipped), or of
    `mean` (the classes' average within the fold)."""
    if name == "mean":
        return statistics.mean(_fold_value(seed, choice, fold, n) for n in CLASSES)
    vals = [_dice(seed, choice, fold, c, name) for c in (f"c{2 * fold}", f"c{2 * fold + 1}")]
    return statistics.mean(v for v in vals if not math.isnan(v))


def _experiment(seed, choice, name):
    return statistics.mean(_fold_value(seed, choice, f, name) for f in (0, 1))


def test_spread_table_matches_a_hand_computation():
    table = spread.spread_table(_cases(), CLASSES, ["a"]).set_index(["method", "class"])
    assert list(table.index) == [("a", "liver"), ("a", "spleen"), ("a", "mean")]
    for name in ["liver", "spleen", "mean"]:
        row = table.loc[("a", name)]
        # the reported value: support choice 0, mean over seeds of the fold values, mean over folds
        by_fold = [statistics.mean(_fold_value(s, 0, f, name) for s in (0, 1)) for f in (0, 1)]
        assert row["value"] == pytest.approx(100 * statistics.mean(by_fold))
        assert row["fold_std"] == pytest.approx(100 * statistics.stdev(by_fold))
        assert row["n_folds"] == 2
        # over supports: the experiment value of each choice (mean over seeds)
        per_choice = [statistics.mean(_experiment(s, k, name) for s in (0, 1)) for k in (0, 1, 2)]
        assert row["n_supports"] == 3
        assert row["support_std"] == pytest.approx(100 * statistics.stdev(per_choice))
        assert row["support_min"] == pytest.approx(100 * min(per_choice))
        assert row["support_max"] == pytest.approx(100 * max(per_choice))
        # over seeds: t interval with 1 degree of freedom (t(0.975, 1) = 12.7062047...)
        per_seed = [100 * _experiment(s, 0, name) for s in (0, 1)]
        half = 12.706204736174707 * statistics.stdev(per_seed) / math.sqrt(2)
        assert row["n_seeds"] == 2
        assert row["seed_mean"] == pytest.approx(statistics.mean(per_seed))
        assert row["seed_ci_low"] == pytest.approx(statistics.mean(per_seed) - half)
        assert row["seed_ci_high"] == pytest.approx(statistics.mean(per_seed) + half)
    # the support choices here move every value by 5 points per step: std of (0, 5, 10) = 5
    assert table.loc[("a", "liver"), "support_std"] == pytest.approx(5.0)


def test_one_seed_one_support_has_no_interval_and_markdown_says_n():
    table = spread.spread_table(_cases(seeds=(0,), choices=(0,)), CLASSES, ["a"])
    row = table.set_index("class").loc["liver"]
    assert row["n_seeds"] == 1 and row["n_supports"] == 1
    assert math.isnan(row["seed_ci_low"]) and math.isnan(row["support_std"])
    text = spread.spread_markdown(table)
    assert "| a | liver |" in text and "n=1" in text and "95%" in text


def test_t_interval_and_mixed_slices_refused():
    mean, low, high = spread.t_interval([1.0, 2.0, 3.0])
    # t(0.975, 2) = 4.302652729911275, s = 1
    assert mean == 2.0
    assert high - mean == pytest.approx(4.302652729911275 / math.sqrt(3))
    assert low == pytest.approx(2 * mean - high)
    assert all(math.isnan(v) for v in spread.t_interval([])[:1])
    mixed = pd.concat([_cases(), _cases().assign(protocol="full")])
    with pytest.raises(ValueError, match="mixes"):
        spread.spread_table(mixed, CLASSES, ["a"])


def test_paired_tests_average_differences_over_seeds_and_ignore_other_supports():
    # method m is better than ref by +0.1 in seed 0 and by +0.3 in seed 1 on each of 7 scans:
    # per scan the test sees the mean difference +0.2 (+ k/100); supports other than 0 are ignored
    rows = []
    for seed, gain in ((0, 0.1), (1, 0.3)):
        for k in range(7):
            for choice in (0, 1):
                off = 0.0 if choice == 0 else -0.5  # a choice that would flip the sign if it were used
                base = {"setting": "1", "protocol": "oracle", "seed": seed, "fold": k % 2, "support_choice": choice,
                        "support": "s", "case": f"c{k}", "class": "liver", "flag": "ok"}
                rows.append({**base, "method": "ref", "dice": 0.4})
                rows.append({**base, "method": "m", "dice": 0.4 + gain + k / 100 + off})
    cases = pd.DataFrame(rows).reindex(columns=results.CASE_COLUMNS)
    test = stats.paired_tests(cases, "ref", ["liver"])[("m", "liver")]
    assert test.n_pairs == 7  # one pair per scan, not one per seed
    assert test.mean_diff == pytest.approx(np.mean([0.2 + k / 100 for k in range(7)]))
    assert test.p_value == pytest.approx(2 / 2**7)  # seven positive differences: the most extreme outcome
    summary = stats.case_summary(cases[cases["method"] == "m"])
    liver = summary.set_index("class").loc["liver"]
    assert liver["n_cases"] == 7  # scans, each averaged over its seeds
    assert liver["case_mean"] == pytest.approx(np.mean([0.6 + k / 100 for k in range(7)]))
