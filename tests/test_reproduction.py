"""fsmis.report.reproduction: published numbers beside ours per method, the difference and both sides' keys."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from fsmis.report import published as pub
from fsmis.report import reproduction as R

CLASSES = ["left_kidney", "liver"]
SD = math.sqrt(18.0)  # sample std of two folds 6 points apart


def _long(with_seed: bool = True) -> pd.DataFrame:
    """Our results: (method, fold, seed) -> Dice of each class, fractions."""
    runs = {
        ("ssl_alpnet", 0, 0): (0.80, 0.70), ("ssl_alpnet", 0, 1): (0.84, 0.74),
        ("ssl_alpnet", 1, 0): (0.86, 0.76), ("ssl_alpnet", 1, 1): (0.90, 0.80),
        ("panet", 0, 0): (0.30, 0.50), ("panet", 1, 0): (0.40, 0.50),
        ("rpt", 0, 0): (0.80, 0.80), ("rpt", 1, 0): (0.70, 0.70),
        ("untrained", 0, 0): (0.10, 0.10), ("untrained", 1, 0): (0.10, 0.10),
    }
    rows = []
    for (method, fold, seed), values in runs.items():
        for name, value in zip(CLASSES, values):
            rows.append({"method": method, "setting": "1", "protocol": "oracle", "fold": fold, "seed": seed,
                         "dataset": "chaos_mr", "class": name, "dice": value, "n_cases": 4,
                         "support_missing": False, "source": "x"})
    # rows of another setting, protocol and dataset: left out
    for setting, protocol, dataset in (("2", "oracle", "chaos_mr"), ("1", "full", "chaos_mr"), ("1", "oracle", "b")):
        rows.append({**rows[0], "setting": setting, "protocol": protocol, "dataset": dataset, "dice": 0.0})
    frame = pd.DataFrame(rows)
    return frame if with_seed else frame.drop(columns="seed")


def _published() -> pd.DataFrame:
    rows = []

    def add(method, setting, values, source, note="", shown=True):
        for name, value in zip(CLASSES + ["mean"], values):
            rows.append((method, "abd_mri", setting, name, value, source, note, shown))

    add("ssl_alpnet", "1", (81.92, 76.10, 78.84), "Ouyang 2020")
    add("panet@dspnet_rerun", "1", (34.96, 47.37, 35.11), "Tang DSPNet")
    add("rpt", "1", (81.83, 82.59, 82.38), "PONet", shown=False)
    add("rpt", "1", (80.72, 82.86, 82.44), "FoB", note="as printed by FoB")
    add("catnet", "1", (74.01, 78.98, 75.18), "Lin CAT-Net")
    add("crapnet", "2", (74.66, 73.82, 75.52), "Ding CRAPNet")
    return pd.DataFrame(rows, columns=pub.PUBLISHED_COLUMNS + [pub.SHOWN])


def _table(protocol_of_ours: str = "oracle", **options) -> R.ReproductionTable:
    key = R.our_protocol_key("1", protocol_of_ours, seeds=2)
    return R.reproduction_table(options.pop("long_df", _long()), options.pop("published", _published()), "chaos_mr",
                                "1", "oracle", CLASSES, key, ["ssl_alpnet", "panet", "rpt", "untrained"])


def test_ours_published_and_difference_by_hand():
    table = _table()
    d = table.data
    # rows: ours with a published number, ours without, then published only
    assert list(d.index) == ["ssl_alpnet", "panet", "rpt", "untrained", "catnet"]
    assert list(d["kind"]) == ["both", "both", "both", "ours", "published"]
    assert table.columns == CLASSES + ["mean"]
    # ssl_alpnet left kidney: fold 0 seeds (80, 84) -> 82, fold 1 (86, 90) -> 88: 85 ± sqrt(18); published 81.92
    assert d.loc["ssl_alpnet", "left_kidney_ours"] == pytest.approx(85.0)
    assert d.loc["ssl_alpnet", "left_kidney_ours_std"] == pytest.approx(SD)
    assert d.loc["ssl_alpnet", "left_kidney_diff"] == pytest.approx(85.0 - 81.92)
    assert d.loc["ssl_alpnet", "liver_diff"] == pytest.approx(75.0 - 76.10)
    # mean column: per fold over classes (77, 83) then over folds; the published mean as printed
    assert d.loc["ssl_alpnet", "mean_ours"] == pytest.approx(80.0)
    assert d.loc["ssl_alpnet", "mean_ours_std"] == pytest.approx(SD)
    assert d.loc["ssl_alpnet", "mean_diff"] == pytest.approx(80.0 - 78.84)
    assert (d.loc["ssl_alpnet", "n_folds"], d.loc["ssl_alpnet", "seeds"]) == (2, "2")
    # PANet stands beside DSPNet's re-run: mean of folds (40, 45)
    assert d.loc["panet", "published_as"] == "panet@dspnet_rerun"
    assert d.loc["panet", "mean_ours"] == pytest.approx(42.5) and d.loc["panet", "mean_diff"] == pytest.approx(7.39)
    assert d.loc["panet", "seeds"] == "1"
    # RPT: the shown transcription (FoB), not PONet's
    assert d.loc["rpt", "mean_published"] == pytest.approx(82.44)
    assert d.loc["rpt", "mean_diff"] == pytest.approx(75.0 - 82.44)
    assert d.loc["rpt", "left_kidney_ours_std"] == pytest.approx(math.sqrt(50.0))
    # no invented numbers on either side
    assert math.isnan(d.loc["untrained", "mean_published"]) and math.isnan(d.loc["untrained", "mean_diff"])
    assert d.loc["untrained", "mean_ours"] == pytest.approx(10.0)
    assert math.isnan(d.loc["catnet", "mean_ours"]) and d.loc["catnet", "mean_published"] == pytest.approx(75.18)
    assert d.loc["catnet", "n_folds"] == 0


def test_a_frame_without_seeds_is_one_seed():
    with_seed, without = _table().data, _table(long_df=_long(with_seed=False)).data
    # ssl_alpnet's two seeds become four rows of one seed: the folds' means stay
    assert without.loc["ssl_alpnet", "mean_ours"] == pytest.approx(80.0)
    assert without.loc["ssl_alpnet", "seeds"] == "1"
    pd.testing.assert_series_equal(with_seed.loc["rpt"], without.loc["rpt"])


def test_keys_of_both_sides():
    table = _table()
    d = table.data
    assert table.keys["ours"] == {"folds": R.FOLDS_PARTITION, "setting": "1", "protocol": "oracle",
                                  "snapshot": "final step", "supports": "1", "seeds": "2"}
    ssl, rpt, catnet = (table.keys[d.loc[m, "key"]] for m in ("ssl_alpnet", "rpt", "catnet"))
    assert ssl["folds"] == R.FOLDS_PARTITION and ssl["protocol"] == "oracle" and ssl["snapshot"].startswith("unknown")
    assert rpt["folds"] == R.FOLDS_ADNET and rpt["setting"] == "1" and rpt is catnet  # one lineage, one key
    assert d.loc["panet", "key"] == d.loc["ssl_alpnet", "key"]  # DSPNet re-ran PANet in SSL-ALPNet's code
    assert d.loc["ssl_alpnet", "differs"] == "?snapshot"
    assert d.loc["rpt", "differs"] == "folds, ?snapshot"
    assert d.loc["untrained", "key"] == "" and d.loc["untrained", "differs"] == ""
    # fields the caller leaves out: our_protocol_key's defaults, the seeds found in the results
    partial = R.reproduction_table(_long(), _published(), "chaos_mr", "1", "oracle", CLASSES, {"snapshot": "step 500"})
    assert partial.keys["ours"] == {**table.keys["ours"], "snapshot": "step 500", "seeds": "1/2"}
    # ours under the full protocol: every published key differs in it
    full = _table("full").data
    assert full.loc["ssl_alpnet", "differs"] == "protocol, ?snapshot"
    # a method whose code is not known
    assert R.published_key("am_sam", "1")["folds"] == R.UNKNOWN
    assert R.differences(R.published_key("am_sam", "1"), table.keys["ours"]) == "?folds, ?protocol, ?snapshot"
    assert R.published_key("gmrd@issue1_repro", "1")["snapshot"] == "the 36k-step checkpoint in every fold"
    assert R.published_key("crapnet", "2", verified=False)["setting"] == R.UNVERIFIED_SETTING


def test_notes_name_the_shown_transcription_and_the_spread():
    table = _table()
    assert table.notes[0].startswith("Published numbers are single runs as their sources report them")
    assert "rpt: shown as transcribed by FoB (mean 82.44); other transcription: PONet (mean 82.38)." in table.notes
    assert "panet: the published numbers are those of panet@dspnet_rerun." in table.notes
    assert "rpt: as printed by FoB." in table.notes
    assert table.sources == ["Ouyang 2020", "Tang DSPNet", "FoB", "Lin CAT-Net"]
    # without alternatives in the frame: no transcription note, the same numbers
    plain = _table(published=_published().query("shown").drop(columns=pub.SHOWN))
    assert not any("other transcription" in n for n in plain.notes)
    assert plain.data.loc["rpt", "mean_published"] == pytest.approx(82.44)


def test_unverified_setting_two_is_marked():
    key = R.our_protocol_key("2", "oracle")
    table = R.reproduction_table(_long().assign(setting="2"), _published(), "chaos_mr", "2", "oracle", CLASSES, key)
    assert list(table.data.index) == ["panet", "rpt", "ssl_alpnet", "untrained", "crapnet"]
    assert table.unverified == {"crapnet"} and table.data.loc["crapnet", "differs"] == "?folds, ?setting, ?protocol, " \
        "?snapshot"
    assert any(n.startswith("‡") and "crapnet" in n for n in table.notes)
    assert "| crapnet [1]‡ |" in R.to_markdown(table)


def test_no_published_numbers_still_lists_our_methods(tmp_path):
    long_df = _long().query("setting == '1' and protocol == 'oracle' and dataset == 'chaos_mr'").assign(
        dataset="phantom")
    key = R.our_protocol_key("1", "oracle")
    table = R.reproduction_table(long_df, pub.load_published(alternatives=True), "phantom", "1", "oracle", CLASSES,
                                 key)
    assert not table.has_published and list(table.data["kind"]) == ["ours"] * 4
    assert table.notes == ["No published numbers for dataset phantom: a synthetic dataset of this project that no "
                           "paper reports; our methods are listed with their keys."]
    md = R.to_markdown(table)
    assert "| method | left kidney | liver | Mean | folds×seeds | keys |" in md
    assert "| ssl_alpnet | 85.00 ± 4.24 | 75.00 ± 4.24 | 80.00 ± 4.24 | 2×2 | ours |" in md
    assert "pub." not in md and f"| ours | {R.FOLDS_PARTITION} | 1 | oracle | final step | 1 | 1 |" in md
    written = R.write(table, tmp_path, "reproduction_phantom")
    assert [w.rsplit("/", 1)[1] for w in written] == ["reproduction_phantom.md", "reproduction_phantom.csv",
                                                      "reproduction_phantom.tex"]


def test_files_written(tmp_path):
    table = _table()
    written = R.write(table, tmp_path, "reproduction_setting1_oracle")
    assert [w.rsplit("/", 1)[1] for w in written] == ["reproduction_setting1_oracle.md",
                                                      "reproduction_setting1_oracle.csv",
                                                      "reproduction_setting1_oracle.tex"]
    md = (tmp_path / "reproduction_setting1_oracle.md").read_text(encoding="utf-8")
    assert "| ssl_alpnet [1] | 85.00 ± 4.24 | 81.92 | +3.08 | 75.00 ± 4.24 | 76.10 | −1.10 | 80.00 ± 4.24 | 78.84 " \
           "| +1.16 | 2×2 | ours vs A | ?snapshot |" in md
    assert "| catnet [4] | – | 74.01 | – |" in md and "Protocol keys:" in md
    csv = pd.read_csv(tmp_path / "reproduction_setting1_oracle.csv", index_col="method", keep_default_na=False)
    assert float(csv.loc["rpt", "mean_diff"]) == pytest.approx(-7.44)
    assert csv.loc["rpt", "source"] == "FoB" and csv.loc["rpt", "pub_folds"] == R.FOLDS_ADNET
    assert csv.loc["rpt", "ours_folds"] == R.FOLDS_PARTITION and csv.loc["catnet", "ours_folds"] == ""
    tex = (tmp_path / "reproduction_setting1_oracle.tex").read_text(encoding="utf-8")
    lines = tex.splitlines()
    assert r"\toprule" in lines and r"\bottomrule" in lines and r"\label{tab:reproduction-setting1-oracle}" in lines
    assert any(line.startswith(r"ssl\_alpnet [1] & 85.00 $\pm$ 4.24 & 81.92 & +3.08 &") for line in lines)
    assert r"2$\times$2 & ours vs A & ?snapshot \\" in tex and "≠" not in tex and "×" not in tex
