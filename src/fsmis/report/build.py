"""Every table and figure of one experiment, rebuilt from its stored results.

:func:`build_report` is ours: it reads the ``metrics.json`` files and the
``per_case.tsv`` beside each (``results``), and per setting and protocol writes the
Dice table (``tables``), the statistics (``stats``), the table beside the published
numbers (``paper_tables``) and the bars (``figures``); then the qualitative overlays
and training curves. File names come from the result tree (``fsmis.paths``, kinds
``report_slice`` and ``report_file``) so that they are the ones the report rule
declares. Every file is written atomically.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from fsmis import paths
from fsmis.io import atomic_path
from fsmis.report import paper_tables, reproduction, spread, stats
from fsmis.report.figures import bar_figure, curve_figure, placeholder_figure, qualitative_figure
from fsmis.report.published import load_published
from fsmis.report.results import collect, percent_per_fold, read_cases
from fsmis.report.tables import (
    dice_table,
    flag_note,
    metric_notes,
    metric_table,
    seed_note,
    support_missing_note,
    write_csv,
    write_metric_tables,
    write_text,
)

PROTOCOL_ORDER = ["oracle", "full"]
# the per-case metrics tabulated beside Dice (fsmis.report.tables.METRICS)
OTHER_METRICS = ("iou", "hd95", "nsd")


def _protocol_key(protocol: str) -> tuple:
    return (PROTOCOL_ORDER.index(protocol) if protocol in PROTOCOL_ORDER else len(PROTOCOL_ORDER), protocol)


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
    written = []
    for name in ("dice", *OTHER_METRICS, "paper", "reproduction"):
        written += _say(out_dir, _slice_stem(name, setting, protocol), text)
    content = {"md": text + "\n", "csv": "method\n"}
    written += [write_text(_slice_file(out_dir, name, setting, protocol, ext), content[ext])
                for name in ("stats", "spread") for ext in ("md", "csv")]
    written += placeholder_figure(_slice_file(out_dir, "dice_bars", setting, protocol, "png"), text.strip())
    return written


def _slice_report(part: pd.DataFrame, cases: pd.DataFrame, published: pd.DataFrame, out_dir: Path, dataset: str,
                  setting: str, protocol: str, class_order: list[str], method_order, reference: str,
                  factors: Mapping) -> list[str]:
    """Metric tables, statistics, spread, paper and reproduction tables and bars of one
    setting and protocol with results."""
    tolerance = factors.get("nsd_tolerance_mm")
    table = dice_table(part, class_order, method_order)
    notes = [n for n in [support_missing_note(part)] if n]
    in_slice = cases[(cases["setting"] == setting) & (cases["protocol"] == protocol)]
    dice_notes = notes + [n for n in (flag_note(in_slice, "dice"), seed_note(part)) if n]
    written = write_metric_tables(table, out_dir, _slice_stem("dice", setting, protocol), "dice", dice_notes)
    extra = {}
    for metric in OTHER_METRICS:
        stem = _slice_stem(metric, setting, protocol)
        if in_slice.empty:  # only folds without per_case.tsv: nothing but Dice is known
            written += _say(out_dir, stem, f"No per-case results for setting {setting}, {protocol} protocol: "
                                           f"{metric} needs the per_case.tsv files.")
            continue
        extra[metric] = metric_table(in_slice, class_order, method_order, metric)
        written += write_metric_tables(extra[metric], out_dir, stem, metric, metric_notes(in_slice, metric),
                                       tolerance_mm=tolerance)
    _, per_fold = percent_per_fold(part, class_order)
    summary = stats.summary_table(per_fold, in_slice, class_order, list(table.index), reference)
    written += stats.write_summary(summary, out_dir, _slice_stem("stats", setting, protocol), reference)
    written += spread.write_spread(spread.spread_table(in_slice, class_order, list(table.index)), out_dir,
                                   _slice_stem("spread", setting, protocol))
    paper = paper_tables.paper_table(table, published, dataset, setting, class_order, protocol,
                                     stats.tests_of(summary), reference,
                                     extra={m: extra[m] for m in ("hd95", "nsd") if m in extra},
                                     nsd_tolerance_mm=tolerance)
    paper.notes += notes
    written += paper_tables.write(paper, out_dir, _slice_stem("paper", setting, protocol))
    key = reproduction.our_protocol_key(setting, protocol, supports=factors.get("supports", 1),
                                        seeds=factors.get("seeds", 1),
                                        folds=reproduction.folds_key(factors.get("lineage", "ssl_alpnet"),
                                                                     factors.get("n_folds", 5),
                                                                     factors.get("supp_idx", 2)))
    repro = reproduction.reproduction_table(part, published, dataset, setting, protocol, class_order, key,
                                            method_order)
    written += reproduction.write(repro, out_dir, _slice_stem("reproduction", setting, protocol))
    written += bar_figure(part, class_order, method_order, _slice_file(out_dir, "dice_bars", setting, protocol, "png"),
                          title=f"setting {setting}, {protocol} protocol")
    return written


def _say(out_dir: Path, stem: str, text: str) -> list[str]:
    """``<stem>.md/.csv/.tex`` that say ``text`` instead of a table."""
    return [write_text(out_dir / f"{stem}.md", text + "\n"), write_text(out_dir / f"{stem}.csv", "method\n"),
            write_text(out_dir / f"{stem}.tex", f"% {text}\n")]


def _qualitative_or_note(panels, path: Path, method_order) -> list[str]:
    if panels:
        return qualitative_figure(panels, path, method_order)
    return placeholder_figure(path, "no predictions to show")


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
    factors: Mapping | None = None,
) -> list[str]:
    """Write every table and figure of an experiment into ``out_dir``; return the paths.

    Per setting and protocol (``<stem>`` = ``setting<setting>_<protocol>``; every pair of
    ``slices``, then any other the metrics hold):

    - ``dice_<stem>.csv/.md/.tex``: our Dice, mean ± std over folds (``tables.dice_table``);
    - ``iou_<stem>``, ``hd95_<stem>``, ``nsd_<stem>`` (``.csv/.md/.tex``): the same for
      IoU, HD95 (mm) and NSD from the per-case rows (``tables.metric_table``), with the
      empty-mask flags counted in the notes;
    - ``stats_<stem>.csv/.md``: spread over folds and over scans, paired Wilcoxon test
      against ``reference`` per organ and for the mean (``stats``);
    - ``paper_<stem>.md/.csv/.tex``: the paper-style table, published numbers beside
      ours with the difference and the p-value, and our HD95 and NSD, which no paper
      reports (``paper_tables``);
    - ``spread_<stem>.csv/.md``: the spread over folds, support choices and seeds
      (``spread``);
    - ``reproduction_<stem>.md/.csv/.tex``: every method with a published number, ours
      beside it, and the protocol key of each (``reproduction``);
    - ``dice_bars_<stem>.png/.pdf``; ``qualitative_<stem>.png/.pdf`` when
      ``qualitative_panels`` maps (setting, protocol) to panels.

    Always: ``dice_per_fold.csv`` (long, fractions), ``dice_per_case.csv`` (the
    ``per_case.tsv`` rows of all folds, fractions), ``qualitative.png/.pdf`` (the panels
    given as a list, else those of the first slice) and ``training_curves.png/.pdf``;
    a figure with nothing to draw says so. A configured slice without results gets
    files that say so. ``published``: a DataFrame or CSV path (default: the shipped CSV).
    ``per_case_paths``: the ``per_case.tsv`` of each metrics file, in its order (default:
    the one beside it; ``results.read_cases``). ``factors``: ``n_folds``, ``supports``
    (evaluate.supports) and ``seeds`` (how many) of the experiment, for the protocol key
    of the reproduction table, and ``nsd_tolerance_mm`` for the NSD captions. File names: ``fsmis.paths``.
    """
    out_dir = Path(out_dir)
    metrics_paths = [Path(p) for p in metrics_paths]
    long_df = collect(metrics_paths)
    cases = read_cases(metrics_paths, per_case_paths)
    if not isinstance(published, pd.DataFrame):
        # every transcription: the tables show the chosen one and note the others
        published = load_published(published, alternatives=True)
    dataset = dataset or next((d for d in long_df["dataset"] if d), "unknown")
    class_order = list(class_order or []) or list(dict.fromkeys(long_df["class"]))
    written = [write_csv(frame, _file(out_dir, name, "csv"), index=False)
               for name, frame in (("dice_per_fold", long_df), ("dice_per_case", cases))]
    panels_by_slice = qualitative_panels if isinstance(qualitative_panels, Mapping) else None
    order = _slices(long_df, slices)
    for setting, protocol in order:
        part = long_df[(long_df["setting"] == setting) & (long_df["protocol"] == protocol)]
        if part.empty:
            written += _missing_slice(out_dir, setting, protocol)
        else:
            written += _slice_report(part, cases, published, out_dir, dataset, setting, protocol, class_order,
                                     method_order, reference, factors or {})
        if panels_by_slice is not None:
            written += _qualitative_or_note(panels_by_slice.get((setting, protocol)),
                                            _slice_file(out_dir, "qualitative", setting, protocol, "png"),
                                            method_order)
    if panels_by_slice is not None and order:
        # the first slice's figure under the stable name: a copy (drawing it costs seconds)
        for ext in ("png", "pdf", "svg"):
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
