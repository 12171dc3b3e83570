"""Figures of the report: Dice bars, qualitative overlays, training curves, placeholders.

All of these are ours; the papers show bars and overlays of the same kind but no
common style. Bars show the mean over folds (percent) with each fold's value as a
point; overlays show the support slice, the query slice, the ground truth and one
prediction per method with that slice's Dice; curves show a training log's column
against ``step``.

Figures are drawn on ``matplotlib.figure.Figure`` objects directly (Agg canvas, no
pyplot state), so the module works headless and never changes a caller's backend.
Each figure is written as PNG (150 dpi) and PDF, atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fsmis.io import atomic_path
from fsmis.report.results import MEAN, ordered_methods, percent_per_fold

DPI = 150


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _figure_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    path = Path(path)
    base = path.with_suffix("") if path.suffix.lower() in (".png", ".pdf") else path
    return base.with_name(base.name + ".png"), base.with_name(base.name + ".pdf")


def _save(fig, path: str | os.PathLike) -> list[str]:
    png, pdf = _figure_paths(path)
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    with atomic_path(pdf) as tmp:
        fig.savefig(tmp, format="pdf")
    return [str(png), str(pdf)]


def _colours(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def placeholder_figure(path: str | os.PathLike, text: str) -> list[str]:
    """A small figure that says why a figure has no content."""
    fig = _figure(4.0, 1.5)
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    return _save(fig, path)


# --------------------------------------------------------------------------- bars


def bar_figure(
    long_df: pd.DataFrame,
    class_order: Sequence[str],
    method_order: Sequence[str] | None,
    path: str | os.PathLike,
    title: str | None = None,
) -> list[str]:
    """Grouped bars per organ and the mean: one bar per method = mean over folds (percent),
    the folds' own values as black points jittered on the bar. Writes PNG (150 dpi) and PDF."""
    class_order, per_fold = percent_per_fold(long_df, class_order)
    methods = ordered_methods(per_fold.index.get_level_values("method"), method_order)
    groups = class_order + [MEAN]
    n = len(methods)
    width = 0.8 / max(n, 1)
    rng = np.random.default_rng(0)  # the same jitter on every rebuild
    fig = _figure(max(5.0, 1.1 * len(groups) * max(1, n) ** 0.5 + 2.0), 4.0)
    ax = fig.add_subplot()
    x = np.arange(len(groups))
    for i, (method, colour) in enumerate(zip(methods, _colours(n))):
        values = per_fold.loc[method, groups]
        offset = x - 0.4 + width * (i + 0.5)
        ax.bar(offset, values.mean(axis=0, skipna=True).to_numpy(), width * 0.9, color=colour, label=method,
               edgecolor="none")
        for j, group in enumerate(groups):
            points = values[group].dropna().to_numpy()
            jitter = rng.uniform(-0.25, 0.25, size=len(points)) * width
            ax.scatter(offset[j] + jitter, points, s=9, color="black", zorder=3, linewidths=0)
    ax.set_xticks(x, [g.replace("_", " ") for g in groups])
    ax.set_ylabel("Dice (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if title:
        ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize="small")
    return _save(fig, path)


# --------------------------------------------------------------------------- qualitative overlays


def slice_dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """2D Dice of two boolean masks; NaN when both are empty."""
    prediction, reference = np.asarray(prediction, bool), np.asarray(reference, bool)
    total = prediction.sum() + reference.sum()
    return float(2.0 * np.logical_and(prediction, reference).sum() / total) if total else math.nan


def _gray(image) -> np.ndarray:
    """RGB of a slice, windowed to its 0.5-99.5 percentiles."""
    image = np.asarray(image, dtype=float)
    finite = image[np.isfinite(image)]
    lo, hi = (np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0))
    gray = np.clip((np.nan_to_num(image, nan=lo) - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    return np.repeat(gray[..., None], 3, axis=-1)


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (the image border counts as outside)."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def _overlay(rgb, fill=None, fill_colour=None, outline=None, outline_colour=None, alpha=0.45) -> np.ndarray:
    """Masks blended into an RGB slice in numpy: one imshow per panel instead of an
    image, an overlay and a contour set (drawing those dominated the report's time)."""
    out = rgb.copy()
    if fill is not None:
        fill = np.asarray(fill, bool)
        out[fill] = (1 - alpha) * out[fill] + alpha * np.asarray(fill_colour[:3])
    if outline is not None:
        out[_boundary(np.asarray(outline, bool))] = outline_colour[:3]
    return out


def _draw(ax, rgb, title: str) -> None:
    ax.imshow(rgb, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize="small")


def _check_panels(panels: Sequence[Mapping]) -> None:
    if not panels:
        raise ValueError("no qualitative panels given")
    for k, panel in enumerate(panels):
        missing = [key for key in ("class", "image", "ground_truth", "predictions") if key not in panel]
        if missing:
            raise ValueError(f"qualitative panel {k} lacks {', '.join(missing)}")
        shape = np.shape(panel["image"])
        for name, mask in [("ground_truth", panel["ground_truth"]), *panel["predictions"].items()]:
            if np.shape(mask) != shape:
                raise ValueError(
                    f"qualitative panel {panel['class']}: {name} has shape {np.shape(mask)}, image {shape}"
                )


def qualitative_figure(
    panels: Sequence[Mapping], path: str | os.PathLike, method_order: Sequence[str] | None = None
) -> list[str]:
    """One row per organ: support slice with its mask outline, query slice, ground truth
    overlay, then one prediction overlay per method (ground truth outlined), titled with
    the method and that slice's Dice. ``panels``: dicts with ``class``, ``image``,
    ``ground_truth``, ``predictions`` ({method: mask}), ``support_image``, ``support_mask``."""
    _check_panels(panels)
    from matplotlib.figure import Figure

    methods = ordered_methods([m for p in panels for m in p["predictions"]], method_order)
    n_cols, size = 3 + len(methods), 2.0
    fig = Figure(figsize=(size * n_cols, size * len(panels) + 0.4))
    axes = fig.subplots(len(panels), n_cols, squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.45 / (size * len(panels) + 0.4),
                        wspace=0.04, hspace=0.3)
    truth_colour, pred_colour, support_colour = (0.1, 0.8, 0.2), (1.0, 0.3, 0.1), (0.2, 0.6, 1.0)
    for row, panel in zip(axes, panels):
        name = str(panel["class"]).replace("_", " ")
        if panel.get("support_image") is not None:
            support = _gray(panel["support_image"])
            if panel.get("support_mask") is not None:
                support = _overlay(support, outline=panel["support_mask"], outline_colour=support_colour)
            _draw(row[0], support, f"support: {name}")
        else:
            row[0].set_axis_off()
            row[0].set_title(f"support: {name}", fontsize="small")
        query = _gray(panel["image"])
        _draw(row[1], query, "query")
        _draw(row[2], _overlay(query, panel["ground_truth"], truth_colour), "ground truth")
        for ax, method in zip(row[3:], methods):
            prediction = panel["predictions"].get(method)
            if prediction is None:
                ax.set_axis_off()
                ax.set_title(f"{method}\n(no prediction)", fontsize="small")
                continue
            dice = slice_dice(prediction, panel["ground_truth"])
            shown = "–" if math.isnan(dice) else f"{100 * dice:.1f}"
            rgb = _overlay(query, prediction, pred_colour, panel["ground_truth"], truth_colour)
            _draw(ax, rgb, f"{method}\nDice {shown}")
    return _save(fig, path)


# --------------------------------------------------------------------------- training curves


def _smooth(values: np.ndarray, weight: float) -> np.ndarray:
    """Exponential moving average with bias correction (as TensorBoard's slider)."""
    out = np.empty(len(values))
    last, norm = 0.0, 0.0
    for i, value in enumerate(values):
        last = weight * last + (1 - weight) * value
        norm = weight * norm + (1 - weight)
        out[i] = last / norm
    return out


def curve_figure(
    logs: Mapping[str, pd.DataFrame],
    path: str | os.PathLike,
    smoothing: float = 0.0,
    column: str = "loss",
    log_scale: bool = False,
) -> list[str]:
    """Training curves: ``column`` against ``step`` for each labelled log. With
    ``smoothing`` in (0, 1) the raw curve is drawn faint under its moving average."""
    if not logs:
        raise ValueError("no training logs given")
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    fig = _figure(7.0, 4.0)
    ax = fig.add_subplot()
    for (label, frame), colour in zip(logs.items(), _colours(len(logs))):
        missing = [c for c in ("step", column) if c not in frame.columns]
        if missing:
            raise ValueError(f"training log {label!r} lacks column(s) {', '.join(missing)}")
        data = frame[["step", column]].dropna().sort_values("step")
        steps, values = data["step"].to_numpy(), data[column].to_numpy(dtype=float)
        if smoothing > 0 and len(values) > 1:
            ax.plot(steps, values, color=colour, alpha=0.25, linewidth=0.8)
            values = _smooth(values, smoothing)
        ax.plot(steps, values, color=colour, linewidth=1.4, label=str(label))
    ax.set_xlabel("step")
    ax.set_ylabel(column.replace("_", " "))
    if log_scale:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize="x-small",
              ncol=1 if len(logs) <= 20 else 2)
    return _save(fig, path)
