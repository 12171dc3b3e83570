"""The config checks the schema cannot express (fsmis.config), without Snakemake."""

import copy
import hashlib
import json

import pytest

from fsmis import config as C

BASE = {
    "experiment": "x", "dataset": {"name": "phantom", "n_cases": 6}, "n_folds": 3, "settings": [1, "2"],
    "methods": ["ssl_alpnet"], "variants": {"mine": {"method": "dspnet"}}, "model": {"pretrained": None},
    "evaluate": {},
}
REGISTERED = ["ssl_alpnet", "panet", "dspnet", "iplsl"]


def cfg(**over):
    out = copy.deepcopy(BASE)
    out.update(over)
    return out


def test_normalise_spellings_and_folds_follow_n_folds():
    got = C.check(cfg(), REGISTERED)
    assert got["settings"] == ["1", "2"] and got["folds"] == [0, 1, 2]
    got = C.normalise(cfg(folds=["2", 0], dataset={"name": "abdomenct1k", "cases": "5", "exclude": ["3", "x"],
                                                    "subtask": "1"}))
    assert got["folds"] == [2, 0]
    assert got["dataset"] == {"name": "abdomenct1k", "cases": 5, "exclude": [3, "x"], "subtask": 1}
    assert C.normalise(cfg(dataset={"name": "phantom", "cases": "all"}))["dataset"]["cases"] == "all"


@pytest.mark.parametrize(("over", "message"), [
    ({"dataset": {"name": "nope"}}, "dataset.name 'nope' is not a registered dataset; known: phantom,"),
    ({"folds": [0, 0]}, "folds lists an entry twice: [0, 0]"),
    ({"folds": [3]}, "folds [3] do not exist with n_folds=3 (folds are numbered 0..2)"),
    ({"methods": ["ssl_alpnet", "foo"]}, "methods ['foo'] are neither registered"),
    ({"n_folds": 2, "dataset": {"name": "phantom", "n_cases": 3}},
     "dataset 'phantom', n_folds=2: 3 cases cannot give 2 folds"),
    ({"model": {"pretrained": ""}}, "model.pretrained is empty; use null for random init"),
])
def test_check_names_the_problem(over, message):
    with pytest.raises(C.ConfigError) as err:
        C.check(cfg(**over), REGISTERED)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_variants_count_as_methods():
    assert C.check(cfg(methods=["mine", "panet"]), REGISTERED)["methods"] == ["mine", "panet"]


def test_config_hash_is_the_sha256_of_the_canonical_json():
    config = {"b": [1, 2], "a": {"z": "é", "y": None}}
    text = '{"a":{"y":null,"z":"\\u00e9"},"b":[1,2]}'
    assert json.dumps(config, sort_keys=True, separators=(",", ":")) == text
    assert C.config_hash(config) == hashlib.sha256(text.encode()).hexdigest()[:12]
    assert C.config_hash({"a": {"y": None, "z": "é"}, "b": [1, 2]}) == C.config_hash(config)  # key order


def test_case_ids_come_from_the_adapter():
    assert C.case_ids({"name": "phantom", "n_cases": 3}) == ["phantom_000", "phantom_001", "phantom_002"]
    with pytest.raises(C.ConfigError, match="config: dataset 'nifti_folder': .*root"):
        C.case_ids({"name": "nifti_folder"})


@pytest.mark.parametrize(("value", "kind", "on"), [
    (None, "local", True), (None, "generated", False), ("auto", "zenodo", False), (True, "generated", True),
    (False, "local", False)])
def test_source_grid_predictions(value, kind, on):
    evaluate = {} if value is None else {"source_grid_predictions": value}
    assert C.source_grid_predictions({"evaluate": evaluate}, kind) is on
