"""The report's figures as a reader sees them: the support slice each protocol used,
the colour key and titles of the overlays, the training curves as small multiples
(median and min-max band per method), and every figure as PNG, PDF and SVG."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fsmis.io import write_json
from fsmis.report import figures

LIVER = 1  # canonical class id (fsmis.labels)


def _volume(array, path: Path) -> str:
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return str(path)


@pytest.fixture
def evaluated(tmp_path):
    """A query scan of 30 slices with the liver on 20..28 and a support scan with it on
    3..11; method ``a`` evaluated with seeds 1 and 0 (seed 0's predictions differ)."""
    query = np.zeros((30, 6, 6), np.uint8)
    query[20:29, 1:4, 1:4] = LIVER
    support = np.zeros((30, 6, 6), np.uint8)
    support[3:12, 2:5, 2:5] = LIVER
    data = tmp_path / "data"
    # each slice's image is its index: a shown slice says which one it is
    ramp = np.broadcast_to(np.arange(30, dtype=np.float32)[:, None, None], query.shape).copy()
    images = {case: _volume(ramp + offset, data / f"{case}_image.nii.gz") for case, offset in (("q", 0), ("s", 100))}
    labels = {"q": _volume(query, data / "q_label.nii.gz"), "s": _volume(support, data / "s_label.nii.gz")}
    exp = tmp_path / "exp"
    splits = exp / "splits.json"
    write_json({"n_folds": 1, "folds": [{"fold": 0, "test": ["q"], "support": "s", "train": []}]}, splits)
    metrics, predictions = [], []
    for seed in (1, 0):
        fold = exp / "a" / "setting1" / f"seed{seed}" / "fold0"
        write_json({"method": "a", "setting": "1", "fold": 0, "seed": seed,
                    "protocols": {p: {"dice": {"liver": 0.5}} for p in ("oracle", "full")}}, fold / "metrics.json")
        metrics.append(str(fold / "metrics.json"))
        predictions.append(str(fold / "predictions"))
        predicted = np.full_like(query, LIVER) if seed == 0 else np.zeros_like(query)
        _volume(predicted, fold / "predictions" / "q.nii.gz")
        _volume(predicted, fold / "predictions" / "q_full.nii.gz")
    config = {"dataset": {"name": "phantom"}, "settings": ["1"], "evaluate": {"n_parts": 3}}
    return metrics, predictions, config, images, labels, splits


def test_each_protocol_shows_the_support_slice_it_used(evaluated):
    """Hand computation. Shown query slice: middle of the liver's extent, (20 + 28) // 2 = 24.
    Support slices of the 9 liver slices 3..11 (1/6, 1/2, 5/6 of the list): indices
    int(9/6) = 1, int(9/2) = 4, int(45/6) = 7, i.e. slices 4, 7, 10.
    oracle: chunk floor((24 - 20) / (8 / 3)) = floor(1.5) = 1 -> support slice 7.
    full: chunk floor((24 - 0) / (29 / 3)) = floor(2.48) = 2 -> support slice 10."""
    from fsmis.stages import reporting

    metrics, predictions, config, images, labels, splits = evaluated
    shown = {}
    for protocol in ("oracle", "full"):
        panels = reporting._qualitative_panels(metrics, predictions, config, images, labels, splits, "1", protocol)
        [liver] = [p for p in panels if p["class"] == "liver"]
        shown[protocol] = liver
        assert liver["slice"] == 24 and liver["case"] == "q" and liver["support_case"] == "s"
        assert liver["image"].mean() == 24  # the query slice itself
        # the lowest seed's predictions (seed 0 predicted liver everywhere, seed 1 nothing)
        assert liver["seed"] == 0 and liver["predictions"]["a"].all()
        assert (liver["protocol"], liver["setting"], liver["fold"], liver["n_parts"]) == (protocol, "1", 0, 3)
    assert (shown["oracle"]["chunk"], shown["oracle"]["support_slice"]) == (1, 7)
    assert (shown["full"]["chunk"], shown["full"]["support_slice"]) == (2, 10)
    # the arrays are those slices of the support scan (its image is 100 + slice index)
    assert shown["oracle"]["support_image"].mean() == 107 and shown["full"]["support_image"].mean() == 110
    assert shown["full"]["support_mask"].sum() == 9


def _panel(support_slice=10):
    truth = np.zeros((6, 6), bool)
    truth[1:4, 1:4] = True
    prediction = np.zeros((6, 6), bool)
    prediction[1:4, 1:3] = True  # 6 of the 9 pixels: Dice 2 * 6 / 15 = 80 %
    return {"class": "right_kidney", "image": np.arange(36.0).reshape(6, 6), "ground_truth": truth,
            "predictions": {"panet": prediction}, "support_image": np.ones((6, 6)), "support_mask": truth,
            "case": "q", "slice": 24, "support_case": "s", "support_slice": support_slice, "chunk": 2, "n_parts": 3,
            "setting": "1", "protocol": "full", "fold": 0, "seed": 0}


def test_qualitative_figure_names_organs_support_and_colours(tmp_path):
    fig = figures.draw_qualitative([_panel()])
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "right kidney: support\ncase s, slice 10, chunk 3/3"
    assert titles[1] == "right kidney: query\ncase q, slice 24"
    assert titles[2] == "right kidney: ground truth"
    assert titles[3] == "panet\nslice Dice 80.0%"
    assert fig.get_suptitle() == "setting 1, full protocol, fold 0, seed 0"
    [key] = fig.legends
    assert [t.get_text() for t in key.get_texts()] == [
        "ground truth (fill in its panel, outline over predictions)", "prediction (fill)", "support mask (outline)"]
    written = figures.qualitative_figure([_panel()], tmp_path / "qualitative.png")
    assert [Path(p).name for p in written] == ["qualitative.png", "qualitative.pdf", "qualitative.svg"]


def _logs() -> dict[str, pd.DataFrame]:
    steps = [0, 10, 20]
    losses = {("panet", 0): [4.0, 3.0, 2.0], ("panet", 1): [1.0, 1.0, 1.0], ("panet", 2): [2.0, 5.0, 0.0],
              ("ssl_alpnet", 0): [3.0, 2.0, 1.0], ("ssl_alpnet", 1): [1.0, 2.0, 3.0]}
    return {f"{method} setting1 seed0 fold{fold} all": pd.DataFrame({"step": steps, "loss": loss})
            for (method, fold), loss in losses.items()}


def _medians(ax) -> list:
    return [line for line in ax.get_lines() if line.get_gid() == "median"]


def test_curves_are_small_multiples_with_median_and_band():
    fig = figures.draw_curves(_logs(), method_order=["ssl_alpnet", "panet"])
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["ssl_alpnet (2 runs)", "panet (3 runs)"]  # one panel per method
    assert axes[0].get_shared_x_axes().joined(axes[0], axes[1]) and axes[0].get_shared_y_axes().joined(*axes)
    assert [ax.get_xlabel() for ax in axes] == ["training step"] * 2 and axes[0].get_ylabel() == "loss"
    [ssl], [panet] = _medians(axes[0]), _medians(axes[1])
    # the median over the folds at each step, by hand: (4, 1, 2) -> 2, (3, 1, 5) -> 3, (2, 1, 0) -> 1
    assert panet.get_ydata() == pytest.approx([2.0, 3.0, 1.0]) and panet.get_xdata() == pytest.approx([0, 10, 20])
    assert ssl.get_ydata() == pytest.approx([2.0, 2.0, 2.0])  # two runs: their mean
    band = [c for c in axes[1].collections if c.get_label() == "min–max over runs"][0]
    ys = band.get_paths()[0].vertices[:, 1]
    assert set(np.round(ys, 6)) == {1.0, 0.0, 4.0, 5.0, 2.0}  # min (1, 1, 0) and max (4, 5, 2)
    assert "band min–max" in fig.get_suptitle()
    # smoothing is kept: the median is then that of the smoothed runs
    smoothed = figures.draw_curves(_logs(), smoothing=0.5)
    [panet] = _medians(smoothed.axes[0])
    by_hand = np.median([figures._smooth(np.array(v), 0.5) for v in ([4, 3, 2], [1, 1, 1], [2, 5, 0])], axis=0)
    assert panet.get_ydata() == pytest.approx(by_hand)


def test_curves_of_several_settings_and_unequal_steps():
    logs = _logs()
    logs["panet setting2 seed1 fold0 all"] = pd.DataFrame({"step": [0, 20], "loss": [0.0, 2.0]})
    fig = figures.draw_curves(logs)
    panet = fig.axes[0]
    assert [line.get_label() for line in _medians(panet)] == ["setting 1: median over runs",
                                                              "setting 2: median over runs"]
    assert len(fig.axes) == 2 and fig.axes[0].get_title() == "panet (4 runs: 3 + 1)"
    [key] = fig.legends  # one colour key for all panels
    assert [t.get_text() for t in key.get_texts()] == [
        "setting 1: min–max over runs", "setting 1: median over runs",
        "setting 2: min–max over runs", "setting 2: median over runs"]
    # a run interpolated within its own steps, none beyond its last step
    steps, median, low, high = figures.run_band([(np.array([0.0, 20.0]), np.array([0.0, 2.0])),
                                                 (np.array([0.0, 10.0, 30.0]), np.array([4.0, 4.0, 4.0]))])
    assert steps == pytest.approx([0, 10, 20, 30])
    assert median == pytest.approx([2.0, 2.5, 3.0, 4.0])
    assert low == pytest.approx([0.0, 1.0, 2.0, 4.0]) and high == pytest.approx([4.0, 4.0, 4.0, 4.0])
    assert figures.run_key("panet setting2all seed0 fold3 abdominal") == ("panet", "2all")
    assert figures.run_key("panet fold0") == ("panet", None)
    with pytest.raises(ValueError, match="lacks column"):
        figures.draw_curves({"b x": pd.DataFrame({"step": [0]})})


def test_every_figure_is_png_pdf_and_svg(tmp_path):
    written = figures.curve_figure(_logs(), tmp_path / "training_curves.png")
    png, pdf, svg = (Path(p) for p in written)
    assert [p.name for p in (png, pdf, svg)] == ["training_curves.png", "training_curves.pdf", "training_curves.svg"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:5] == b"%PDF-"
    assert ET.parse(svg).getroot().tag == "{http://www.w3.org/2000/svg}svg"
    first = svg.read_bytes()
    figures.curve_figure(_logs(), tmp_path / "training_curves")  # a rebuild writes the same SVG
    assert svg.read_bytes() == first
    placeholder = figures.placeholder_figure(tmp_path / "none.pdf", "nothing to draw")
    assert [Path(p).name for p in placeholder] == ["none.png", "none.pdf", "none.svg"]
    assert all(Path(p).stat().st_size > 0 for p in placeholder)
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
