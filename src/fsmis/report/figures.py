"""Figures of the report: Dice bars, qualitative overlays, training curves, placeholders.

All of these are ours; the papers show bars and overlays of the same kind but no
common style. Bars show the mean over folds (percent) with each fold's value as a
point. Overlays show, per organ, the support slice the protocol used for the shown
query slice (its case and slice in the title, its mask outlined), the query slice,
the ground truth and one prediction per method with that slice's Dice (percent),
under a colour key. Training curves are small multiples, one panel per method: the
median over its runs (folds and seeds; one colour per setting when there are
several) at each step with the min-max band of those runs, on shared axes.

Figures are drawn on ``matplotlib.figure.Figure`` objects directly (Agg canvas, no
pyplot state), so the module works headless and never changes a caller's backend.
Each figure is written as PNG (150 dpi) for the report, and as PDF and SVG (vector,
for papers) beside it, atomically; the date is left out of the PDF and SVG so that a
rebuild from the same results writes the same files.
"""

from __future__ import annotations

import math
import os
import re
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


FORMATS = ("png", "pdf", "svg")  # the files of one figure, in the order _save returns them


def _figure_paths(path: str | os.PathLike) -> tuple[Path, ...]:
    """``<base>.png``, ``<base>.pdf``, ``<base>.svg`` of a figure named with or without one of these suffixes."""
    path = Path(path)
    base = path.with_suffix("") if path.suffix.lower().lstrip(".") in FORMATS else path
    return tuple(base.with_name(f"{base.name}.{ext}") for ext in FORMATS)


def _save(fig, path: str | os.PathLike) -> list[str]:
    """Write ``fig`` as PNG, PDF and SVG beside each other; return the three paths."""
    from matplotlib import rc_context

    written = []
    # fixed SVG ids and no dates: the same figure gives the same bytes
    with rc_context({"svg.hashsalt": "fsmis"}):
        for ext, target in zip(FORMATS, _figure_paths(path)):
            options = {"png": {"dpi": DPI}, "pdf": {"metadata": {"CreationDate": None}},
                       "svg": {"metadata": {"Date": None}}}[ext]
            with atomic_path(target) as tmp:
                fig.savefig(tmp, format=ext, **options)
            written.append(str(target))
    return written


def _colours(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def placeholder_figure(path: str | os.PathLike, text: str) -> list[str]:
    """A small figure that says why a figure has no content."""
    fig = _figure(4.0, 1.5)
    ax = fig.add_subplot()
    ax.axis("off")
    # wrapped to the figure, and out of the layout: a long text must not squeeze the
    # (invisible) axes to nothing, which would happen a bit more at each of the three saves
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, in_layout=False)
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
    the folds' own values as black points jittered on the bar. Writes PNG (150 dpi), PDF and SVG."""
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


TRUTH_COLOUR, PREDICTION_COLOUR, SUPPORT_COLOUR = (0.1, 0.8, 0.2), (1.0, 0.3, 0.1), (0.2, 0.6, 1.0)
FILL_ALPHA = 0.45


def _organ(name) -> str:
    return str(name).replace("_", " ")


def _support_title(panel: Mapping, organ: str) -> str:
    """``<organ> support`` with its case, slice and chunk where the panel says them."""
    where = []
    if panel.get("support_case") is not None:
        where.append(f"case {panel['support_case']}")
    if panel.get("support_slice") is not None:
        where.append(f"slice {panel['support_slice']}")
    if panel.get("chunk") is not None and panel.get("n_parts"):
        where.append(f"chunk {int(panel['chunk']) + 1}/{panel['n_parts']}")
    return f"{organ}: support\n{', '.join(where)}" if where else f"{organ}: support"


def _query_title(panel: Mapping, organ: str) -> str:
    where = [f"case {panel['case']}"] if panel.get("case") is not None else []
    if panel.get("slice") is not None:
        where.append(f"slice {panel['slice']}")
    return f"{organ}: query\n{', '.join(where)}" if where else f"{organ}: query"


def _suptitle(panels: Sequence[Mapping]) -> str | None:
    """What all panels share: setting, protocol, fold and seed (None if they say nothing)."""
    def shared(key):
        values = {str(p[key]) for p in panels if p.get(key) is not None}
        return values.pop() if len(values) == 1 else None

    setting, protocol, fold, seed = (shared(k) for k in ("setting", "protocol", "fold", "seed"))
    parts = [f"setting {setting}" if setting else None, f"{protocol} protocol" if protocol else None,
             f"fold {fold}" if fold else None, f"seed {seed}" if seed else None]
    parts = [x for x in parts if x]
    return ", ".join(parts) if parts else None


def _colour_key(fig, top: float) -> None:
    """The legend of the overlays: what each colour and mark means."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [
        Patch(facecolor=(*TRUTH_COLOUR, FILL_ALPHA), edgecolor=TRUTH_COLOUR,
              label="ground truth (fill in its panel, outline over predictions)"),
        Patch(facecolor=(*PREDICTION_COLOUR, FILL_ALPHA), edgecolor="none", label="prediction (fill)"),
        Line2D([], [], color=SUPPORT_COLOUR, linewidth=2, label="support mask (outline)"),
    ]
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, top), ncol=3, frameon=False,
               fontsize="small", handlelength=1.5, columnspacing=1.2)


def qualitative_figure(
    panels: Sequence[Mapping], path: str | os.PathLike, method_order: Sequence[str] | None = None
) -> list[str]:
    """:func:`draw_qualitative` written as PNG, PDF and SVG; returns the paths."""
    return _save(draw_qualitative(panels, method_order), path)


def draw_qualitative(panels: Sequence[Mapping], method_order: Sequence[str] | None = None):
    """The qualitative figure (a ``matplotlib.figure.Figure``). One row per organ: the
    support slice with its mask outlined (titled with the organ, its case, slice and
    chunk), the query slice (organ, case, slice), the ground truth filled, then one
    panel per method with its prediction filled and the ground truth outlined, titled
    with the method and that slice's Dice in percent. A colour key above the panels; a
    title with the setting, protocol, fold and seed all panels share.

    ``panels``: dicts with ``class``, ``image``, ``ground_truth``, ``predictions``
    ({method: mask}), ``support_image``, ``support_mask``, and optionally ``case``,
    ``slice``, ``support_case``, ``support_slice``, ``chunk`` (0-based), ``n_parts``,
    ``setting``, ``protocol``, ``fold``, ``seed`` (``fsmis.stages.reporting``)."""
    _check_panels(panels)
    from matplotlib.figure import Figure

    methods = ordered_methods([m for p in panels for m in p["predictions"]], method_order)
    n_cols, size = 3 + len(methods), 2.0
    title = _suptitle(panels)
    head = 0.35 + (0.3 if title else 0.0) + 0.45  # colour key, title, the first row's two-line titles
    height = size * len(panels) + head
    fig = Figure(figsize=(max(size * n_cols, 7.5), height))
    axes = fig.subplots(len(panels), n_cols, squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - head / height, wspace=0.04, hspace=0.38)
    if title:
        fig.suptitle(title, y=1 - 0.05 / height, va="top", fontsize="medium")
    _colour_key(fig, 1 - (0.3 if title else 0.0) / height - 0.02 / height)
    for row, panel in zip(axes, panels):
        organ = _organ(panel["class"])
        if panel.get("support_image") is not None:
            support = _gray(panel["support_image"])
            if panel.get("support_mask") is not None:
                support = _overlay(support, outline=panel["support_mask"], outline_colour=SUPPORT_COLOUR)
            _draw(row[0], support, _support_title(panel, organ))
        else:
            row[0].set_axis_off()
            row[0].set_title(f"{organ}: support\n(not shown)", fontsize="small")
        query = _gray(panel["image"])
        _draw(row[1], query, _query_title(panel, organ))
        _draw(row[2], _overlay(query, panel["ground_truth"], TRUTH_COLOUR, alpha=FILL_ALPHA),
              f"{organ}: ground truth")
        for ax, method in zip(row[3:], methods):
            prediction = panel["predictions"].get(method)
            if prediction is None:
                ax.set_axis_off()
                ax.set_title(f"{method}\n(no prediction)", fontsize="small")
                continue
            dice = slice_dice(prediction, panel["ground_truth"])
            shown = "–" if math.isnan(dice) else f"{100 * dice:.1f}%"
            rgb = _overlay(query, prediction, PREDICTION_COLOUR, panel["ground_truth"], TRUTH_COLOUR,
                           alpha=FILL_ALPHA)
            _draw(ax, rgb, f"{method}\nslice Dice {shown}")
    return fig


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


def run_key(label: str) -> tuple[str, str | None]:
    """``(method, setting)`` of a training run's label (``fsmis.paths.train_label``:
    ``"<method> setting<s> seed<n> fold<k> <group>"``): the method is the first word,
    the setting the word ``setting<s>`` (None when the label has none)."""
    words = str(label).split()
    if not words:
        raise ValueError("a training log has an empty label")
    setting = next((w[len("setting"):] for w in words[1:] if re.fullmatch(r"setting\S+", w)), None)
    return words[0], setting


def _curve(frame: pd.DataFrame, label: str, column: str) -> tuple[np.ndarray, np.ndarray]:
    missing = [c for c in ("step", column) if c not in frame.columns]
    if missing:
        raise ValueError(f"training log {label!r} lacks column(s) {', '.join(missing)}")
    data = frame[["step", column]].dropna().groupby("step", sort=True)[column].mean()
    return data.index.to_numpy(dtype=float), data.to_numpy(dtype=float)


def run_band(curves: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                         np.ndarray]:
    """``steps, median, low, high`` of several runs' curves: on the union of their steps,
    each run linearly interpolated within its own first and last step (not beyond), then
    the median, minimum and maximum over the runs that reach that step."""
    steps = np.unique(np.concatenate([s for s, _ in curves])) if curves else np.empty(0)
    grid = np.full((len(curves), len(steps)), np.nan)
    for row, (s, v) in zip(grid, curves):
        if len(s):
            inside = (steps >= s[0]) & (steps <= s[-1])
            row[inside] = np.interp(steps[inside], s, v)
    return steps, np.nanmedian(grid, axis=0), np.nanmin(grid, axis=0), np.nanmax(grid, axis=0)


def curve_figure(
    logs: Mapping[str, pd.DataFrame],
    path: str | os.PathLike,
    smoothing: float = 0.0,
    column: str = "loss",
    log_scale: bool = False,
    method_order: Sequence[str] | None = None,
) -> list[str]:
    """:func:`draw_curves` written as PNG, PDF and SVG; returns the paths."""
    return _save(draw_curves(logs, smoothing, column, log_scale, method_order), path)


def draw_curves(
    logs: Mapping[str, pd.DataFrame],
    smoothing: float = 0.0,
    column: str = "loss",
    log_scale: bool = False,
    method_order: Sequence[str] | None = None,
):
    """The training curves (a ``matplotlib.figure.Figure``) as small multiples: one
    panel per method (the first word of each log's label, :func:`run_key`), on shared
    axes (x: training step, y: ``column``). Each panel draws the median over its runs
    (folds and seeds) at each step and a band from the minimum to the maximum of those
    runs (:func:`run_band`); with several settings each gets its own colour in every
    panel. With ``smoothing`` in (0, 1) every run is smoothed first (exponential moving
    average) and the median of the raw runs is drawn faint under it."""
    if not logs:
        raise ValueError("no training logs given")
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    runs: dict[str, dict[str | None, list]] = {}
    for label, frame in logs.items():
        method, setting = run_key(label)
        runs.setdefault(method, {}).setdefault(setting, []).append(_curve(frame, label, column))
    methods = ordered_methods(runs, method_order)
    settings = sorted({s for by_setting in runs.values() for s in by_setting}, key=lambda s: (s is None, str(s)))
    colours = dict(zip(settings, _colours(len(settings))))
    n_cols = min(len(methods), 3)
    n_rows = math.ceil(len(methods) / n_cols)
    fig = _figure(3.2 * n_cols + 0.4, 2.6 * n_rows + 0.6)
    axes = fig.subplots(n_rows, n_cols, sharex=True, sharey=True, squeeze=False).ravel()
    quantity = column.replace("_", " ")
    for k, (ax, method) in enumerate(zip(axes, methods)):
        for setting in settings:
            curves = runs[method].get(setting)
            if not curves:
                continue
            colour = colours[setting]
            name = f"setting {setting}: " if len(settings) > 1 and setting is not None else ""
            if smoothing > 0:
                steps, raw, _, _ = run_band(curves)
                ax.plot(steps, raw, color=colour, alpha=0.3, linewidth=0.8)
                curves = [(s, _smooth(v, smoothing) if len(v) > 1 else v) for s, v in curves]
            steps, median, low, high = run_band(curves)
            ax.fill_between(steps, low, high, color=colour, alpha=0.25, linewidth=0,
                            label=f"{name}min–max over runs")
            ax.plot(steps, median, color=colour, linewidth=1.5, label=f"{name}median over runs", gid="median")
        counts = [f"{len(runs[method][s])}" for s in settings if runs[method].get(s)]
        n_runs = sum(len(c) for c in runs[method].values())
        per_setting = f": {' + '.join(counts)}" if len(settings) > 1 else ""
        ax.set_title(f"{method} ({n_runs} run{'s' if n_runs != 1 else ''}{per_setting})", fontsize="medium")
        ax.grid(alpha=0.3)
        if k % n_cols == 0:
            ax.set_ylabel(quantity)
        if k + n_cols >= len(methods):  # nothing below: this panel carries the x axis
            ax.set_xlabel("training step")
            ax.xaxis.set_tick_params(labelbottom=True)
    for ax in axes[len(methods):]:
        ax.remove()
    if log_scale:
        axes[0].set_yscale("log")
    # one key for all panels: the colours mean the same settings everywhere
    handles = {}
    for ax in axes[:len(methods)]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=min(len(handles), 4),
               frameon=False, fontsize="small")
    smoothed = f"; runs smoothed (EMA {smoothing:g}), raw median faint" if smoothing > 0 else ""
    fig.suptitle(f"training {quantity} per method: median over runs (folds, seeds), band min–max{smoothed}",
                 fontsize="medium")
    return fig
