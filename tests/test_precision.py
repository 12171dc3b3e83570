"""`amp: auto`: bf16 (with a channels-last encoder) where the device computes bf16
natively, float32 elsewhere; the detection mocked both ways on CUDA and on a CPU, the
config's acceptance of `auto`, and a training job that records which path ran."""

import contextlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import tiny_training as tiny
import torch
import yaml

from fsmis import config as C
from fsmis import precision as P
from fsmis import train as T

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
PRESETS = ["abd-mri", "abd-ct", "card-mri", "abdomenct1k"]
CFG = dict(steps=3, lr=1e-2, momentum=0.9, weight_decay=5e-4, lr_step=2, lr_gamma=0.5, bg_weight=0.05, fg_weight=1.0,
           align_weight=1.0, checkpoint_every=0, log_every=1)


@pytest.fixture
def cuda_bf16(monkeypatch):
    """``set(native)``: the CUDA device computes bf16 natively or not; an older device
    still reports bf16 when emulation counts (torch's default), as real ones do."""

    def set_native(native: bool):
        def is_bf16_supported(including_emulation: bool = True):
            return native or including_emulation

        monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)

    return set_native


@pytest.fixture
def cpu_bf16(monkeypatch):
    def set_native(native: bool):
        monkeypatch.setattr(P, "cpu_has_fast_bf16", lambda: native)

    return set_native


def test_auto_on_cuda_with_native_bf16(cuda_bf16):
    cuda_bf16(True)
    plan = P.resolve_amp("auto", "cuda")
    assert (plan.dtype, plan.channels_last, plan.amp, plan.path) == (torch.bfloat16, True, "bf16", "bf16+channels_last")
    assert plan.reason == "amp auto: CUDA device with native bf16"
    assert P.amp_dtype("auto", "cuda:0") == torch.bfloat16
    # model.channels_last: false is kept; true is what auto picks anyway
    assert P.resolve_amp("auto", "cuda", channels_last=False).path == "bf16"
    assert P.resolve_amp("auto", "cuda", channels_last=True).path == "bf16+channels_last"


def test_auto_on_cuda_without_native_bf16_is_float32(cuda_bf16):
    cuda_bf16(False)  # e.g. a V100 or T4: bf16 only emulated
    plan = P.resolve_amp("auto", "cuda")
    assert (plan.dtype, plan.channels_last, plan.amp, plan.path) == (None, False, False, "fp32")
    assert "without native bf16" in plan.reason
    assert P.amp_dtype("auto", "cuda") is None
    assert P.resolve_amp("auto", "cuda", channels_last=True).path == "fp32+channels_last"  # as asked
    # `amp: true` keeps its meaning there: bf16 when torch reports it, emulated or not
    assert P.amp_dtype(True, "cuda") == torch.bfloat16


def test_auto_on_a_cpu_with_native_bf16(cpu_bf16):
    cpu_bf16(True)
    plan = P.resolve_amp("auto", "cpu")
    assert (plan.dtype, plan.channels_last, plan.amp, plan.path) == (torch.bfloat16, True, "bf16", "bf16+channels_last")
    assert plan.reason == "amp auto: CPU with AVX512-BF16 or AMX"
    assert P.amp_dtype("auto", torch.device("cpu")) == torch.bfloat16


def test_auto_on_a_cpu_without_native_bf16_is_float32(cpu_bf16):
    cpu_bf16(False)
    plan = P.resolve_amp("auto", "cpu")
    assert (plan.dtype, plan.channels_last, plan.amp, plan.path) == (None, False, False, "fp32")
    assert "emulated" in plan.reason
    assert P.amp_dtype("auto", "cpu") is None


def test_cpu_detection_reads_torch_cpu_flags(monkeypatch):
    for avx512_bf16, amx, expected in [(False, False, False), (True, False, True), (False, True, True)]:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert P.cpu_has_fast_bf16() is expected


@pytest.mark.parametrize("amp, channels_last, path", [
    (None, None, "fp32"), (False, None, "fp32"), (False, True, "fp32+channels_last"), (True, None, "bf16"),
    ("bf16", True, "bf16+channels_last"), ("fp16", None, "fp16+grad_scaler"),
])
def test_explicit_settings_keep_their_meaning(cuda_bf16, amp, channels_last, path):
    """Only `auto` pairs channels-last with bf16; the explicit settings run as before."""
    cuda_bf16(True)
    plan = P.resolve_amp(amp, "cuda", channels_last)
    assert plan.path == path
    assert P.amp_dtype(plan.amp, "cuda") == plan.dtype == P.amp_dtype(amp, "cuda")  # the plan's setting gives it
    with pytest.raises(ValueError, match="amp must be one of"):
        P.resolve_amp("automatic", "cpu")


def _validated(text: str) -> dict:
    cfg = yaml.safe_load(text)
    C.validate(cfg, SCHEMA)
    return cfg


@pytest.mark.parametrize("preset", PRESETS)
def test_paper_presets_default_to_auto(preset):
    cfg = _validated((REPO / "workflow" / "presets" / f"{preset}.yaml").read_text(encoding="utf-8"))
    assert cfg["train"]["amp"] == "auto" and cfg["evaluate"]["amp"] == "auto"
    assert cfg["train"]["steps"] == 100000  # the partial train section still gets the schema's defaults


def test_config_accepts_auto_and_names_a_wrong_value():
    base = (REPO / "workflow" / "presets" / "abd-mri.yaml").read_text(encoding="utf-8")
    with pytest.raises(C.ConfigError) as err:
        _validated(base.replace("train:\n  amp: auto", "train:\n  amp: automatic"))
    assert len(str(err.value).splitlines()) == 1 and "train.amp" in str(err.value) and "auto" in str(err.value)
    demo = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    assert demo.get("train", {}).get("amp") in (None, False)  # the demo runs float32, as before


@pytest.mark.parametrize("native", [False, True])
def test_a_training_run_with_auto(tmp_path, cpu_bf16, native):
    """`amp: auto` trains float32, bit for bit `amp: false`, where bf16 is not native, and
    bf16 on a channels-last encoder where it is (emulated here, the model is tiny)."""
    cpu_bf16(native)
    seen = []
    model = tiny.model()
    model.backbone.register_forward_hook(lambda _m, i, out: seen.append((out.dtype, i[0].is_contiguous())))
    T.train(model, tiny.episodes(), dict(CFG, amp="auto"), tmp_path / "auto" / "model.pt",
            tmp_path / "auto" / "log.tsv", {}, device="cpu")
    assert np.isfinite(pd.read_csv(tmp_path / "auto" / "log.tsv", sep="\t")["loss"]).all()
    if native:
        assert {dtype for dtype, _ in seen} == {torch.bfloat16}
        return
    assert seen and all(dtype == torch.float32 and contiguous for dtype, contiguous in seen)
    plain = tiny.model()
    T.train(plain, tiny.episodes(), dict(CFG, amp=False), tmp_path / "off" / "model.pt", tmp_path / "off" / "log.tsv",
            {}, device="cpu")
    for key, value in plain.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key


class _Recorder:
    def __init__(self):
        self.params = {}

    def log_params(self, params):
        self.params.update(params)

    def log_metrics(self, *_args, **_kwargs):
        pass

    def log_artifact(self, *_args, **_kwargs):
        pass


def _write(array, path):
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return str(path)


@pytest.mark.parametrize("native, path", [(False, "fp32"), (True, "bf16+channels_last")])
def test_the_training_job_records_the_resolved_path(tmp_path, monkeypatch, cpu_bf16, native, path):
    """The train stage resolves `auto` once, hands the loop the explicit choice and
    records it in the job's run (param amp_resolved, with the reason)."""
    from fsmis.stages import training

    cpu_bf16(native)
    recorder = _Recorder()
    monkeypatch.setattr(training, "job", lambda *_a, **_k: contextlib.nullcontext(recorder))
    handed = {}
    real_train = T.train

    def spy(model, episodes, cfg, *args, **kwargs):
        handed.update(cfg)
        return real_train(model, episodes, cfg, *args, **kwargs)

    monkeypatch.setattr(T, "train", spy)
    cases = [f"phantom_{i:03d}" for i in range(4)]
    rng = np.random.default_rng(0)
    sp = np.zeros((3, 32, 32), np.int32)
    sp[:, :16], sp[:, 16:] = 1, 2
    images = {c: _write(rng.normal(size=(3, 32, 32)).astype(np.float32), tmp_path / f"{c}.nii.gz") for c in cases}
    labels = {c: _write(sp, tmp_path / f"{c}_sp.nii.gz") for c in cases}
    (tmp_path / "splits.json").write_text(json.dumps({"n_folds": 1, "folds": [
        {"fold": 0, "test": cases[3:], "support": cases[2], "train": cases[:2]}]}))
    names = ["liver", "spleen", "left_kidney", "right_kidney"]
    (tmp_path / "classmap.json").write_text(json.dumps({n: {c: [] for c in cases} for n in names}))
    cfg = yaml.safe_load("""
        experiment: t
        dataset: {name: phantom, n_cases: 4}
        model: {backbone: small_cnn, feature_dim: 8}
        train: {steps: 2, log_every: 1, checkpoint_every: 2, amp: auto}
        """)
    C.validate(cfg, SCHEMA)
    training.train("ssl_alpnet", "1", 0, cfg, {"architecture": "ssl_alpnet", "params": {}},
                   str(tmp_path / "splits.json"), str(tmp_path / "classmap.json"), images, labels,
                   str(tmp_path / "model.pt"), str(tmp_path / "log.tsv"), threads=1, tracking={})
    assert recorder.params["amp_resolved"] == path and recorder.params["amp_reason"].startswith("amp auto: CPU")
    assert (handed["amp"], handed["channels_last"]) == ((("bf16", True)) if native else (False, False))
    assert (tmp_path / "model.pt").exists()
