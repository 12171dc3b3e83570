"""Console output of the default profile: the `fsmis` logger plugin
(src/snakemake_logger_plugin_fsmis) prints one line per finished job, warnings and
errors in full (a failed job's log included) and the run summary, while Snakemake's
log file in .snakemake/log/ keeps everything."""

from __future__ import annotations

import argparse
import io
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import REPO, job_counts, tiny_config
from snakemake_interface_logger_plugins.common import LogEvent

from snakemake_logger_plugin_fsmis import LogHandler, format_elapsed, job_label

PROFILE = REPO / "workflow" / "profiles" / "default" / "profile.yaml"
JOB_LINE = re.compile(r"\[\s*(\d+)/(\d+)\] (\w+)( .*)?  \((\d+ s|\d+ min \d\d s|\d+ h \d\d min)\)")

TRAIN_WILDCARDS = {"exp": "demo", "method": "panet", "setting": "1", "seed": "1234", "fold": "0", "part": "all"}


# --- the handler, fed with hand-made records ----------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def handler(stream=None, **settings) -> LogHandler:
    """A handler as Snakemake builds it, for the options in ``settings``, writing to ``stream``."""
    common = {"printshellcmds": False, "nocolor": False, "quiet": None, "debug_dag": False, "verbose": False,
              "show_failed_logs": True, "stdout": False, "dryrun": False}
    common.update(settings)
    made = LogHandler(SimpleNamespace(**common), None)
    made.stream = io.StringIO() if stream is None else stream
    return made


def record(msg, level=logging.INFO, created=None, **extra) -> logging.LogRecord:
    made = logging.LogRecord("snakemake.logging", level, __file__, 1, msg, None, None)
    made.__dict__.update(extra)
    if created is not None:
        made.created = created
    return made


def job_info(jobid, rule, wildcards=None, created=0.0) -> logging.LogRecord:
    """The JOB_INFO record Snakemake logs when it starts a job (jobs.py, Job.log_info)."""
    return record(f" Rule: {rule}, Jobid: {jobid}", created=created, event=LogEvent.JOB_INFO, jobid=jobid,
                  rule_msg=None, rule_name=rule, local=False, input=["in.txt"], output=["out.txt"], log=[],
                  benchmark=None, wildcards=wildcards or {}, reason="Missing output files: out.txt",
                  resources={"tmpdir": "/tmp"}, priority=0, threads=1, indent=False, is_checkpoint=False,
                  printshellcmd=True, is_handover=False, shellcmd=None)


def finished(jobid, rule, created) -> logging.LogRecord:
    return record(f"Finished jobid: {jobid} (Rule: {rule})", created=created, event=LogEvent.JOB_FINISHED,
                  job_id=jobid)


def stats(counts: dict[str, int]) -> logging.LogRecord:
    rows = "".join(f"{rule:<10}{n:>7}\n" for rule, n in counts.items())
    total = sum(counts.values())
    return record(f"Job stats:\njob         count\n--------  -------\n{rows}total{total:>12}\n",
                  event=LogEvent.RUN_INFO, stats={**counts, "total": total})


def printed(made: LogHandler, *records: logging.LogRecord) -> list[str]:
    for each in records:
        made.handle(each)
    return made.stream.getvalue().splitlines()


def test_one_line_per_finished_job_and_no_chatter():
    table = stats({"train": 2, "report": 1})
    lines = printed(
        handler(),
        record("Assuming unrestricted shared filesystem usage."),
        record("Workflow has started!", event=LogEvent.WORKFLOW_STARTED, quietness="host"),
        record("Building DAG of jobs..."),
        record("Using shell: /usr/bin/bash"),
        record("Provided cores: 2", event=LogEvent.RESOURCES_INFO, cores=2),
        table,
        record("Select jobs to execute..."),
        record("Execute 2 jobs...", event=LogEvent.JOB_STARTED, jobs=[1, 2]),
        job_info(1, "train", TRAIN_WILDCARDS, created=100.0),
        record("Shell command: None", event=LogEvent.SHELLCMD, shellcmd=None, indent=False),
        job_info(2, "train", {**TRAIN_WILDCARDS, "fold": "1"}, created=101.0),
        finished(2, "train", created=126.0),
        record(None, event=LogEvent.PROGRESS, done=1, total=3),
        finished(1, "train", created=225.4),
        record(None, event=LogEvent.PROGRESS, done=2, total=3),
        job_info(0, "report", created=230.0),
        finished(0, "report", created=230.2),
        record(None, event=LogEvent.PROGRESS, done=3, total=3),
        record("Elapsed time: 0:02:10"),
    )
    n = len(table.msg.splitlines())  # the job-count table, as Snakemake wrote it
    assert lines[:n] == table.msg.splitlines() and lines[n - 1].split() == ["total", "3"]
    assert lines[n:] == [
        "[1/3] train demo panet setting1 seed1234 fold1 all  (25 s)",
        "[2/3] train demo panet setting1 seed1234 fold0 all  (2 min 05 s)",
        "[3/3] report  (0 s)",
    ]
    assert all(JOB_LINE.fullmatch(line) for line in lines[n:])


def test_warnings_errors_and_the_workflows_own_messages_are_kept_in_full():
    summary = "fsmis: experiment demo finished in 7 s.\nReport: results/demo/report/ (Markdown, CSV)."
    try:
        raise ValueError("bad value")
    except ValueError:
        failure = record("Traceback follows", level=logging.ERROR)
        failure.exc_info = sys.exc_info()
    lines = printed(
        handler(),
        record("2 of 10 requested case(s) were skipped (no mask): a, b; reasons in x.tsv", level=logging.WARNING),
        record(summary),
        record("Nothing to be done (all requested files are present and up to date)."),
        record("Complete log(s): /w/.snakemake/log/x.snakemake.log"),
        record("Exiting because a job execution failed. Look below for error messages", level=logging.ERROR),
        failure,
        record("a debug message", level=logging.DEBUG),
    )
    text = "\n".join(lines)
    assert lines[0].startswith("2 of 10 requested case(s) were skipped")
    assert lines[1:3] == summary.splitlines()
    assert "Nothing to be done" in text and "Complete log(s): /w/.snakemake/log/x.snakemake.log" in text
    assert "Exiting because a job execution failed" in text
    assert "Traceback follows" in text and "ValueError: bad value" in text
    assert "debug" not in text


def test_a_failed_job_prints_its_error_block_and_its_log(tmp_path):
    log = tmp_path / "logs" / "canonical" / "phantom_000.log"
    log.parent.mkdir(parents=True)
    log.write_text("INFO start\nTraceback (most recent call last):\nInputError: not a readable image\n",
                   encoding="utf-8")
    error = record("Error in rule canonical, jobid: 4", level=logging.ERROR, event=LogEvent.JOB_ERROR,
                   rule_name="canonical", rule_msg=None, jobid=4, input=["raw.nii.gz"], output=["c.nii.gz"],
                   log=[str(log)], conda_env=None, container_img=None, aux={}, indent=False, shellcmd=None)
    text = "\n".join(printed(handler(), job_info(4, "canonical", {"ds": "phantom", "case": "phantom_000"}), error))
    assert "Error in rule canonical:" in text and "jobid: 4" in text
    assert f"Logfile {log}:" in text
    assert "InputError: not a readable image" in text
    # without --show-failed-logs Snakemake's block names the log but leaves its lines out
    assert "InputError" not in "\n".join(printed(handler(show_failed_logs=False), error))


def test_quiet_dry_run_shell_commands_and_colors():
    quiet = printed(handler(quiet={"progress"}), stats({"train": 1}), job_info(1, "train", TRAIN_WILDCARDS, 0.0),
                    finished(1, "train", 3.0), record("a warning", level=logging.WARNING))
    assert not any(JOB_LINE.fullmatch(line) for line in quiet) and quiet[-1] == "a warning"
    silent = printed(handler(quiet={"all"}), stats({"train": 1}), record("a warning", level=logging.WARNING),
                     record("an error", level=logging.ERROR))
    assert silent == ["an error"]
    dry = printed(handler(dryrun=True), job_info(3, "evaluate", {"exp": "demo", "fold": "2"}))
    assert dry == ["would run: evaluate demo fold2"]
    shell = printed(handler(printshellcmds=True),
                    record("Shell command: echo hi", event=LogEvent.SHELLCMD, shellcmd="echo hi", indent=False),
                    record("Shell command: None", event=LogEvent.SHELLCMD, shellcmd=None, indent=False))
    assert shell == ["    echo hi"]
    colored = printed(handler(Terminal()), record("careful", level=logging.WARNING),
                      record("broken", level=logging.ERROR))
    assert colored == ["\033[33mcareful\033[0m", "\033[31mbroken\033[0m"]
    assert printed(handler(Terminal(), nocolor=True), record("careful", level=logging.WARNING)) == ["careful"]


def test_verbose_gives_snakemakes_own_job_blocks():
    lines = printed(handler(verbose=True), job_info(1, "train", TRAIN_WILDCARDS, 0.0),
                    finished(1, "train", 3.0), record(None, event=LogEvent.PROGRESS, done=1, total=1))
    text = "\n".join(lines)
    assert "rule train:" in text and "wildcards: exp=demo" in text and "reason: Missing output files" in text
    assert "Finished jobid: 1 (Rule: train)" in text and "1 of 1 steps (100%) done" in text


def test_labels_and_durations():
    assert job_label("train", TRAIN_WILDCARDS) == "train demo panet setting1 seed1234 fold0 all"
    assert job_label("superpixels", {"ds": "phantom", "case": "phantom_003"}) == "superpixels phantom phantom_003"
    assert job_label("all", None) == "all"
    assert [format_elapsed(s) for s in (0.4, 59.4, 60, 125.4, 3599, 3600, 7380)] == [
        "0 s", "59 s", "1 min 00 s", "2 min 05 s", "59 min 59 s", "1 h 00 min", "2 h 03 min"]


# --- inside Snakemake's logging set-up -------------------------------------------------


def test_profile_enables_the_plugin_which_snakemake_finds():
    from snakemake.cli import get_argument_parser
    from snakemake_interface_logger_plugins.registry import LoggerPluginRegistry

    profile = yaml.safe_load(PROFILE.read_text(encoding="utf-8"))
    assert profile["logger"] == ["fsmis"]
    assert "printshellcmds" not in profile  # script rules have no shell command to print
    assert LoggerPluginRegistry().get_plugin("fsmis").log_handler is LogHandler
    assert get_argument_parser().parse_args(["--logger", "fsmis"]).logger == ["fsmis"]


def test_the_plugin_replaces_the_console_handler_and_the_log_file_keeps_everything(tmp_path, capsys):
    from snakemake.logging import LoggerManager
    from snakemake.settings.types import OutputSettings
    from snakemake_interface_logger_plugins.registry import LoggerPluginRegistry

    plugin_settings = LoggerPluginRegistry().get_plugin("fsmis").get_settings(argparse.Namespace())
    logger = logging.getLogger("fsmis.test_console")
    logger.propagate = False
    settings = OutputSettings(show_failed_logs=True, log_handler_settings={"fsmis": plugin_settings})
    manager = LoggerManager(logger, settings)
    try:
        assert not any(h.name == "DefaultStreamHandler" for h in logger.handlers)
        manager.setup_logfile(tmp_path)
        logger.info("Select jobs to execute...")
        info = job_info(7, "splits", {"exp": "demo"})
        logger.info(info.msg, extra={k: v for k, v in info.__dict__.items() if k in JOB_INFO_KEYS})
        logger.info("Finished jobid: 7 (Rule: splits)", extra=dict(event=LogEvent.JOB_FINISHED, job_id=7))
        logger.info("fsmis: experiment demo finished in 7 s.")
    finally:
        manager.stop()
    console = capsys.readouterr().err.splitlines()
    assert console[0].startswith("[1/1] splits demo  (") and console[1:] == ["fsmis: experiment demo finished in 7 s."]
    logfile = Path(manager.get_logfile()[0]).read_text(encoding="utf-8")
    for line in ("Select jobs to execute...", "rule splits:", "reason: Missing output files: out.txt",
                 "Finished jobid: 7 (Rule: splits)", "fsmis: experiment demo finished in 7 s."):
        assert line in logfile


JOB_INFO_KEYS = {"event", "jobid", "rule_msg", "rule_name", "local", "input", "output", "log", "benchmark",
                 "wildcards", "reason", "resources", "priority", "threads", "indent", "is_checkpoint",
                 "printshellcmd", "is_handover", "shellcmd"}


# --- the real workflow through the default profile -----------------------------------


def run_with_default_profile(workdir: Path, *args, config: dict) -> subprocess.CompletedProcess:
    """conftest.run_workflow without ``--workflow-profile none``: Snakemake finds
    profiles/default beside the Snakefile also when --directory points elsewhere."""
    path = workdir / f"{config['experiment']}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(path), "--cores", "2", *args]
    env = {k: v for k, v in os.environ.items() if k not in ("SNAKEMAKE_PROFILE", "MLFLOW_TRACKING_URI")}
    return subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace", env=env,
                          timeout=900)


@pytest.mark.slow
def test_a_tiny_run_prints_a_line_per_job_and_ends_with_the_summary(tmp_path):
    result = run_with_default_profile(tmp_path, config=tiny_config(methods=["panet"]))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "profiles/default" in output  # the workflow profile was used
    lines = output.splitlines()
    counts = job_counts(output)
    total = sum(counts.values())
    job_lines = [JOB_LINE.fullmatch(line) for line in lines]
    job_lines = [m for m in job_lines if m]
    assert sorted(int(m[1]) for m in job_lines) == list(range(1, total + 1))
    assert all(int(m[2]) == total for m in job_lines)
    assert {rule: sum(m[3] == rule for m in job_lines) for rule in counts} == counts
    assert len(lines) <= 2 * total + 25, output
    assert "Shell command" not in output and "Select jobs to execute" not in output
    # the summary comes last, followed only by the pointer to the complete log
    start = next(i for i, line in enumerate(lines) if line.startswith("fsmis: experiment tiny finished in"))
    assert start > max(i for i, line in enumerate(lines) if JOB_LINE.fullmatch(line))
    assert any(line.startswith("Report: results/tiny/report/") for line in lines[start:])
    assert lines[-1].startswith("Complete log(s): ") and lines[-1].endswith(".snakemake.log")
    # ... which holds Snakemake's full account of every job
    logfile = Path(lines[-1].removeprefix("Complete log(s): ")).read_text(encoding="utf-8")
    assert logfile.count("Finished jobid: ") == total
    assert "rule train:" in logfile and "reason: " in logfile


@pytest.mark.slow
def test_a_failed_job_prints_its_log(tmp_path):
    # garbage where the phantom generator's outputs would be: they count as present, so
    # the canonical job reads them and fails at run time
    raw = tmp_path / "resources" / "phantom" / "raw"
    raw.mkdir(parents=True)
    for case in range(4):
        for kind in ("image", "label"):
            (raw / f"phantom_{case:03d}_{kind}.nii.gz").write_text("not a NIfTI file\n", encoding="utf-8")
    target = "results/data/phantom/canonical/phantom_000_image.nii.gz"
    result = run_with_default_profile(tmp_path, target, config=tiny_config())
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Error in rule canonical:" in output
    log = tmp_path / "logs" / "canonical" / "phantom" / "phantom_000.log"
    assert "Logfile logs/canonical/phantom/phantom_000.log:" in output
    last = log.read_text(encoding="utf-8").strip().splitlines()[-1]
    assert "not a readable image" in last and last in output  # the log's own lines, the error last
    assert "Exiting because a job execution failed" in output
    assert len(output.splitlines()) <= 80, output
