"""fsmis.report.paper_tables and .published: published numbers beside ours, differences, LaTeX, notes."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from fsmis.report import paper_tables as P
from fsmis.report import published as pub
from fsmis.report.results import LONG_COLUMNS
from fsmis.report.stats import PairedTest
from fsmis.report.tables import dice_table

CLASSES = ["left_kidney", "right_kidney", "spleen", "liver"]  # the papers' order


def _fold_table(dice: dict, dataset: str = "chaos_mr", setting: str = "1") -> pd.DataFrame:
    rows = []
    for method, folds in dice.items():
        for fold, values in enumerate(folds):
            for name, value in zip(CLASSES, values):
                rows.append({"method": method, "setting": setting, "protocol": "oracle", "fold": fold,
                             "dataset": dataset, "class": name, "dice": value, "n_cases": 2, "source": "x"})
    return dice_table(pd.DataFrame(rows, columns=LONG_COLUMNS), CLASSES, list(dice))


OURS = {
    "ssl_alpnet": [(0.80, 0.84, 0.70, 0.76), (0.82, 0.86, 0.74, 0.78)],
    "panet": [(0.30, 0.30, 0.30, 0.50), (0.40, 0.30, 0.30, 0.50)],
    "untrained": [(0.10, 0.10, 0.10, 0.10), (0.10, 0.10, 0.10, 0.10)],
}


def _published() -> pd.DataFrame:
    rows = []

    def add(method, setting, values, source, note="", dataset="abd_mri"):
        for name, value in zip(CLASSES + ["mean"], values):
            rows.append((method, dataset, setting, name, value, source, note))

    add("ssl_alpnet", "1", (81.92, 85.18, 72.18, 76.10, 78.84), "Ouyang 2020")
    add("panet@dspnet_rerun", "1", (34.96, 30.41, 27.73, 47.37, 35.11), "Tang DSPNet")
    add("catnet", "1", (74.01, 78.90, 68.83, 78.98, 75.18), "Lin CAT-Net")
    add("ssl_alpnet", "2", (73.63, 78.39, 67.02, 73.05, 73.02), "Ouyang 2020")
    add("catnet", "2", (75.31, 83.23, 67.31, 75.02, 75.22), "Lin CAT-Net")
    add("crapnet", "2", (74.66, 82.77, 70.82, 73.82, 75.52), "Ding CRAPNet", note="as printed")
    add("ssl_alpnet", "1", (1, 2, 3, 4, 5), "other dataset", dataset="abd_ct")
    return pd.DataFrame(rows, columns=pub.PUBLISHED_COLUMNS)


def test_layout_published_beside_ours_and_difference():
    tests = {("panet", "mean"): PairedTest(4, 4, 0.0, 0.0123, -0.4, "")}
    table = P.paper_table(_fold_table(OURS), _published(), "chaos_mr", "1", CLASSES, tests=tests)
    # rows: ours in the given order, then published-only methods
    assert list(table.data.index) == ["ssl_alpnet", "panet", "untrained", "catnet"]
    assert list(table.data["kind"]) == ["ours", "ours", "ours", "published"]
    assert table.columns == CLASSES + ["mean"]
    d = table.data
    # ssl_alpnet left kidney: folds 80 and 82 -> 81 ± 1.414; published 81.92
    assert d.loc["ssl_alpnet", "left_kidney_ours"] == pytest.approx(81.0)
    assert d.loc["ssl_alpnet", "left_kidney_ours_std"] == pytest.approx(math.sqrt(2))
    assert d.loc["ssl_alpnet", "left_kidney_published"] == pytest.approx(81.92)
    assert d.loc["ssl_alpnet", "left_kidney_diff"] == pytest.approx(81.0 - 81.92)
    # mean column: fold means (77.5, 80.0) -> 78.75; the published mean is taken as printed
    assert d.loc["ssl_alpnet", "mean_ours"] == pytest.approx(78.75)
    assert d.loc["ssl_alpnet", "mean_diff"] == pytest.approx(78.75 - 78.84)
    # PANet's only published numbers are a re-run: matched, and said so
    assert d.loc["panet", "published_as"] == "panet@dspnet_rerun"
    assert d.loc["panet", "liver_diff"] == pytest.approx(50.0 - 47.37)
    assert any("panet: the published numbers are those of panet@dspnet_rerun" in n for n in table.notes)
    # no published row: no numbers invented
    assert np.isnan(d.loc["untrained", "mean_published"]) and np.isnan(d.loc["untrained", "mean_diff"])
    assert np.isnan(d.loc["catnet", "mean_ours"]) and d.loc["catnet", "mean_published"] == pytest.approx(75.18)
    assert list(d["p_label"]) == ["ref.", "0.012", "n/a", ""]

    md = P.to_markdown(table).splitlines()
    header = next(line for line in md if line.startswith("| method"))
    assert header == ("| method | left kidney | pub. | Δ | right kidney | pub. | Δ | spleen | pub. | Δ"
                      " | liver | pub. | Δ | Mean | pub. | Δ | p vs ssl_alpnet |")
    row = next(line for line in md if line.startswith("| ssl_alpnet"))
    assert row.startswith("| ssl_alpnet [1] | 81.00 ± 1.41 | 81.92 | −0.92 | 85.00 ± 1.41 | 85.18 | −0.18 |")
    assert row.endswith("| 78.75 ± 1.77 | 78.84 | −0.09 | ref. |")
    catnet = next(line for line in md if line.startswith("| catnet"))
    assert catnet == "| catnet [3] | – | 74.01 | – | – | 78.90 | – | – | 68.83 | – | – | 78.98 | – | – | 75.18 | – |  |"
    assert "- [1] Ouyang 2020" in md and "- [2] Tang DSPNet" in md and "- [3] Lin CAT-Net" in md

    csv = P.to_csv_frame(table)
    assert list(csv.columns[:6]) == ["kind", "n_folds", "left_kidney_ours", "left_kidney_ours_std",
                                     "left_kidney_published", "left_kidney_diff"]
    assert csv.loc["catnet", "source"] == "Lin CAT-Net" and csv.loc["panet", "p_value"] == pytest.approx(0.0123)


def test_setting_two_follows_the_code_lineage():
    published = _published()
    two = P.paper_table(_fold_table(OURS, setting="2"), published, "chaos_mr", "2", CLASSES)
    two_all = P.paper_table(_fold_table(OURS, setting="2all"), published, "chaos_mr", "2all", CLASSES)
    # SSL-ALPNet's "Setting 2" is ours "2"; CAT-Net (ADNet family) drops only slices with all organs
    assert two.data.loc["ssl_alpnet", "mean_published"] == pytest.approx(73.02)
    assert "catnet" not in two.data.index and "catnet" in two_all.data.index
    assert np.isnan(two_all.data.loc["ssl_alpnet", "mean_published"])
    # a source whose definition is unknown is shown under "2", marked
    assert "crapnet" in two.data.index and "crapnet" in two.unverified
    assert any(n.startswith("‡") and "crapnet" in n for n in two.notes)
    assert "| crapnet [2]‡ |" in P.to_markdown(two)
    assert any(n == "crapnet: as printed." for n in two.notes)


def test_phantom_has_a_note_instead_of_published_numbers():
    table = P.paper_table(_fold_table(OURS, dataset="phantom"), pub.load_published(), "phantom", "1", CLASSES)
    assert not table.has_published
    assert list(table.data.index) == ["ssl_alpnet", "panet", "untrained"]
    assert table.data.filter(like="_published").isna().all().all()
    assert table.notes[0].startswith("No published numbers for dataset phantom")
    md = P.to_markdown(table)
    assert "| method | left kidney | right kidney | spleen | liver | Mean | p vs ssl_alpnet |" in md
    assert "pub." not in md and "No published numbers for dataset phantom" in md
    # a known dataset in a setting no paper reports
    card = P.paper_table(_fold_table(OURS), pub.load_published(), "cmr_bssfp", "2", CLASSES)
    assert card.notes[0] == "No published numbers for Card-MRI in setting 2. Only our results are shown."


def test_latex_is_booktabs_and_escaped():
    table = P.paper_table(_fold_table(OURS), _published(), "chaos_mr", "1", CLASSES)
    tex = P.to_latex(table, label="tab:x")
    lines = tex.splitlines()
    assert r"\toprule" in lines and r"\midrule" in lines and r"\bottomrule" in lines
    assert r"\begin{tabular}{l" + "r" * 16 + "}" in lines
    assert r"\cmidrule(lr){2-4}\cmidrule(lr){5-7}\cmidrule(lr){8-10}\cmidrule(lr){11-13}\cmidrule(lr){14-16}" in lines
    assert any(r"\multicolumn{3}{c}{left kidney}" in line for line in lines)
    row = next(line for line in lines if line.startswith("ssl"))
    assert row.startswith(r"ssl\_alpnet [1] & 81.00 $\pm$ 1.41 & 81.92 & $-$0.92 &")
    assert row.endswith(r"& ref. \\")
    assert r"panet@dspnet\_rerun" in tex and "ssl_alpnet" not in tex.replace(r"ssl\_alpnet", "")
    # a rule separates our rows from the published-only ones
    assert lines[lines.index(next(line for line in lines if line.startswith("catnet"))) - 1] == r"\midrule"
    assert P.latex_escape("a_b & 5% #1 {x} ~ ^ \\ ±Δ") == (
        r"a\_b \& 5\% \#1 \{x\} \textasciitilde{} \textasciicircum{} \textbackslash{} $\pm$$\Delta$")


def test_shipped_csv_and_name_mapping(tmp_path):
    published = pub.load_published()
    assert list(published.columns) == pub.PUBLISHED_COLUMNS
    row = published[(published["method"] == "ssl_alpnet") & (published["dataset"] == "abd_mri")
                    & (published["setting"] == "1") & (published["class"] == "mean")]
    assert row["dice"].item() == pytest.approx(78.84)
    assert set(published["dataset"]) == {"abd_mri", "abd_ct", "card_mri"}
    assert pub.published_dataset("chaos_mr") == "abd_mri" and pub.published_dataset("synapse_ct") == "abd_ct"
    assert pub.published_dataset("cmr_bssfp") == "card_mri"
    assert pub.our_setting("catnet", "2") == ("2all", True) and pub.our_setting("ponet", "2") == ("2", False)
    assert pub.match("dspnet", ["dspnet", "dspnet@x"]) == "dspnet"
    assert pub.match("panet", ["panet@a", "panet@b"]) is None
    written = P.write(P.paper_table(_fold_table(OURS), published, "chaos_mr", "1", CLASSES), tmp_path, "paper")
    assert [w.rsplit("/", 1)[1] for w in written] == ["paper.md", "paper.csv", "paper.tex"]
    assert pd.read_csv(tmp_path / "paper.csv", index_col="method").loc["ssl_alpnet", "mean_published"] == 78.84
