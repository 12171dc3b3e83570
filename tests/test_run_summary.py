"""The end-of-run summary (fsmis.run_summary)."""

from fsmis.run_summary import MAX_TABLE_LINES, run_summary


def test_summary_names_time_report_table_html_and_mlflow(tmp_path):
    md = tmp_path / "dice_setting1_oracle.md"
    md.write_text("Dice (%), mean ± std over folds.\n\n| method | liver | mean |\n| --- | ---: | ---: |\n"
                  "| ssl_alpnet | 76.3 ± 3.2 | 63.2 ± 2.5 |\n\nA note.\n", encoding="utf-8")
    text = run_summary("demo", tmp_path, 125.4, md, "sqlite:///results/mlflow/mlflow.db")
    lines = text.splitlines()
    assert lines[0] == "fsmis: experiment demo finished in 2 min 05 s."
    assert f"Report: {tmp_path}/" in lines[1]
    assert "| ssl_alpnet | 76.3 ± 3.2 | 63.2 ± 2.5 |" in lines and "A note." not in text  # the table only
    assert "snakemake --report report.html" in text
    uri = "sqlite:///results/mlflow/mlflow.db"
    assert lines[-1] == f"MLflow runs: mlflow ui --backend-store-uri {uri} (experiment demo)"
    assert len(lines) <= 20


def test_long_tables_are_cut_and_tracking_off_or_a_server_is_said(tmp_path):
    md = tmp_path / "dice.md"
    md.write_text("\n".join(["| method | mean |", "| --- | ---: |"] + [f"| m{i} | {i} |" for i in range(30)]),
                  encoding="utf-8")
    text = run_summary("x", tmp_path, 7, md, None)
    assert "finished in 7 s" in text and "MLflow" not in text
    assert sum(line[3:4].isdigit() for line in text.splitlines() if line.startswith("| m")) == MAX_TABLE_LINES - 2
    assert "(20 more rows in" in text
    assert "open http://host:5000 (experiment x)" in run_summary("x", tmp_path, 7, md, "http://host:5000")
    assert "Dice" not in run_summary("x", tmp_path, 7, tmp_path / "missing.md", None).splitlines()[2]
