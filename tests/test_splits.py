"""Folds as the reference builds them."""

import pytest

from fsmis.data.splits import make_folds

CHAOS = [1, 2, 3, 5, 8, 10, 13, 15, 19, 20, 21, 22, 31, 32, 33, 34, 36, 37, 38, 39]


def test_reproduces_the_chaos_folds_of_the_reference():
    folds = make_folds([f"case_{p}" for p in reversed(CHAOS)], 5)["folds"]  # order of input is irrelevant
    tests = [[int(c.split("_")[1]) for c in f["test"]] for f in folds]
    supports = [int(f["support"].split("_")[1]) for f in folds]
    assert tests == [[1, 2, 3, 5], [8, 10, 13, 15], [19, 20, 21, 22], [31, 32, 33, 34], [36, 37, 38, 39]]
    assert supports == [8, 19, 31, 36, 1]
    assert len(folds[0]["train"]) == 15


def test_every_case_tested_once_support_apart():
    cases = [f"p{i}" for i in range(11)]
    folds = make_folds(cases, 5)["folds"]
    tested = [c for f in folds for c in f["test"]]
    assert sorted(tested) == sorted(cases) and len(tested) == len(set(tested))
    for f in folds:
        assert f["support"] not in f["test"] and f["support"] not in f["train"]
        assert set(f["train"]) | set(f["test"]) | {f["support"]} == set(cases)
    assert [len(f["test"]) for f in folds] == [3, 2, 2, 2, 2]
    assert make_folds(cases, 5) == make_folds(list(reversed(cases)), 5)


def test_too_few_cases():
    with pytest.raises(ValueError, match="cannot give 5 folds"):
        make_folds(["a", "b", "c", "d", "e"], 5)
