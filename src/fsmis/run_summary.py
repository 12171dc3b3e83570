"""The few lines a finished run prints: how long it took, where the report is, the
headline table, and how to look at the runs in MLflow.

Standard library only: the Snakefile's end handler calls it in the main process, which
has not imported pandas or MLflow.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

MAX_TABLE_LINES = 12  # a headline, not the report: long tables are cut with a pointer


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _table_lines(markdown: Path) -> list[str]:
    """The pipe-table lines of a report Markdown file (caption and notes left out)."""
    lines = [line for line in markdown.read_text(encoding="utf-8").splitlines() if line.startswith("|")]
    if len(lines) > MAX_TABLE_LINES:
        lines = lines[:MAX_TABLE_LINES] + [f"| ... ({len(lines) - MAX_TABLE_LINES} more rows in {markdown}) |"]
    return lines


def run_summary(experiment: str, report_dir: str | os.PathLike, seconds: float, headline: str | os.PathLike,
                tracking_uri: str | None, notes: Sequence[str] = ()) -> str:
    """The end-of-run summary: wall time, the report folder, the ``headline`` table (a
    report Markdown file; skipped when it does not exist), the HTML report command and
    the ``mlflow ui`` command for ``tracking_uri`` (None: tracking off)."""
    report_dir, headline = Path(report_dir), Path(headline)
    lines = [f"fsmis: experiment {experiment} finished in {_duration(seconds)}.",
             f"Report: {report_dir}/ (Markdown, CSV, LaTeX, PNG/PDF; how each number is made: docs/report.md)."]
    if headline.is_file():
        lines += [f"{headline.name}, Dice (%):", *_table_lines(headline)]
    lines.append("HTML report with every table and figure: snakemake --report report.html")
    if tracking_uri:
        if tracking_uri.startswith(("http://", "https://")):
            lines.append(f"MLflow runs: open {tracking_uri} (experiment {experiment})")
        else:
            lines.append(f"MLflow runs: mlflow ui --backend-store-uri {tracking_uri} (experiment {experiment})")
    lines += list(notes)
    return "\n".join(lines)
