"""Tables and figures of one experiment, rebuilt from its stored ``metrics.json`` files.

Nothing here trains or evaluates: the report reads each fold's ``metrics.json``
(docs/contracts.md, "Evaluation outputs"; Dice as fractions) and the ``per_case.tsv``
beside it, and lays the numbers out like the papers' tables, rows = methods, columns =
organs and their mean, in percent, as mean ± standard deviation over folds.
:func:`build_report` adds the statistics over scans and the paired tests
(``fsmis.stats``) and the tables beside the published numbers (``fsmis.paper_tables``).

Averaging: a class's cell is the mean over folds of the fold's value (each fold's value
is already the mean over that fold's test scans). The ``mean`` column first averages the
classes within each fold (classes without a value in that fold are skipped, as in
``fsmis.evaluate.summarize``), then takes mean and std over folds. The spread is the
sample standard deviation over folds (ddof=1); with one fold it is NaN and the
formatted cell shows the mean alone.

Figures are drawn on ``matplotlib.figure.Figure`` objects directly (Agg canvas, no
pyplot state), so the module works headless and never changes a caller's backend. Every
file is written atomically.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from fsmis import paths
from fsmis.contracts import Metrics
from fsmis.errors import InputError
from fsmis.io import atomic_path

LONG_COLUMNS = ["method", "setting", "protocol", "fold", "dataset", "class", "dice", "n_cases", "support_missing",
                "source"]
PROTOCOL_ORDER = ["oracle", "full"]
MEAN = "mean"
DPI = 150


# --------------------------------------------------------------------------- reading


def _rows_of(path: Path) -> list[dict]:
    # InputError for a missing file, invalid JSON or a broken contract (fsmis.contracts)
    data = Metrics.read(path)
    rows = []
    for protocol, result in data.protocols.items():
        # classes the fold's support scan lacked: not evaluated (fsmis.evaluate.SUPPORT_MISSING)
        lacking = set(result.support_missing)
        for name, value in result.dice.items():
            rows.append(
                {
                    "method": data.method,
                    "setting": data.setting,
                    "protocol": str(protocol),
                    "fold": data.fold,
                    "dataset": data.dataset,
                    "class": str(name),
                    "dice": value,
                    "n_cases": result.n_cases,
                    "support_missing": name in lacking,
                    "source": str(path),
                }
            )
    return rows


def collect(metrics_paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Long table (one row per file, protocol and class) of every ``metrics.json``.

    Columns: method, setting, protocol, fold, dataset, class, dice (fraction), n_cases,
    support_missing (the fold's support scan lacked the class: not evaluated), source. A malformed file, or two files for the same method/setting/fold, raises
    ``InputError`` naming the file.
    """
    rows: list[dict] = []
    owner: dict[tuple, str] = {}
    for raw in metrics_paths:
        path = Path(raw)
        file_rows = _rows_of(path)
        first = file_rows[0]
        key = (first["method"], first["setting"], first["fold"])
        if key in owner:
            raise InputError(
                path, f"method {key[0]}, setting {key[1]}, fold {key[2]} is already given by {owner[key]}"
            )
        owner[key] = str(path)
        rows.extend(file_rows)
    if not rows:
        raise ValueError("no metrics.json files given")
    return pd.DataFrame(rows, columns=LONG_COLUMNS)


# --------------------------------------------------------------------------- tables


def ordered_methods(present: Iterable[str], method_order: Sequence[str] | None) -> list[str]:
    """Methods of ``method_order`` that have results, in that order, then any others (sorted)."""
    present = list(dict.fromkeys(present))
    order = [m for m in (method_order or []) if m in present]
    return order + sorted(m for m in present if m not in order)


def _single_slice(long_df: pd.DataFrame) -> None:
    pairs = long_df[["setting", "protocol"]].drop_duplicates()
    if len(pairs) > 1:
        listed = ", ".join(f"{s}/{p}" for s, p in pairs.itertuples(index=False))
        raise ValueError(f"the table mixes settings/protocols ({listed}); select one setting and protocol first")


def fold_values(long_df: pd.DataFrame, class_order: Sequence[str]) -> pd.DataFrame:
    """Per (method, fold): Dice of each class in ``class_order`` and their ``mean``, fractions."""
    keyed = long_df.set_index(["method", "fold", "class"])["dice"]
    if keyed.index.has_duplicates:
        raise ValueError("several Dice values for one method, fold and class; select one setting and protocol")
    wide = keyed.unstack("class").reindex(columns=list(class_order)).astype(float)
    wide[MEAN] = wide[list(class_order)].mean(axis=1, skipna=True)
    wide.columns.name = None
    return wide


def dice_table(
    long_df: pd.DataFrame, class_order: Sequence[str], method_order: Sequence[str] | None = None
) -> pd.DataFrame:
    """Paper-style Dice table of one setting and protocol, in percent.

    Index: method (``method_order`` first, e.g. methods then baselines, then any method
    not listed). Columns: a MultiIndex ``(organ, stat)`` with organ in ``class_order``
    then ``mean`` and stat ``mean``/``std`` over folds, plus ``("n_folds", "")``.
    Use :func:`formatted` for the "78.4 ± 2.1" view.
    """
    if long_df.empty:
        raise ValueError("no Dice values to tabulate")
    _single_slice(long_df)
    class_order = list(class_order) or list(dict.fromkeys(long_df["class"]))
    per_fold = fold_values(long_df, class_order) * 100.0
    grouped = per_fold.groupby(level="method", sort=False)
    columns = class_order + [MEAN]
    mean, std = grouped[columns].mean(), grouped[columns].std(ddof=1)
    table = pd.concat({"mean": mean, "std": std}, axis=1).swaplevel(axis=1)
    table = table.reindex(columns=pd.MultiIndex.from_product([columns, ["mean", "std"]]))
    table[("n_folds", "")] = grouped.size()
    table = table.reindex(ordered_methods(table.index, method_order))
    table.index.name = "method"
    return table


def _cell(mean: float, std: float, decimals: int) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def formatted(table: pd.DataFrame, decimals: int = 1) -> pd.DataFrame:
    """Text view of :func:`dice_table`: one column per organ and ``mean``, cells "78.4 ± 2.1"."""
    organs = [c for c in dict.fromkeys(table.columns.get_level_values(0)) if c != "n_folds"]
    view = pd.DataFrame(index=table.index)
    for organ in organs:
        view[organ] = [_cell(m, s, decimals) for m, s in zip(table[(organ, "mean")], table[(organ, "std")])]
    return view


def flat_columns(table: pd.DataFrame) -> pd.DataFrame:
    """Numeric table with one-level columns ``liver_mean, liver_std, ..., mean_mean, mean_std, n_folds``."""
    flat = table.copy()
    flat.columns = [f"{a}_{b}" if b else a for a, b in table.columns]
    return flat


def markdown(view: pd.DataFrame, caption: str | None = None) -> str:
    """A pipe table of a text frame (index as the first column), numbers right-aligned."""

    def esc(text) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    header = [view.index.name or ""] + [str(c) for c in view.columns]
    lines = [
        "| " + " | ".join(esc(h) for h in header) + " |",
        "|" + "|".join([" --- "] + [" ---: "] * len(view.columns)) + "|",
    ]
    for name, row in view.iterrows():
        lines.append("| " + " | ".join([esc(name)] + [esc(v) for v in row]) + " |")
    text = "\n".join(lines) + "\n"
    return f"{caption}\n\n{text}" if caption else text


def support_missing_note(long_df: pd.DataFrame) -> str | None:
    """A table note counting the (method, fold, class) entries whose fold's support scan
    lacked the class (not evaluated, left out of the means), or None when there are none."""
    flagged = long_df[long_df["support_missing"].astype(bool)] if "support_missing" in long_df else long_df[:0]
    if flagged.empty:
        return None
    pairs = flagged[["fold", "class"]].drop_duplicates().sort_values(["fold", "class"])
    listed = "; ".join(f"fold {f}: {c}" for f, c in pairs.itertuples(index=False))
    return (f"Support scan without the class: {len(pairs)} (fold, class) pair(s) not evaluated and left out of "
            f"the means ({listed}); flag support_missing in dice_per_case.csv.")


def write_tables(table: pd.DataFrame, out_dir: str | os.PathLike, stem: str, caption: str | None = None,
                 notes: Sequence[str] = ()) -> list[str]:
    """``<stem>.csv`` (numeric, percent, flat columns) and ``<stem>.md`` (formatted, with
    ``notes`` below the table), atomically."""
    out_dir = Path(out_dir)
    csv_path, md_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.md"
    with atomic_path(csv_path) as tmp:
        flat_columns(table).to_csv(tmp, float_format="%.4f")
    if caption is None:
        folds = sorted(set(int(n) for n in table[("n_folds", "")].dropna()))
        caption = f"Dice (%), mean ± standard deviation over folds (folds per method: {', '.join(map(str, folds))})."
    with atomic_path(md_path) as tmp:
        text = markdown(formatted(table), caption)
        tmp.write_text(text + "".join(f"\n{note}\n" for note in notes), encoding="utf-8")
    return [str(csv_path), str(md_path)]


# --------------------------------------------------------------------------- figures


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


def bar_figure(
    long_df: pd.DataFrame,
    class_order: Sequence[str],
    method_order: Sequence[str] | None,
    path: str | os.PathLike,
    title: str | None = None,
) -> list[str]:
    """Grouped bars per organ and the mean: one bar per method = mean over folds (percent),
    the folds' own values as black points jittered on the bar. Writes PNG (150 dpi) and PDF."""
    _single_slice(long_df)
    class_order = list(class_order) or list(dict.fromkeys(long_df["class"]))
    per_fold = fold_values(long_df, class_order) * 100.0
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


def qualitative_figure(
    panels: Sequence[Mapping], path: str | os.PathLike, method_order: Sequence[str] | None = None
) -> list[str]:
    """One row per organ: support slice with its mask outline, query slice, ground truth
    overlay, then one prediction overlay per method (ground truth outlined), titled with
    the method and that slice's Dice. ``panels``: dicts with ``class``, ``image``,
    ``ground_truth``, ``predictions`` ({method: mask}), ``support_image``, ``support_mask``."""
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


# --------------------------------------------------------------------------- orchestration


def _protocol_key(protocol: str) -> tuple:
    return (PROTOCOL_ORDER.index(protocol) if protocol in PROTOCOL_ORDER else len(PROTOCOL_ORDER), protocol)


# File names come from the result tree (fsmis.paths, kinds report_slice and report_file)
# so that they are the ones the report rule declares.


def _slice_stem(name: str, setting: str, protocol: str) -> str:
    """``<name>_setting<s>_<p>`` without extension, for the writers that add their own
    (.csv and .md of one table)."""
    return paths.stem("report_slice", name=name, setting=setting, protocol=protocol)


def _slice_file(out_dir, name: str, setting: str, protocol: str, ext: str) -> Path:
    return Path(paths.within(out_dir, "report_slice", name=name, setting=setting, protocol=protocol, ext=ext))


def _file(out_dir, name: str, ext: str) -> Path:
    return Path(paths.within(out_dir, "report_file", name=name, ext=ext))


def _slices(long_df: pd.DataFrame, expected: Iterable[tuple[str, str]] | None) -> list[tuple[str, str]]:
    """The configured (setting, protocol) pairs, then any others the metrics hold."""
    wanted = [(str(s), str(p)) for s, p in (expected or [])]
    found = [(str(s), str(p)) for s, p in long_df[["setting", "protocol"]].drop_duplicates().itertuples(index=False)]
    extra = sorted((sp for sp in found if sp not in wanted), key=lambda sp: (sp[0], _protocol_key(sp[1])))
    return wanted + extra


def _missing_slice(out_dir: Path, setting: str, protocol: str) -> list[str]:
    """Every file of a configured setting/protocol without results says so, rather than
    the job failing on a missing output or an old file staying behind."""
    text = f"No results for setting {setting}, {protocol} protocol: no metrics.json holds it."
    files = [("dice", "md"), ("dice", "csv"), ("stats", "md"), ("stats", "csv"),
             ("paper", "md"), ("paper", "csv"), ("paper", "tex")]
    content = {"md": text + "\n", "csv": "method\n", "tex": f"% {text}\n"}
    written = []
    for name, ext in files:
        path = _slice_file(out_dir, name, setting, protocol, ext)
        with atomic_path(path) as tmp:
            tmp.write_text(content[ext], encoding="utf-8")
        written.append(str(path))
    written += placeholder_figure(_slice_file(out_dir, "dice_bars", setting, protocol, "png"), text.strip())
    return written


def build_report(
    metrics_paths: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    class_order: Sequence[str],
    method_order: Sequence[str] | None = None,
    qualitative_panels: Sequence[Mapping] | Mapping[tuple[str, str], Sequence[Mapping]] | None = None,
    train_logs: Mapping[str, pd.DataFrame] | None = None,
    curve_smoothing: float = 0.0,
    *,
    dataset: str | None = None,
    published: pd.DataFrame | str | os.PathLike | None = None,
    reference: str = "ssl_alpnet",
    slices: Sequence[tuple[str, str]] | None = None,
    per_case_paths: Sequence[str | os.PathLike] | None = None,
) -> list[str]:
    """Write every table and figure of an experiment into ``out_dir``; return the paths.

    Per setting and protocol (``<stem>`` = ``setting<setting>_<protocol>``; every pair of
    ``slices``, then any other the metrics hold):

    - ``dice_<stem>.csv/.md``: our Dice, mean ± std over folds (:func:`dice_table`);
    - ``stats_<stem>.csv/.md``: spread over folds and over scans, paired Wilcoxon test
      against ``reference`` per organ and for the mean (``fsmis.stats``);
    - ``paper_<stem>.md/.csv/.tex``: the paper-style table, published numbers beside
      ours with the difference and the p-value (``fsmis.paper_tables``);
    - ``dice_bars_<stem>.png/.pdf``; ``qualitative_<stem>.png/.pdf`` when
      ``qualitative_panels`` maps (setting, protocol) to panels.

    Always: ``dice_per_fold.csv`` (long, fractions), ``dice_per_case.csv`` (the
    ``per_case.tsv`` rows of all folds, fractions), ``qualitative.png/.pdf`` (the panels
    given as a list, else those of the first slice) and ``training_curves.png/.pdf``;
    a figure with nothing to draw says so. A configured slice without results gets
    files that say so. ``published``: a DataFrame or CSV path (default: the shipped CSV).
    ``per_case_paths``: the ``per_case.tsv`` of each metrics file, in its order (default:
    the one beside it; ``fsmis.stats.read_cases``). File names: ``fsmis.paths``.
    """
    from fsmis import paper_tables, stats

    out_dir = Path(out_dir)
    metrics_paths = [Path(p) for p in metrics_paths]
    long_df = collect(metrics_paths)
    cases = stats.read_cases(metrics_paths, per_case_paths)
    if not isinstance(published, pd.DataFrame):
        published = paper_tables.load_published(published)
    dataset = dataset or next((d for d in long_df["dataset"] if d), "unknown")
    class_order = list(class_order or []) or list(dict.fromkeys(long_df["class"]))
    written: list[str] = []
    for name, frame in (("dice_per_fold", long_df), ("dice_per_case", cases)):
        path = _file(out_dir, name, "csv")
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False)
        written.append(str(path))
    panels_by_slice = qualitative_panels if isinstance(qualitative_panels, Mapping) else None
    order = _slices(long_df, slices)
    for setting, protocol in order:
        part = long_df[(long_df["setting"] == setting) & (long_df["protocol"] == protocol)]
        if part.empty:
            written += _missing_slice(out_dir, setting, protocol)
        else:
            table = dice_table(part, class_order, method_order)
            notes = [n for n in [support_missing_note(part)] if n]
            written += write_tables(table, out_dir, _slice_stem("dice", setting, protocol), notes=notes)
            per_fold = fold_values(part, class_order) * 100.0
            in_slice = cases[(cases["setting"] == setting) & (cases["protocol"] == protocol)]
            summary = stats.summary_table(per_fold, in_slice, class_order, list(table.index), reference)
            written += stats.write_summary(summary, out_dir, _slice_stem("stats", setting, protocol), reference)
            paper = paper_tables.paper_table(table, published, dataset, setting, class_order, protocol,
                                             stats.tests_of(summary), reference)
            paper.notes += notes
            written += paper_tables.write(paper, out_dir, _slice_stem("paper", setting, protocol))
            written += bar_figure(part, class_order, method_order,
                                  _slice_file(out_dir, "dice_bars", setting, protocol, "png"),
                                  title=f"setting {setting}, {protocol} protocol")
        if panels_by_slice is not None:
            written += _qualitative_or_note(panels_by_slice.get((setting, protocol)),
                                            _slice_file(out_dir, "qualitative", setting, protocol, "png"),
                                            method_order)
    if panels_by_slice is not None and order:
        # the first slice's figure under the stable name: a copy (drawing it costs seconds)
        for ext in ("png", "pdf"):
            with atomic_path(_file(out_dir, "qualitative", ext)) as tmp:
                shutil.copyfile(_slice_file(out_dir, "qualitative", *order[0], ext), tmp)
            written.append(str(_file(out_dir, "qualitative", ext)))
    else:
        written += _qualitative_or_note(qualitative_panels, _file(out_dir, "qualitative", "png"), method_order)
    if train_logs:
        written += curve_figure(train_logs, _file(out_dir, "training_curves", "png"), smoothing=curve_smoothing)
    else:
        written += placeholder_figure(_file(out_dir, "training_curves", "png"), "no method was trained")
    return written


def _qualitative_or_note(panels, path: Path, method_order) -> list[str]:
    if panels:
        return qualitative_figure(panels, path, method_order)
    return placeholder_figure(path, "no predictions to show")


def placeholder_figure(path: str | os.PathLike, text: str) -> list[str]:
    """A small figure that says why a figure has no content."""
    fig = _figure(4.0, 1.5)
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    return _save(fig, path)
