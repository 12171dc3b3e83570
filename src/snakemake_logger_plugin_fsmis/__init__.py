"""Snakemake logger plugin ``fsmis``: one console line per finished job.

The default workflow profile (workflow/profiles/default/profile.yaml) enables it with
``logger: [fsmis]``. Snakemake finds it by its module name: every importable package
named ``snakemake_logger_plugin_<name>`` is a logger plugin (its registry scans
``sys.path`` with ``pkgutil.iter_modules``). This one lives in src/ beside ``fsmis``:
``pip install -e .`` adds src/ to ``sys.path`` (setuptools installs this src layout
in editable mode as a path entry) and ``pip install .`` copies both packages.

Because it writes to the console, Snakemake drops its own console handler; the
complete log file in ``.snakemake/log/`` is written by a separate handler and stays as
before. What reaches the console:

- the job-count table once at the start (and again at the end of a dry-run);
- one line per finished job: ``[12/91] train demo panet setting1 seed1234 fold0 all  (52 s)``
  (rule, then the wildcard values, then how long the job ran); a dry-run prints one
  line per planned job instead;
- every warning and error in full, with the log of a failed job when
  ``--show-failed-logs`` is set (the default profile sets it);
- messages of the workflow itself (the end-of-run summary) and those of Snakemake
  that are not per-job or start-up chatter (``Nothing to be done``, ``Complete log(s)``).

``--verbose`` prints Snakemake's own console output instead (with its debug messages);
``--quiet progress`` drops the job lines, ``--quiet all`` everything but errors.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from snakemake_interface_logger_plugins.base import LogHandlerBase
from snakemake_interface_logger_plugins.common import LogEvent

__all__ = ["HIDDEN_INFO", "LogHandler", "format_elapsed", "job_label"]

# Snakemake's own INFO messages (no event attached) that come once per job or scheduling
# round, or describe the start-up: kept in the log file, left off the console.
HIDDEN_INFO = (
    "Building DAG of jobs",
    "Using shell:",
    "Select jobs to execute",
    "Assuming unrestricted shared filesystem usage",
    "Conda environments: ignored",
    "Singularity containers: ignored",
    "Group jobs: inactive",
    "Determining filesystem type",
    "Processed ",  # "Processed N potential jobs." while a large DAG is built
    "DAG of jobs will be updated after completion",
    "Updating checkpoint dependencies",
    "Removing temporary output",
    "Touching output file",
    "Write-protecting output file",
    "Elapsed time:",  # the run summary says how long the run took
)

# Events whose records never reach the console here (the log file keeps them): the
# start banner, cores and resources, "Execute N jobs...", the progress counter (folded
# into the job lines), group headers and the rule graph.
_SILENT_EVENTS = {
    LogEvent.WORKFLOW_STARTED,
    LogEvent.RESOURCES_INFO,
    LogEvent.JOB_STARTED,
    LogEvent.GROUP_INFO,
    LogEvent.RULEGRAPH,
}

_RED, _YELLOW, _RESET = "\033[31m", "\033[33m", "\033[0m"


def format_elapsed(seconds: float) -> str:
    """``7 s``, ``2 min 05 s``, ``1 h 03 min``: the run time shown on a job line."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def job_label(rule: str, wildcards: Mapping[str, Any] | None) -> str:
    """The rule name followed by the job's wildcard values in the rule's order, a bare
    number after its wildcard's name as the result paths write it:
    ``train demo panet setting1 seed1234 fold0 all``."""
    words = [str(rule)]
    for name, value in (wildcards or {}).items():
        value = str(value)
        words.append(f"{name}{value}" if value.isdigit() else value)
    return " ".join(words)


def _quietness(quiet: Any) -> set[str]:
    """Snakemake's ``--quiet`` choices (enum members, or names in tests) as lower-case names."""
    return {str(getattr(choice, "name", choice)).lower() for choice in quiet or ()}


class LogHandler(LogHandlerBase):
    """The console handler of the default profile (see the module docstring)."""

    def __post_init__(self) -> None:
        settings = self.common_settings
        self.quiet = _quietness(getattr(settings, "quiet", None))
        self.dryrun = bool(getattr(settings, "dryrun", False))
        self.verbose = bool(getattr(settings, "verbose", False))
        self.printshellcmds = bool(getattr(settings, "printshellcmds", False))
        self.show_failed_logs = bool(getattr(settings, "show_failed_logs", False))
        self.debug_dag = bool(getattr(settings, "debug_dag", False))
        # Snakemake writes a dry-run to stdout and a run to stderr
        self.stream: TextIO = sys.stdout if getattr(settings, "stdout", False) else sys.stderr
        self.nocolor = bool(getattr(settings, "nocolor", False))
        self.jobs: dict[Any, tuple[str, float]] = {}  # jobid -> (label, start time)
        self.done = 0
        self.total = 0
        self._snakemake_formatter: logging.Formatter | None = None
        self._snakemake_filter: Any = None
        self._last_was_job_info = False

    # -- what LogHandlerBase asks ---------------------------------------------------

    @property
    def writes_to_stream(self) -> bool:
        return True  # Snakemake then leaves out its own console handler

    @property
    def writes_to_file(self) -> bool:
        return False

    @property
    def has_filter(self) -> bool:
        return True  # the choice of records is made in emit()

    @property
    def has_formatter(self) -> bool:
        return True

    @property
    def needs_rulegraph(self) -> bool:
        return False

    # -- Snakemake's own formatting, for errors and --verbose -------------------------

    def snakemake_formatter(self) -> logging.Formatter:
        """Snakemake's console formatter (error blocks with the failed job's log)."""
        if self._snakemake_formatter is None:
            from snakemake.logging import DefaultFormatter

            quiet = getattr(self.common_settings, "quiet", None)
            self._snakemake_formatter = DefaultFormatter(quiet, self.show_failed_logs)
        return self._snakemake_formatter

    def snakemake_filter(self) -> Any:
        if self._snakemake_filter is None:
            from snakemake.logging import DefaultFilter

            self._snakemake_filter = DefaultFilter(
                getattr(self.common_settings, "quiet", None),
                self.debug_dag,
                self.verbose,
                self.dryrun,
                self.printshellcmds,
            )
        return self._snakemake_filter

    # -- records to lines -----------------------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.render(record)
            if text:
                self.write(record, text)
        except Exception:
            self.handleError(record)

    def render(self, record: logging.LogRecord) -> str | None:
        """The console text for ``record``, or None when it stays off the console."""
        event = getattr(record, "event", None)
        if self.verbose:
            return self.snakemake_text(record, event)
        if "all" in self.quiet and record.levelno < logging.ERROR:
            return None
        if event in (LogEvent.JOB_ERROR, LogEvent.GROUP_ERROR):
            return self.snakemake_formatter().format(record)
        if getattr(record, "quietness", None) is not None and _quietness([record.quietness]) & self.quiet:
            return None
        if event is None:
            return self.plain_message(record)
        if event in _SILENT_EVENTS:
            return None
        if event == LogEvent.RUN_INFO:
            stats = getattr(record, "stats", None) or {}
            self.total = int(stats.get("total", self.total) or self.total)
            return record.getMessage().rstrip("\n")
        if event == LogEvent.JOB_INFO:
            return self.job_started(record)
        if event == LogEvent.JOB_FINISHED:
            return self.job_finished(record)
        if event == LogEvent.PROGRESS:
            self.done = int(getattr(record, "done", self.done))
            self.total = int(getattr(record, "total", self.total))
            return None
        if event == LogEvent.SHELLCMD:
            command = getattr(record, "shellcmd", None) or getattr(record, "cmd", None)
            if self.printshellcmds and command and "rules" not in self.quiet:
                return f"    {str(command).strip()}"
            return None
        if event == LogEvent.DEBUG_DAG:
            return self.snakemake_formatter().format(record) if self.debug_dag else None
        # an event this version does not know: shown unless it is INFO chatter
        return record.getMessage() if record.levelno >= logging.WARNING else None

    def snakemake_text(self, record: logging.LogRecord, event: Any) -> str | None:
        """What Snakemake's own console handler prints for ``record`` (--verbose),
        with its blank line before a run of job blocks."""
        if not self.snakemake_filter().filter(record):
            return None
        text = self.snakemake_formatter().format(record)
        if not text or text == "None":
            return None
        if event == LogEvent.JOB_INFO:
            if not self._last_was_job_info:
                text = "\n" + text
            self._last_was_job_info = True
        else:
            self._last_was_job_info = False
        return text

    def plain_message(self, record: logging.LogRecord) -> str | None:
        """A record without an event: warnings and errors in full (a traceback is
        already part of the message once Snakemake's queue has passed the record on);
        INFO unless it is Snakemake's per-job or start-up chatter."""
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            message = f"{message}\n{logging.Formatter().formatException(record.exc_info)}"
        if record.levelno >= logging.WARNING:
            return message
        if record.levelno < logging.INFO:
            return None  # debug messages: --verbose
        if message.lstrip().startswith(HIDDEN_INFO):
            return None
        return message

    def job_started(self, record: logging.LogRecord) -> str | None:
        label = job_label(getattr(record, "rule_name", "?"), getattr(record, "wildcards", None))
        self.jobs[getattr(record, "jobid", None)] = (label, record.created)
        if self.dryrun and "rules" not in self.quiet:
            return f"would run: {label}"
        return None

    def job_finished(self, record: logging.LogRecord) -> str | None:
        self.done += 1
        self.total = max(self.total, self.done)
        label, started = self.jobs.pop(getattr(record, "job_id", None), (None, None))
        if label is None:  # the start went unseen: the message names the rule
            label = record.getMessage()
        elapsed = f"  ({format_elapsed(record.created - started)})" if started is not None else ""
        if "progress" in self.quiet:
            return None
        width = len(str(self.total))
        return f"[{self.done:>{width}}/{self.total}] {label}{elapsed}"

    # -- output ---------------------------------------------------------------------

    def colored(self) -> bool:
        if self.nocolor or os.environ.get("TERM") == "dumb" or sys.platform == "win32":
            return False
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def write(self, record: logging.LogRecord, text: str) -> None:
        if self.colored() and record.levelno >= logging.WARNING:
            color = _RED if record.levelno >= logging.ERROR else _YELLOW
            text = f"{color}{text}{_RESET}"
        self.stream.write(text + "\n")
        self.stream.flush()
