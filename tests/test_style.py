"""Style is checked, not argued: ruff (configured in pyproject.toml) on the Python
code, snakefmt on the Snakefile and rules."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    # the tools are pinned in envs/requirements.txt and live beside this Python
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -r envs/requirements.txt")
    return found


def test_ruff_is_clean():
    result = subprocess.run([_tool("ruff"), "check", "--no-cache", "."], cwd=REPO, capture_output=True,
                            text=True, encoding="utf-8", errors="replace")
    assert result.returncode == 0, result.stdout + result.stderr


def test_snakefmt_is_clean():
    rules = sorted(str(p.relative_to(REPO)) for p in (REPO / "workflow" / "rules").glob("*.smk"))
    # snakefmt prints emoji: decode as UTF-8 whatever the locale
    result = subprocess.run([_tool("snakefmt"), "--check", "Snakefile", *rules], cwd=REPO, capture_output=True,
                            text=True, encoding="utf-8", errors="replace")
    assert result.returncode == 0, result.stdout + result.stderr
