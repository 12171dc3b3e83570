"""ADNet-lineage folds and setting-2 exclusion (fsmis.data.lineage_folds), against the
reference's hand-written sets and RPT-fixed's tests."""

import json

import numpy as np
import pytest

from fsmis import settings
from fsmis.contracts import Splits
from fsmis.data.lineage_folds import (
    adnet_fixed_folds,
    adnet_fold_sets,
    adnet_folds,
    exclude_all,
    exclude_any,
    lineage_folds,
    lineage_infeasible,
)
from fsmis.data.preprocess import slice_index
from fsmis.data.splits import make_folds

CHAOS = [1, 2, 3, 5, 8, 10, 13, 15, 19, 20, 21, 22, 31, 32, 33, 34, 36, 37, 38, 39]

# dataset_specifics.get_folds of ADNet/Q-Net/RPT, transcribed (sets of file indices)
REFERENCE_SETS = {
    35: [set(range(0, 8)), set(range(7, 15)), set(range(14, 22)), set(range(21, 29)), set(range(28, 35)) | {0}],
    20: [set(range(0, 5)), set(range(4, 9)), set(range(8, 13)), set(range(12, 17)), set(range(16, 20)) | {0}],
    30: [set(range(0, 7)), set(range(6, 13)), set(range(12, 19)), set(range(18, 25)), set(range(24, 30)) | {0}],
}
# RPT-fixed's get_folds: ordered lists, the last entry the dedicated support
FIXED_LISTS = {
    35: [list(range(0, 8)), list(range(7, 15)), list(range(14, 22)), list(range(21, 29)), list(range(28, 35)) + [0]],
    20: [list(range(0, 5)), list(range(4, 9)), list(range(8, 13)), list(range(12, 17)), list(range(16, 20)) + [0]],
    30: [list(range(0, 7)), list(range(6, 13)), list(range(12, 19)), list(range(18, 25)), list(range(24, 30)) + [0]],
}


def _reference_test_dataset(files, fold_set, supp_idx):
    """TestDataset/TrainDataset of the reference, step by step: files of the set in index
    order, pop the supp_idx-th; training = the files outside the set."""
    test = [f for i, f in enumerate(files) if i in fold_set]
    idx = np.arange(len(test))
    support = test.pop(idx[supp_idx])
    return test, support, [f for i, f in enumerate(files) if i not in fold_set]


@pytest.mark.parametrize("n", [20, 30, 35])
def test_rule_reproduces_the_reference_sets(n):
    assert adnet_fold_sets(n, 5) == [sorted(s) for s in REFERENCE_SETS[n]]


@pytest.mark.parametrize("n", [20, 30, 35])
@pytest.mark.parametrize("supp_idx", [0, 2, -1])
def test_folds_equal_the_reference_datasets(n, supp_idx):
    cases = [f"case_{i}" for i in range(n)]
    out = adnet_folds(list(reversed(cases)), 5, supp_idx)  # input order is irrelevant
    Splits.from_json(out)  # the splits.json contract holds
    for k, fold in enumerate(out["folds"]):
        test, support, train = _reference_test_dataset(cases, REFERENCE_SETS[n][k], supp_idx)
        assert (fold["test"], fold["support"], fold["train"]) == (test, support, train)


def test_chaos_overlap_scans_queried_twice_and_supports_never():
    out = adnet_folds([str(c) for c in CHAOS], 5, 2)["folds"]
    assert [[int(c) for c in f["test"]] for f in out] == [
        [1, 2, 5, 8], [8, 10, 15, 19], [19, 20, 22, 31], [31, 32, 34, 36], [1, 36, 38, 39]]
    assert [int(f["support"]) for f in out] == [3, 13, 21, 33, 37]
    queried = [int(c) for f in out for c in f["test"]]
    counts = {c: queried.count(c) for c in CHAOS}
    assert sorted(c for c, k in counts.items() if k == 2) == [1, 8, 19, 31, 36]
    assert sorted(c for c, k in counts.items() if k == 0) == [3, 13, 21, 33, 37]
    assert all(len(f["train"]) == 15 for f in out)
    assert [int(c) for c in out[4]["train"]][:3] == [2, 3, 5]  # case 1 is in fold 4's set


def test_adnet_last_file_as_support():
    # ADNet's TestDataset: support = image_dirs[-1] of the fold's files in index order
    cases = [str(c) for c in CHAOS]
    out = adnet_folds(cases, 5, -1)["folds"]
    assert [int(f["support"]) for f in out] == [8, 19, 31, 36, 39]  # fold 4's files: 1, 36, 37, 38, 39
    assert out[:4] == make_folds(cases, 5)["folds"][:4]  # SSL-ALPNet's folds but the last
    assert [int(c) for c in out[4]["test"]] == [1, 36, 37, 38]
    queried = [int(c) for f in out for c in f["test"]]
    assert queried.count(1) == 2 and 39 not in queried


@pytest.mark.parametrize("n", [20, 30, 35])
def test_fixed_partition_queries_every_case_once(n):
    cases = [f"p{i}" for i in range(n)]
    out = adnet_fixed_folds(cases, 5)["folds"]
    queried = [c for f in out for c in f["test"]]
    assert sorted(queried) == sorted(cases) and len(queried) == n
    for k, f in enumerate(out):
        ref = FIXED_LISTS[n][k]
        assert f["test"] == [cases[i] for i in ref[:-1]] and f["support"] == cases[ref[-1]]
        assert f["support"] not in f["test"] and f["support"] == out[(k + 1) % 5]["test"][0]
        assert f["train"] == [c for i, c in enumerate(cases) if i not in ref]
    assert lineage_folds("adnet_fixed", cases, 5) == lineage_folds("ssl_alpnet", cases, 5) == make_folds(cases, 5)


def test_rule_for_a_count_the_reference_never_had():
    # 11 cases, 5 folds: blocks 0-2, 3-4, 5-6, 7-8, 9-10 (remainder to the first block)
    assert adnet_fold_sets(11, 5) == [[0, 1, 2, 3], [3, 4, 5], [5, 6, 7], [7, 8, 9], [0, 9, 10]]
    out = adnet_folds([f"p{i}" for i in range(11)], 5, 1)["folds"]
    assert out[4]["test"] == ["p0", "p10"] and out[4]["support"] == "p9"
    assert out[0]["train"] == [f"p{i}" for i in range(4, 11)]


def test_infeasible_configurations():
    assert lineage_infeasible("adnet", 20, 5, 2) is None
    assert "supp_idx=4" in lineage_infeasible("adnet", 11, 5, 4)  # smallest fold has 3 scans
    assert lineage_infeasible("adnet", 11, 5, -3) is None
    assert lineage_infeasible("adnet", 3, 3, 0) is None  # one test, one support, one training scan
    assert lineage_infeasible("adnet", 2, 2, 0) is not None
    with pytest.raises(ValueError, match="supp_idx"):
        adnet_folds([f"p{i}" for i in range(11)], 5, 3)
    with pytest.raises(ValueError, match="duplicate"):
        adnet_folds(["1", "1", "2", "3"], 2, 0)
    with pytest.raises(ValueError, match="unknown fold lineage"):
        lineage_folds("adnet_v2", ["1", "2", "3"], 3)


def _labels():
    return np.array([[[0, 0], [0, 0]], [[1, 0], [0, 0]], [[0, 2], [0, 0]], [[1, 2], [0, 0]], [[3, 0], [0, 0]]])


def test_setting_two_any_drops_a_slice_with_any_class_and_all_only_with_all():
    labels = _labels()
    assert exclude_any(labels, [1, 2]) == [1, 2, 3]  # RPT-fixed's own test case
    assert exclude_all(labels, [1, 2]) == [3]
    assert exclude_all(labels, [1]) == exclude_any(labels, [1]) == [1, 3]
    assert exclude_all(labels, None) == exclude_any(labels, []) == []


def test_the_reference_and_loop_on_random_volumes():
    rng = np.random.default_rng(0)
    gt = rng.choice(5, size=(30, 6, 6), p=[0.9, 0.04, 0.03, 0.02, 0.01])
    exclude_label = [1, 2, 4]
    idx = np.arange(gt.shape[0])
    keep = np.full(gt.shape[0], True, dtype=bool)
    for lab in exclude_label:  # TrainDataset.__getitem__'s loop
        keep = keep & (np.sum(gt == lab, axis=(1, 2)) > 0)
    assert exclude_all(gt, exclude_label) == idx[keep].tolist() and len(idx[keep]) > 0
    assert exclude_any(gt, exclude_label) == np.flatnonzero(np.isin(gt, exclude_label).any(axis=(1, 2))).tolist()


def test_settings_module_agrees_with_both_forms():
    labels = {"a": _labels(), "b": _labels()[::-1]}
    classmap = slice_index(labels, {"liver": 1, "spleen": 2, "rk": 3})
    # 2all (one model per fold) == the reference's AND over all test classes
    got = settings.excluded_slices("2all", ["liver", "spleen"], classmap, ["a", "b"])
    assert got == {c: set(exclude_all(v, [1, 2])) for c, v in labels.items()} == {"a": {3}, "b": {1}}
    # RPT-fixed's ANY over all test classes is setting 2's union taken over every test class
    got = settings.excluded_slices("2", ["liver", "spleen"], classmap, ["a", "b"])
    assert got == {c: set(exclude_any(v, [1, 2])) for c, v in labels.items()}
    # ... but setting 2 trains one model per label group, RPT-fixed one model per fold
    assert len(settings.model_groups("2", ["liver", "spleen"], [["liver"], ["spleen"]])) == 2
    # 2any is RPT-fixed's: the union over every test class, one model per fold
    got = settings.excluded_slices("2any", ["liver", "spleen"], classmap, ["a", "b"])
    assert got == {c: set(exclude_any(v, [1, 2])) for c, v in labels.items()}
    assert settings.model_groups("2any", ["liver", "spleen"], [["liver"], ["spleen"]]) == {"all": ["liver", "spleen"]}


def test_the_splits_stage_writes_each_lineage_and_the_contract_reads_it_back(tmp_path, monkeypatch):
    from fsmis.stages import data

    monkeypatch.setenv("FSMIS_TRACKING", "off")
    cases = [f"case_{i}" for i in range(10)]
    (tmp_path / "cases.tsv").write_text("case\n" + "\n".join(reversed(cases)) + "\n", encoding="utf-8")
    out = tmp_path / "splits.json"
    data.splits(str(tmp_path / "cases.tsv"), 5, str(out), {}, lineage="adnet", supp_idx=2)
    adnet = Splits.read(out)
    assert (adnet.lineage, adnet.supp_idx) == ("adnet", 2)
    # fold 0's set is cases 0, 1 and 2 (the next block's first): the support is index 2, never queried
    assert (adnet.fold(0).test, adnet.fold(0).support) == (("case_0", "case_1"), "case_2")
    # the last fold wraps to case 0: its files in index order are 0, 8, 9, and index 2 is case_9
    assert (adnet.fold(4).test, adnet.fold(4).support) == (("case_0", "case_8"), "case_9")
    data.splits(str(tmp_path / "cases.tsv"), 5, str(out), {})
    plain = json.loads(out.read_text(encoding="utf-8"))
    assert "lineage" not in plain and Splits.read(out).lineage == "ssl_alpnet"  # unchanged files for the default
    assert Splits.read(out).fold(0).support == "case_2" and Splits.read(out).fold(4).support == "case_0"
