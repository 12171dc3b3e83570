"""Speed work: the amp option (off = float32 exactly as before, on = bf16 on a CPU),
work shared across classes at evaluation, superpixel workers from the rule's threads,
and the benchmark script's parsing and reference guard."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tiny_training as tiny
import torch

from fsmis import evaluate as E
from fsmis import precision as P
from fsmis import protocols
from fsmis import train as T
from fsmis.models.prototypes import resize_mask, segmentation_loss

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import speed  # noqa: E402

CFG = dict(steps=3, lr=1e-2, momentum=0.9, weight_decay=5e-4, lr_step=2, lr_gamma=0.5, bg_weight=0.05, fg_weight=1.0,
           align_weight=1.0, checkpoint_every=0, log_every=1)


def test_amp_choices():
    assert P.amp_dtype(False, "cpu") is None and P.amp_dtype(None, "cpu") is None
    assert P.amp_dtype(True, "cpu") == torch.bfloat16 and P.amp_dtype("bf16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="CUDA"):
        P.amp_dtype("fp16", "cpu")
    with pytest.raises(ValueError, match="amp must be"):
        P.amp_dtype("int8", "cpu")
    assert P.make_grad_scaler(torch.bfloat16, "cpu") is None and P.make_grad_scaler(None, "cpu") is None


def test_amp_off_is_the_plain_float32_step(tmp_path):
    """amp false (or absent) trains exactly the hand-written float32 loop."""
    models = {}
    for name, cfg in {"absent": CFG, "false": dict(CFG, amp=False)}.items():
        models[name] = tiny.model()
        T.train(models[name], tiny.episodes(), cfg, tmp_path / name / "model.pt", tmp_path / name / "log.tsv", {},
                device="cpu")
    plain = tiny.model()
    opt, sched = T.make_optimizer(plain, CFG)
    episodes = tiny.episodes()
    for _ in range(CFG["steps"]):
        b = episodes.sample()
        logits, aux = plain(b["sup_img"], b["sup_fg"], b["qry_img"])
        loss = segmentation_loss(logits, b["qry_label"], 0.05, 1.0) + aux["align"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    expected = plain.state_dict()
    for model in models.values():
        for k, v in model.state_dict().items():
            assert torch.equal(v, expected[k]), k
        assert "encode" not in vars(model)


@pytest.mark.parametrize("method", ["ssl_alpnet", "iplsl"])
def test_amp_training_runs_in_bf16_on_cpu(tmp_path, method):
    model = tiny.model(method)
    seen = []
    model.backbone.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    T.train(model, tiny.episodes(), dict(CFG, amp=True), tmp_path / "model.pt", tmp_path / "log.tsv", {}, device="cpu")
    log = pd.read_csv(tmp_path / "log.tsv", sep="\t")
    assert len(log) == CFG["steps"] and np.isfinite(log["loss"]).all()
    assert set(seen) == {torch.bfloat16}  # the encoder ran under autocast
    assert "encode" not in vars(model)  # the model is left as it was
    assert all(p.dtype == torch.float32 for p in model.parameters())


def _scan(case, seed):
    rng = np.random.default_rng(seed)
    label = np.zeros((9, 32, 32), np.uint8)
    label[1:8, 4:14, 4:14] = 1
    label[2:6, 18:28, 16:26] = 2
    image = (rng.normal(size=label.shape) + 2.0 * label).astype(np.float32)
    return E.Scan(case, image, label, (3.0, 1.0, 1.0))


def test_evaluation_amp_off_is_float32_and_amp_on_runs():
    model = tiny.model()
    support, query = _scan("s", 0), _scan("q", 1)
    classes = {"liver": 1, "spleen": 2}
    plain_rows, plain = E.evaluate_scans(E.ModelPredictor(model, "cpu"), support, [query], classes)
    off_rows, off = E.evaluate_scans(E.ModelPredictor(model, "cpu", amp=False), support, [query], classes)
    assert np.array_equal(plain["oracle"]["q"], off["oracle"]["q"])
    # one class's prediction computed by hand, without the predictor's caches
    _, liver = E.evaluate_scans(E.ModelPredictor(model, "cpu"), support, [query], {"liver": 1})
    model.eval()
    with torch.no_grad():
        z_sup = protocols.support_slices(support.label, 1, 3)[1]
        feats = model.encode(torch.from_numpy(support.image[z_sup])[None, None].expand(1, 3, 32, 32))
        fg = torch.from_numpy((support.label[z_sup] == 1).astype(np.float32))[None]
        state = model.support_state(feats, resize_mask(fg, feats.shape[-2:]))
        zq = protocols.query_plan("oracle", query.label, 1, 3)[1]
        q = model.encode(torch.stack([torch.from_numpy(query.image[z]) for z in zq])[:, None].expand(-1, 3, 32, 32))
        by_hand = (model.predict(q, state, (32, 32)).argmax(1) == 1).numpy()
    assert np.array_equal(liver["oracle"]["q"][zq] == 1, by_hand) and by_hand.any()
    predictor = E.ModelPredictor(model, "cpu", amp=True)
    rows, preds = E.evaluate_scans(predictor, support, [query], classes, ("oracle", "full"))
    assert preds["oracle"]["q"].shape == query.label.shape and len(rows) == 4
    assert all(np.isfinite(r["dice"]) for r in rows)
    assert "encode" not in vars(model)


def test_each_slice_is_encoded_once_for_all_classes_and_protocols():
    model = tiny.model()
    support, query = _scan("s", 0), _scan("q", 1)
    classes = {"liver": 1, "spleen": 2}
    predictor = E.ModelPredictor(model, "cpu")
    E.evaluate_scans(predictor, support, [query], classes, ("oracle", "full"))
    distinct_support = {z for cid in classes.values() for z in protocols.support_slices(support.label, cid, 3)}
    assert predictor.encoded == {"support": len(distinct_support), "query": query.label.shape[0]}
    assert predictor.support_states == 3 * len(classes)  # once per class and support slice


def test_superpixel_rule_threads_reach_the_workers(tmp_path, monkeypatch):
    """fsmis.stages.data.superpixels hands the job's threads to compute() as worker processes,
    and the job script passes Snakemake's threads."""
    import SimpleITK as sitk

    from fsmis.data import superpixels as superpixel_maps
    from fsmis.stages import data

    monkeypatch.setenv("FSMIS_TRACKING", "off")  # log nowhere
    monkeypatch.chdir(tmp_path)
    image = sitk.GetImageFromArray(np.full((2, 16, 16), 100.0, np.float32))
    sitk.WriteImage(image, str(tmp_path / "image.nii.gz"))
    seen = {}

    def fake(volume, modality, params, workers=1):
        seen["workers"] = workers
        return np.ones(volume.shape, np.int32)

    monkeypatch.setattr(superpixel_maps, "compute", fake)
    data.superpixels("c", "CT", {}, str(tmp_path / "image.nii.gz"), str(tmp_path / "sp.nii.gz"), 2,
                     {"experiment": "test-speed"})
    assert seen["workers"] == 2
    script_path = Path(__file__).resolve().parents[1] / "workflow" / "scripts" / "superpixels.py"
    script = script_path.read_text(encoding="utf-8")
    assert "threads=snakemake.threads" in script


def test_benchmark_demo_log_and_partition(tmp_path):
    log = tmp_path / "x.snakemake.log"
    log.write_text("Provided cores: 2\njob count\nall 1\n[Sun Nov 22 03:34:09 2026]\nrule a:\n"
                   "[Sun Nov 22 03:40:19 2026]\n36 of 36 steps (100%) done\n")
    row = speed.demo_row(str(log))
    assert row["median"] == 370.0 and row["counts"] == "jobs=36/36" and row["threads"] == "2"
    bench = tmp_path / "benchmarks" / "train" / "x"
    bench.mkdir(parents=True)
    (bench / "a.tsv").write_text("s\th:m:s\n12.5\t0:00:12\n")
    (bench / "b.tsv").write_text("s\th:m:s\n7.5\t0:00:07\n")
    assert speed.demo_row(str(tmp_path / "benchmarks"))["median"] == 20.0
    a = np.array([[1, 1, 2], [3, 3, 2]])
    assert speed.same_partition(a, a + 5) and not speed.same_partition(a, np.array([[1, 1, 1], [3, 3, 2]]))


def test_benchmark_child_measures_our_training_step():
    job = {"figure": "train", "impl": "ours", "method": "ssl_alpnet", "backbone": "small_cnn", "size": 32,
           "precision": "amp", "threads": 1, "device": "cpu", "seed": 0, "fg": "organ", "slices": 6, "steps": 2,
           "warmup": 1}
    result = speed.run_child(job)
    assert result["median"] > 0 and result["peak_rss_mb"] > 0
    assert "params_without_grad=0" in result["counts"]


def test_reference_needs_a_checkout_and_torchvision(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="grid_proto_fewshot"):
        speed.reference_kind(str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "grid_proto_fewshot.py").write_text("raise AssertionError('not to be imported')\n")
    assert speed.reference_kind(str(tmp_path)) == "ssl_alpnet"
    monkeypatch.setitem(sys.modules, "torchvision", None)  # as if not installed
    with pytest.raises(SystemExit, match="needs torchvision.*--reference-libs"):
        speed.import_reference(str(tmp_path), None)
    assert speed.tv_version("2.13.0+cpu") == "0.28.*"


def test_channels_last_encoder_matches_and_is_undone():
    model = tiny.model().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = model.encode(x)
        with P.autocast_encoder(model, None, channels_last=True):
            assert model.backbone.stem[0][0].weight.is_contiguous(memory_format=torch.channels_last)
            cl = model.encode(x)
    assert cl.is_contiguous() and cl.dtype == torch.float32
    assert torch.allclose(plain, cl, atol=1e-5)
    assert "encode" not in vars(model) and model.backbone.stem[0][0].weight.is_contiguous()
