"""Typed files between the stages (fsmis.contracts): each reads back what the stages
write, writes the same bytes as before, refuses a broken file naming the field, and
docs/contracts.md names every field."""

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest

from fsmis import contracts as C
from fsmis.data.splits import make_folds
from fsmis.errors import InputError
from fsmis.io import write_json

REPO = Path(__file__).resolve().parents[1]


def _same_bytes(obj, typed, tmp_path):
    """``typed.write`` gives the bytes ``io.write_json(obj)`` gave before the types."""
    write_json(obj, tmp_path / "plain.json")
    typed.write(tmp_path / "typed.json")
    return (tmp_path / "plain.json").read_bytes() == (tmp_path / "typed.json").read_bytes()


def _metrics():
    """What fsmis.stages.evaluation.evaluate writes: NaN for a class no scan had a value for."""
    return {"method": "panet", "setting": "2", "fold": 1, "seed": 3, "dataset": "phantom",
            "supports": ["phantom_004", "phantom_005"], "support": "phantom_004",
            "support_by_class": {"liver": "phantom_004", "spleen": "phantom_005"}, "support_missing": [],
            "groups": {"left_kidney+right_kidney": ["left_kidney", "right_kidney"],
                       "liver+spleen": ["liver", "spleen"]},
            "protocols": {p: {"dice": {"liver": 0.81, "spleen": 0.5, "left_kidney": float("nan"), "right_kidney": 1.0},
                              "mean_dice": 0.77, "n_cases": 2, "support_missing": ["left_kidney"]}
                          for p in ("oracle", "full")}}


def _meta():
    return {"method": "untrained", "architecture": "ssl_alpnet", "setting": "1", "fold": 0, "group": "all",
            "model": {"backbone": "small_cnn", "feature_dim": 16}, "method_params": {"threshold": 0.95},
            "config_hash": "0a1b2c3d4e5f", "test_classes": ["liver", "spleen"], "norm": {"mean": 1.5, "std": 2.0},
            "modality": "CT"}


def test_splits_round_trip_byte_for_byte(tmp_path):
    folds = make_folds([f"c{i}" for i in range(7)], 3)
    splits = C.Splits.from_json(folds)
    assert splits.to_json() == folds and splits.n_folds == 3
    assert splits.fold(1).test == tuple(folds["folds"][1]["test"])
    assert _same_bytes(folds, splits, tmp_path)
    assert C.Splits.read(tmp_path / "typed.json") == splits
    with pytest.raises(ValueError, match="no fold 3"):
        splits.fold(3)


def test_classmap_round_trip_byte_for_byte(tmp_path):
    index = {"liver": {"a": [3, 4, 5], "b": []}, "spleen": {"a": [], "b": [1]}}
    classmap = C.ClassMap.from_json(index)
    assert classmap.of("liver", "a") == (3, 4, 5) and classmap.of("kidney", "a") == ()
    assert _same_bytes(index, classmap, tmp_path)
    assert C.ClassMap.read(tmp_path / "typed.json") == classmap


def test_metrics_round_trip_byte_for_byte(tmp_path):
    data = _metrics()
    metrics = C.Metrics.from_json(data)
    assert _same_bytes(data, metrics, tmp_path)
    back = C.Metrics.read(tmp_path / "typed.json")
    assert back.fold == 1 and back.groups["liver+spleen"] == ("liver", "spleen")
    assert math.isnan(back.protocols["oracle"].dice["left_kidney"])
    # an older file: only the required keys
    old = C.Metrics.from_json({"method": "m", "setting": 1, "fold": 0.0,
                               "protocols": {"oracle": {"dice": {"x": None}}}})
    assert old.setting == "1" and old.fold == 0 and old.support is None
    assert math.isnan(old.protocols["oracle"].mean_dice)


def test_model_meta_round_trip(tmp_path):
    import torch

    meta = C.ModelMeta.from_json(_meta())
    assert meta.to_json() == _meta() and list(meta.to_json()) == list(_meta())  # same keys, same order
    state = {"w": torch.arange(3.0)}
    meta.write(tmp_path / "model.pt", state, step=7)
    back, weights = C.ModelMeta.load(tmp_path / "model.pt")
    assert back == meta and torch.equal(weights["w"], state["w"])
    assert torch.load(tmp_path / "model.pt", weights_only=True)["step"] == 7
    assert C.ModelMeta.from_json({**_meta(), "norm": None}).norm is None


@pytest.mark.parametrize("cls, data, field", [
    (C.Splits, {"n_folds": 1}, "missing key(s) folds"),
    (C.Splits, {"n_folds": 2, "folds": [{"fold": 0, "test": ["a"], "support": "b", "train": ["c"]}]}, "folds: 1 folds"),
    (C.Splits, {"n_folds": 1, "folds": [{"fold": 0, "test": ["a"], "support": "a", "train": []}]}, "folds[0].support"),
    (C.Splits, {"n_folds": 1, "folds": [{"fold": 0, "test": ["a"], "support": "b", "train": ["a"]}]}, "folds[0].train"),
    (C.Splits, {"n_folds": 1, "folds": [{"fold": 1, "test": ["a"], "support": "b", "train": []}]}, "folds[0].fold"),
    (C.Splits, {"n_folds": 1, "folds": [{"fold": 0, "test": [], "support": "b", "train": []}]}, "folds[0].test"),
    (C.ClassMap, {"liver": {"a": [1, -2]}}, "liver.a"),
    (C.ClassMap, {"liver": ["a"]}, "liver"),
    (C.Metrics, {"method": "m", "setting": "1", "fold": 0}, "missing key(s) protocols"),
    (C.Metrics, {"method": "m", "setting": "1", "fold": True, "protocols": {}}, "fold must be an integer"),
    (C.Metrics, {"method": "m", "setting": "1", "fold": 0, "protocols": {"oracle": {"dice": {"liver": 78.4}}}},
     "protocols.oracle.dice.liver"),
    (C.Metrics, {"method": "m", "setting": "1", "fold": 0, "protocols": {"full": {"mean_dice": 0.5}}},
     "protocols.full.dice"),
    (C.Metrics, {"method": "m", "setting": "1", "fold": 0, "protocols": {"oracle": {"dice": {"a": 0.5}}},
                 "groups": {"all": "a"}}, "groups.all"),
    (C.ModelMeta, {k: v for k, v in _meta().items() if k != "norm"}, "missing key(s) norm"),
    (C.ModelMeta, {**_meta(), "norm": {"mean": 0.0, "std": float("nan")}}, "meta.norm.std"),
    (C.ModelMeta, {**_meta(), "fold": "zero"}, "meta.fold"),
])
def test_a_broken_file_names_the_file_and_the_field(tmp_path, cls, data, field):
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(InputError) as err:
        cls.from_json(json.loads(path.read_text(encoding="utf-8")), path) if cls is C.ModelMeta else cls.read(path)
    assert str(path) in str(err.value) and field in str(err.value)


def test_missing_or_invalid_json_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        C.Splits.read(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="invalid JSON"):
        C.Metrics.read(tmp_path / "bad.json")


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


# each typed file and the docs/contracts.md section that describes it
DOCUMENTED = [
    (C.ModelMeta, "Checkpoint `model.pt`"),
    (C.Splits, "Evaluation outputs"),
    (C.Fold, "Evaluation outputs"),
    (C.ClassMap, "Evaluation outputs"),
    (C.Metrics, "Evaluation outputs"),
    (C.ProtocolResult, "Evaluation outputs"),
]


@pytest.mark.parametrize("cls, heading", DOCUMENTED, ids=[c.__name__ for c, _ in DOCUMENTED])
def test_docs_name_every_field(cls, heading):
    """docs/contracts.md cannot fall behind the types: every field appears as a word in
    a code span of the section on that file, and the class is named there."""
    section = _section((REPO / "docs" / "contracts.md").read_text(encoding="utf-8"), heading)
    words = {w for span in re.findall(r"`([^`]+)`", section) for w in re.findall(r"\w+", span)}
    assert cls.__name__ in words, f"{cls.__name__} not named in section {heading!r}"
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in words]
    assert not missing, f"docs/contracts.md, {heading!r}: {cls.__name__} fields not described: {missing}"
