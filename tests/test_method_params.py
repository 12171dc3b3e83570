"""The method registry and the methods' parameter objects: the schema generated from
them, their one validator, the hooks of the base class, and a method from outside the
package added with one registry line (and run through a tiny workflow)."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_workflow, tiny_config

from fsmis import envvars
from fsmis.models import registry
from fsmis.models import schema as S
from fsmis.models.fewshot import FewShotSegmenter
from fsmis.models.panet import PANetParams
from fsmis.models.params import LocalPooling, MethodParams
from fsmis.models.ssl_alpnet import SSLALPNet, SSLALPNetParams

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
SMALL = {"backbone": "small_cnn", "feature_dim": 8}

# A whole method from outside the package: what a user writes (one module) ...
TOY_MODULE = '''
from dataclasses import dataclass

import torch

from fsmis.models import prototypes as P
from fsmis.models.fewshot import FewShotSegmenter
from fsmis.models.params import MethodParams, cosine_scale


@dataclass(frozen=True)
class ToyParams(MethodParams):
    """One mean prototype per class, as PANet."""

    scale: float = cosine_scale()


class Toy(FewShotSegmenter):
    Params = ToyParams

    def support_state(self, feats, fg):
        return {"bg": P.masked_average(feats, 1.0 - fg), "fg": P.masked_average(feats, fg)}

    def score(self, query_feats, state):
        return torch.cat([P.cosine_scores(query_feats, state[k], self.params.scale) for k in ("bg", "fg")], 1)
'''
# ... and the one registry line
TOY_LINE = "toy=toy_method:Toy"


@pytest.fixture
def toy(tmp_path, monkeypatch):
    (tmp_path / "toy_method.py").write_text(TOY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(envvars.FSMIS_EXTRA_METHODS, TOY_LINE)
    yield tmp_path
    sys.modules.pop("toy_method", None)


# --- the generated schema ---------------------------------------------------------------


def test_committed_schema_is_the_generated_one():
    text = SCHEMA.read_text(encoding="utf-8")
    assert S.generate(text) == text, f"the schema's method part is out of date: run {S.COMMAND}"


def test_check_command_reports_a_stale_schema_and_write_repairs_it(tmp_path, capsys):
    stale = tmp_path / "schema.yaml"
    stale.write_text(SCHEMA.read_text(encoding="utf-8").replace("default: 0.95", "default: 0.9", 1))
    assert S.main(["--check", "--schema", str(stale)]) == 1
    assert "default: 0.95" in capsys.readouterr().err  # the diff says what differs
    assert S.main(["--write", "--schema", str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == SCHEMA.read_text(encoding="utf-8")
    assert S.main(["--check", "--schema", str(stale)]) == 0


def test_schema_fills_every_methods_defaults_in_declaration_order():
    from snakemake.utils import validate

    cfg = {"experiment": "x", "dataset": {"name": "phantom"}}
    validate(cfg, str(SCHEMA))
    for name in registry.METHODS:
        expected = registry.params_class(name)().to_dict()
        # the order too: Snakemake compares a job's params by repr (a reordering reruns it)
        assert json.dumps(cfg["method_params"][name]) == json.dumps(expected), name
    schema = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))["properties"]
    assert schema["variants"]["additionalProperties"]["properties"]["method"]["enum"] == list(registry.METHODS)
    assert set(schema["methods"]["default"]) <= set(registry.METHODS)  # hand-written: checked here


def test_every_field_has_a_description():
    for name in registry.METHODS:
        props = S.params_schema(registry.params_class(name))["properties"]
        assert all(p["description"] for p in props.values()), name


def test_a_shared_group_is_declared_once_and_flat_in_the_config():
    for name in ("ssl_alpnet", "dspnet", "iplsl"):
        params = registry.params_class(name).from_dict({"threshold": 0.5, "test_window": 1}, name)
        assert params.pooling == LocalPooling(threshold=0.5, test_window=1)
        assert params.pooling.window(training=False) == 1
        assert {"threshold", "train_window", "test_window", "fg_switch_window"} <= set(params.to_dict())


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "values", "words"), [
    ("dspnet", {"alpah_fg": 0.3}, "unknown parameter(s) 'alpah_fg'"),
    ("dspnet", {"variant": "papr"}, "variant: must be one of ['code', 'paper']"),
    ("dspnet", {"ran": "no"}, "ran: expected true or false"),
    ("dspnet", {"alpha_bg": -0.1}, "alpha_bg: must be >= 0"),
    ("dspnet", {"bcma_taps": []}, "bcma_taps: needs at least 1"),
    ("dspnet", {"bcma_taps": [0.2, "x", 0.2]}, "bcma_taps: expected a number"),
    ("ssl_alpnet", {"train_window": 2.5}, "train_window: expected an integer"),
    ("ssl_alpnet", {"scale": 0}, "scale: must be > 0"),
    ("iplsl", {"high_weight": 1.5}, "high_weight: must be <= 1"),
    ("iplsl", {"decoder_channels": 0}, "decoder_channels: must be >= 1"),
])
def test_bad_values_are_refused_naming_the_method_and_key(method, values, words):
    with pytest.raises(ValueError) as err:
        registry.build(method, SMALL, values)
    assert f"'{method}'" in str(err.value) and words in str(err.value)


def test_values_take_their_declared_type():
    p = registry.params_class("dspnet").from_dict(
        {"scale": 10, "train_window": 2.0, "bcma_taps": [1, 0.5, 1], "threshold": 1}, "dspnet")
    assert (p.scale, p.pooling.train_window, p.bcma_taps, p.pooling.threshold) == (10.0, 2, (1.0, 0.5, 1.0), 1.0)
    assert type(p.scale) is float and type(p.pooling.train_window) is int
    assert p.to_dict()["bcma_taps"] == [1.0, 0.5, 1.0]
    assert registry.params_class("iplsl").from_dict({"decoder_channels": None}, "iplsl").decoder_channels is None


def test_parameter_objects_are_frozen_and_checked_when_made_directly():
    p = SSLALPNetParams()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.scale = 1.0
    with pytest.raises(ValueError, match="SSLALPNetParams: empty_bg: must be one of"):
        SSLALPNetParams(empty_bg="ignore")
    with pytest.raises(ValueError, match="pooling: expected a LocalPooling"):
        SSLALPNetParams(pooling={"threshold": 0.5})
    assert dataclasses.replace(p, scale=5).scale == 5.0  # replace() validates as well


def test_a_method_takes_its_own_parameter_object():
    from fsmis.models import backbones

    net = SSLALPNet.from_keywords(backbones.build("small_cnn", feature_dim=8), threshold=0.8)
    assert net.params == SSLALPNetParams(pooling=LocalPooling(threshold=0.8))
    with pytest.raises(TypeError, match="takes SSLALPNetParams"):
        SSLALPNet(net.backbone, PANetParams())


def test_variant_params_are_validated_when_built():
    config = {"method_params": {"panet": {"scale": 20.0}},
              "variants": {"panet_bad": {"method": "panet", "params": {"scael": 5.0}}}}
    arch, params = registry.resolve("panet_bad", config, "1")
    with pytest.raises(ValueError, match="'panet'.*'scael'"):
        registry.build(arch, SMALL, params)


# --- hooks of the base class ----------------------------------------------------------------


def test_optional_hooks_are_declared_on_the_base_class_with_defaults():
    assert FewShotSegmenter.takes_query_label is False
    assert FewShotSegmenter.Params is MethodParams
    for name in registry.METHODS:
        cls = registry.method_class(name)
        assert issubclass(cls.Params, MethodParams) and isinstance(cls.takes_query_label, bool)
    assert registry.method_class("iplsl").takes_query_label is True
    assert "takes_query_label" in FewShotSegmenter.__doc__ and "Params" in FewShotSegmenter.__doc__


# --- the registry ----------------------------------------------------------------------------


def test_registry_imports_without_torch():
    code = "import sys, fsmis.models.registry as r; r.names(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8", check=True)
    assert out.stdout.strip() == "False"


def test_one_environment_line_registers_a_method_from_outside(toy):
    assert registry.names() == [*registry.METHODS, "toy"]
    torch.manual_seed(0)
    net = registry.build("toy", SMALL, {"scale": 10})
    assert net.params.scale == 10.0
    img, fg = torch.randn(1, 3, 32, 32), torch.zeros(1, 32, 32)
    fg[:, 8:24, 8:24] = 1
    logits, losses = net.train()(img, fg, img)
    assert logits.shape == (1, 2, 32, 32) and "align" in losses
    with pytest.raises(ValueError, match="'toy'.*'sacle'"):
        registry.build("toy", SMALL, {"sacle": 1.0})


def test_register_adds_a_method_in_this_process(toy, monkeypatch):
    monkeypatch.delenv(envvars.FSMIS_EXTRA_METHODS)
    monkeypatch.setattr(registry, "_registered", {})
    assert "toy" not in registry.names()
    registry.register("toy", "toy_method:Toy")
    assert registry.method_class("toy").__name__ == "Toy"
    registry.register("toy", "toy_method:Toy")  # the same again: nothing changes


@pytest.mark.parametrize(("line", "words"), [
    ("toy", "expected name=module:Class"),
    ("to-y=toy_method:Toy", "letters, digits and _"),
    ("untrained=toy_method:Toy", "letters, digits and _"),
    ("toy=toy_method", "must point to 'module:Class'"),
    ("panet=toy_method:Toy", "registered twice"),
])
def test_bad_registry_lines_are_refused(monkeypatch, line, words):
    monkeypatch.setenv(envvars.FSMIS_EXTRA_METHODS, line)
    with pytest.raises(ValueError, match=words):
        registry.names()


# --- a method from outside, through the workflow ---------------------------------------------


@pytest.mark.slow
def test_a_method_from_outside_runs_through_the_workflow(tmp_path):
    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "toy_method.py").write_text(TOY_MODULE)
    config = tiny_config(experiment="plugin", preprocess={"image_size": 32},
                         model={"backbone": "small_cnn", "feature_dim": 8}, methods=["toy"],
                         method_params={"toy": {"scale": 10.0}},
                         train={"steps": 3, "checkpoint_every": 3, "log_every": 1})
    pythonpath = os.pathsep.join(p for p in (str(tmp_path / "plugin"), os.environ.get("PYTHONPATH")) if p)
    run = run_workflow(tmp_path, "--cores", "2", "--until", "evaluate",  # no report: the metrics are the point
                       config=config, timeout=900,
                       env={"PYTHONPATH": pythonpath, envvars.FSMIS_EXTRA_METHODS: TOY_LINE})  # the one registry line
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-8000:]
    found = [p for p in (tmp_path / "results").rglob("metrics.json") if "toy" in p.parts]
    assert len(found) == 1, found
    metrics = json.loads(found[0].read_text(encoding="utf-8"))
    assert metrics["method"] == "toy"
    assert 0.0 <= metrics["protocols"]["oracle"]["mean_dice"] <= 1.0
