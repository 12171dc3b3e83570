"""Shared fixtures: one way to run the real workflow in a subprocess.

`fake_zenodo`: a started, empty fake Zenodo server on 127.0.0.1 (tests/fake_zenodo.py).
`snakemake(workdir, *args, config=..., env=..., timeout=...)` runs `snakemake` on this
repository's Snakefile with `workdir` as its working directory and no profile, and
returns the finished process; `dry_run(workdir, *args, ...)` asserts a dry-run
succeeds and returns its job counts {rule: n}. A user's own Snakemake profile and
MLflow store never leak into a test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fake_zenodo import FakeZenodo

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "config.yaml"


def tiny_config(**overrides) -> dict:
    """A phantom experiment small enough for a test run (4 cases, 3 folds of which fold 0
    runs, the CPU backbone, a few steps); ``overrides`` replace whole top-level keys.
    Complete in itself: with ``--directory`` Snakemake does not merge the demo's
    config.yaml, so the backbone is named here."""
    config = {
        "experiment": "tiny",
        "dataset": {"name": "phantom", "n_cases": 4},
        "preprocess": {"image_size": 64},
        "model": {"backbone": "small_cnn", "feature_dim": 16},
        "n_folds": 3,
        "folds": [0],
        "settings": ["1"],
        "methods": ["ssl_alpnet"],
        "baselines": [],
        "train": {"steps": 6, "checkpoint_every": 3, "log_every": 2},
    }
    config.update(overrides)
    return config


def run_workflow(workdir, *args, config=DEMO_CONFIG, env: dict | None = None, timeout: int = 600):
    """``config``: a YAML path, or a dict written to ``<workdir>/<experiment>.yaml``;
    ``env``: variables set on top of this process's environment."""
    workdir = Path(workdir)
    if isinstance(config, dict):
        path = workdir / f"{config.get('experiment', 'test')}.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        config = path
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(config), "--workflow-profile", "none", *args]
    full_env = {k: v for k, v in os.environ.items() if k not in ("SNAKEMAKE_PROFILE", "MLFLOW_TRACKING_URI")}
    full_env.update(env or {})
    # Snakemake's output is UTF-8 whatever the locale of this process
    return subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace", env=full_env,
                          timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """Rows of the first "Job stats:" table that Snakemake prints: {rule: count}."""
    lines = output.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Job stats:")
    except StopIteration:
        raise AssertionError(f"no 'Job stats:' table in the output:\n{output}") from None
    counts = {}
    for line in lines[start + 1:]:
        row = re.fullmatch(r"\s*([A-Za-z_]\w*)\s+(\d+)\s*", line)
        if row is None:
            if counts:  # the table ended without a total row
                break
            continue  # the header and the dashed rule under it
        if row[1] == "total":
            assert sum(counts.values()) == int(row[2]), output
            return counts
        counts[row[1]] = int(row[2])
    raise AssertionError(f"no 'total' row in the job stats:\n{output}")


@pytest.fixture(scope="session")
def snakemake():
    return run_workflow


@pytest.fixture(scope="session")
def dry_run():
    def run(workdir, *args, **kwargs):
        result = run_workflow(workdir, "--dry-run", "--cores", "2", *args, **kwargs)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        return job_counts(output)

    return run


@pytest.fixture
def fake_zenodo():
    """A started, empty FakeZenodo; stopped after the test."""
    with FakeZenodo() as server:
        yield server
