"""benchmarks/gpu_check.py on the CPU: the quick mode's Markdown table (its columns,
numbers in every cell, the precision path of each row) and the rows' precision choice
on devices this machine does not have (detection mocked)."""

import sys
from pathlib import Path

import pytest
import torch

from fsmis import precision as P

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_check  # noqa: E402


def _table(text: str) -> list[dict]:
    rows = [line for line in text.splitlines() if line.startswith("|")]
    head = [c.strip() for c in rows[0].strip("|").split("|")]
    assert head == gpu_check.COLUMNS
    assert set(rows[1].replace("|", "")) == {"-"}
    return [dict(zip(head, (c.strip() for c in row.strip("|").split("|")))) for row in rows[2:]]


@pytest.mark.parametrize("methods", [["ssl_alpnet"], pytest.param(["adnet"], marks=pytest.mark.slow)])
def test_quick_check_writes_a_table_of_numbers(tmp_path, capsys, methods):
    threads = torch.get_num_threads()
    out = tmp_path / "check.md"
    try:
        assert gpu_check.main(["--quick", "--methods", *methods, "--threads", "1", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)  # the check sets the process's threads; later tests get theirs back
    text = out.read_text(encoding="utf-8")
    assert "| method |" in capsys.readouterr().out  # the table goes to stdout as well
    rows = _table(text)
    assert [(r["method"], r["precision"]) for r in rows] == [(m, p) for m in methods for p in ("fp32", "amp")]
    auto = P.resolve_amp("auto", "cpu")
    assert f"`amp: auto` here: **{auto.path}** ({auto.reason})" in text
    assert f"torch {torch.__version__}" in text and "- device: CPU" in text
    for row in rows:
        for column in gpu_check.COLUMNS[3:]:
            assert float(row[column]) >= 0, (column, row)  # every cell a number (peak memory read via VmHWM)
        assert int(row["steps"]) == 3, row
        assert float(row["step_ms"]) > 0 and float(row["episode_ms"]) > 0 and float(row["eval_slices_per_s"]) > 0, row
        # the cells are rounded to 0.1: recomputed from them, the share may differ by a few tenths
        assert float(row["wait_pct"]) == pytest.approx(100 * float(row["episode_ms"]) / float(row["step_ms"]),
                                                       rel=0.02, abs=0.5), row
        assert float(row["peak_mb"]) > 100, row  # the process with torch imported
    fp32, amp = rows[0], rows[1]
    assert fp32["path"] == "fp32" and float(fp32["x_fp32"]) == 1.0
    # where bf16 is native the amp row is what auto runs; elsewhere emulated bf16, said so in the header
    assert amp["path"] == "bf16+channels_last"
    assert ("not what auto runs here" in text) is (auto.dtype is None)


def test_row_precision_on_each_kind_of_device(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert gpu_check.plan_of("amp", cuda).path == "fp16+channels_last+grad_scaler"  # no native bf16: fp16
    assert gpu_check.plan_of("fp32", cuda).path == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert gpu_check.plan_of("amp", cuda).path == "bf16+channels_last"
    assert gpu_check.plan_of("bf16", cuda).path == "bf16" and gpu_check.plan_of("fp16+cl", cuda).dtype == torch.float16
    for native in (False, True):
        monkeypatch.setattr(P, "cpu_has_fast_bf16", lambda native=native: native)
        assert gpu_check.plan_of("amp", cpu).path == "bf16+channels_last"
    with pytest.raises(SystemExit, match="fp16 needs a CUDA device"):
        gpu_check.plan_of("fp16", cpu)


def test_unknown_method_is_one_clear_error(capsys):
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--methods", "ssl_alpnet", "nosuchnet"])
    assert "--methods: unknown nosuchnet; registered: ssl_alpnet" in capsys.readouterr().err
