"""Config errors against the schema, one line each (fsmis.config.validate, issue 16).

The formatter is tested in-process on bad configs; two dry-runs check what the console
shows for a misspelt key and for a wrong value (at most 3 lines, no schema dump)."""

import copy

import pytest
import yaml
from conftest import DEMO_CONFIG, REPO, run_workflow

from fsmis import config as C
from fsmis import envvars

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def demo() -> dict:
    return yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8"))


def problems(cfg: dict) -> list[str]:
    """The lines of the ConfigError that ``cfg`` raises."""
    with pytest.raises(C.ConfigError) as err:
        C.validate(cfg, SCHEMA)
    return str(err.value).splitlines()


def with_(**changes) -> dict:
    """The demo config with ``changes``: ``train__steps=5`` sets cfg["train"]["steps"]."""
    cfg = demo()
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        where = cfg
        for parent in parents:
            where = where.setdefault(parent, {})
        where[key] = value
    return cfg


@pytest.fixture(autouse=True)
def no_detail(monkeypatch):
    monkeypatch.delenv(envvars.FSMIS_CONFIG_DETAIL, raising=False)


# --- one line per problem ---------------------------------------------------------------


def test_misspelt_top_level_key_names_the_nearest_key():
    cfg = demo()
    cfg["experimnt"] = cfg.pop("experiment")
    # one line: the missing `experiment` is the misspelt key's
    assert problems(cfg) == ["config: `experimnt`: unknown key; did you mean `experiment`?"]


def test_a_missing_required_key_is_named():
    cfg = demo()
    del cfg["dataset"]["name"]
    assert problems(cfg) == ["config: `dataset.name`: missing; this key is required"]


def test_misspelt_nested_key_names_the_nearest_key_with_its_path():
    cfg = demo()
    cfg["train"]["stpes"] = cfg["train"].pop("steps")
    assert problems(cfg) == ["config: `train.stpes`: unknown key; did you mean `train.steps`?"]


def test_key_at_the_wrong_level_names_where_it_belongs():
    assert problems(with_(steps=5)) == ["config: `steps`: unknown key here; did you mean `train.steps`?"]


def test_unknown_key_without_a_near_one_lists_the_allowed_keys():
    [line] = problems(with_(report__colour="red"))
    assert line == "config: `report.colour`: unknown key; allowed: `reference`"


def test_wrong_enum_value_names_the_allowed_values():
    assert problems(with_(evaluate={"protocols": ["oracel"]})) == [
        "config: `evaluate.protocols[0]`: got 'oracel'; expected one of 'oracle', 'full' (did you mean 'oracle'?)"]


def test_wrong_type_names_the_expected_type():
    assert problems(with_(train__steps="many")) == ["config: `train.steps`: got 'many'; expected an integer >= 0"]


def test_below_the_minimum_names_the_bound():
    assert problems(with_(preprocess__image_size=8)) == [
        "config: `preprocess.image_size`: got 8; expected an integer >= 16"]


def test_two_errors_give_two_lines_sorted_by_key_path():
    cfg = with_(train__stpes=5, model__backbone="resnet")
    assert problems(cfg) == [
        "config: `model.backbone`: got 'resnet'; expected one of 'deeplabv3_resnet101', 'resnet50', 'small_cnn' "
        "(did you mean 'resnet50'?)",
        "config: `train.stpes`: unknown key; did you mean `train.steps`?",
    ]


def test_alternatives_are_listed_or_the_one_meant_is_followed():
    # neither alternative fits: both are named
    assert problems(with_(evaluate={"supports": 0})) == [
        "config: `evaluate.supports`: got 0; expected an integer >= 1 or 'all'"]
    # a mapping of modalities was meant: the problem inside it is shown
    assert problems(with_(dataset__modality={"case1": "PET"})) == [
        "config: `dataset.modality.case1`: got 'PET'; expected one of 'CT', 'MR'"]


def test_a_wrong_type_where_a_mapping_belongs_is_one_line():
    # the default filling must not fail on it (it runs on every error, not the first)
    assert problems(with_(train=5)) == ["config: `train`: got 5; expected a mapping"]


def test_long_values_are_cut():
    [line] = problems(with_(experiment="x y" * 100))
    value = line.split("got ", 1)[1].split("; expected")[0]
    assert len(value) == 60 and value.endswith("...")


def test_the_detail_variable_adds_jsonschemas_message(monkeypatch):
    monkeypatch.setenv(envvars.FSMIS_CONFIG_DETAIL, "1")
    [line] = problems(with_(train__stpes=5))
    assert line.startswith("config: `train.stpes`: unknown key; did you mean `train.steps`? [jsonschema: ")
    assert "'stpes' was unexpected" in line and "schema: properties/train/additionalProperties]" in line


# --- defaults: filled as snakemake.utils.validate fills them ------------------------------


@pytest.mark.parametrize("path", [DEMO_CONFIG, REPO / "workflow" / "presets" / "abd-mri.yaml", None])
def test_defaults_are_filled_as_snakemake_fills_them(path):
    from snakemake.utils import validate as snakemake_validate

    cfg = yaml.safe_load(path.read_text(encoding="utf-8")) if path else {"experiment": "x",
                                                                          "dataset": {"name": "phantom"}}
    ours, theirs = copy.deepcopy(cfg), copy.deepcopy(cfg)
    C.validate(ours, SCHEMA)
    snakemake_validate(theirs, str(SCHEMA))
    assert ours == theirs
    assert ours != cfg and ours["train"]["lr"] == 0.001  # something was filled


# --- the console of a dry-run -------------------------------------------------------------


@pytest.mark.parametrize(("change", "message"), [
    ({"train": {"stpes": 700}}, "config: `train.stpes`: unknown key; did you mean `train.steps`?"),
    ({"evaluate": {"protocols": ["oracel"]}}, "config: `evaluate.protocols[0]`: got 'oracel'; expected one of"),
])
def test_a_config_error_takes_at_most_three_console_lines(tmp_path, change, message):
    cfg = demo()
    cfg.update(change)
    result = run_workflow(tmp_path, "--dry-run", config=cfg)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode != 0
    assert any(message in line for line in lines), lines
    assert len(lines) <= 3, "\n".join(lines)
