"""Folds as the reference builds them (docs/methods.md, 'SSL-ALPNet: folds')."""

import random

import pytest

from fsmis.data.splits import infeasible, make_folds, natural_key

CHAOS = [1, 2, 3, 5, 8, 10, 13, 15, 19, 20, 21, 22, 31, 32, 33, 34, 36, 37, 38, 39]


def test_reproduces_the_chaos_folds_of_the_reference():
    ids = [str(p) for p in CHAOS]
    random.Random(0).shuffle(ids)  # input order is irrelevant: ids are sorted numerically
    out = make_folds(ids, 5)
    assert out["n_folds"] == 5 and [f["fold"] for f in out["folds"]] == [0, 1, 2, 3, 4]
    tests = [[int(c) for c in f["test"]] for f in out["folds"]]
    assert tests == [[1, 2, 3, 5], [8, 10, 13, 15], [19, 20, 21, 22], [31, 32, 33, 34], [36, 37, 38, 39]]
    assert [int(f["support"]) for f in out["folds"]] == [8, 19, 31, 36, 1]
    fold0 = out["folds"][0]
    assert [int(c) for c in fold0["train"]] == [10, 13, 15, 19, 20, 21, 22, 31, 32, 33, 34, 36, 37, 38, 39]


def test_sabs_reindexed_folds():
    out = make_folds([f"case_{i}" for i in range(30)], 5)["folds"]
    assert [f["test"][0] for f in out] == ["case_0", "case_6", "case_12", "case_18", "case_24"]
    assert [f["support"] for f in out] == ["case_6", "case_12", "case_18", "case_24", "case_0"]
    assert all(len(f["test"]) == 6 and len(f["train"]) == 23 for f in out)


def test_every_case_tested_once_and_support_apart():
    cases = [f"p{i}" for i in range(11)]
    folds = make_folds(cases, 5)["folds"]
    tested = [c for f in folds for c in f["test"]]
    assert sorted(tested, key=natural_key) == cases and len(set(tested)) == 11
    assert [len(f["test"]) for f in folds] == [3, 2, 2, 2, 2]  # near-equal, contiguous
    for f in folds:
        assert f["support"] not in f["test"] and f["support"] not in f["train"]
        assert not set(f["train"]) & set(f["test"])
        assert set(f["train"]) | set(f["test"]) | {f["support"]} == set(cases)


def test_deterministic_and_natural_order():
    cases = ["phantom_10", "phantom_2", "phantom_1", "phantom_0", "phantom_11", "phantom_3"]
    a, b = make_folds(cases, 3), make_folds(list(reversed(cases)), 3)
    assert a == b
    assert a["folds"][0]["test"] == ["phantom_0", "phantom_1"]
    assert a["folds"][2]["test"] == ["phantom_10", "phantom_11"]
    assert sorted(["b10", "a", "b2", "b1"], key=natural_key) == ["a", "b1", "b2", "b10"]


def test_errors():
    with pytest.raises(ValueError, match="4 cases cannot give 5 folds: 5 folds need a test case each"):
        make_folds(["a", "b", "c", "d"], 5)
    with pytest.raises(ValueError, match="duplicate case ids: \\['b'\\]"):
        make_folds(["a", "b", "b", "c", "d"], 2)
    with pytest.raises(ValueError, match="cannot give 1 folds"):
        make_folds(["a", "b", "c"], 1)
    with pytest.raises(ValueError, match="leave no training case.*n_folds 3 works.*needs at least 4 cases"):
        make_folds(["a", "b", "c"], 2)  # fold 0 tests a, b and takes c as support


def test_smallest_feasible_dataset_three_cases_in_three_folds():
    folds = make_folds(["a", "b", "c"], 3)["folds"]
    assert [(f["test"], f["support"], f["train"]) for f in folds] == [
        (["a"], "b", ["c"]), (["b"], "c", ["a"]), (["c"], "a", ["b"])]
    assert infeasible(3, 3) is None and infeasible(5, 5) is None


@pytest.mark.parametrize("n_cases", range(1, 16))
@pytest.mark.parametrize("n_folds", range(1, 8))
def test_feasibility_agrees_with_building_the_folds(n_cases, n_folds):
    """infeasible() is the one check (config and splits step): it admits exactly the
    (cases, folds) pairs whose every fold keeps a test, a support and a training case,
    computed here by building the blocks by hand."""
    if n_folds < 2 or n_cases < n_folds:
        buildable = False
    else:
        sizes = [n_cases // n_folds + (k < n_cases % n_folds) for k in range(n_folds)]
        buildable = all(n_cases - size - 1 >= 1 for size in sizes)
    assert (infeasible(n_cases, n_folds) is None) == buildable
    if buildable:
        folds = make_folds([f"c{i}" for i in range(n_cases)], n_folds)["folds"]
        assert all(f["train"] and f["test"] and f["support"] not in f["test"] for f in folds)
