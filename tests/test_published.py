"""fsmis.report.published: the shipped table of published numbers, its transcriptions and the Setting-2 mapping."""

from __future__ import annotations

import pandas as pd
import pytest

from fsmis.errors import InputError
from fsmis.report import published as pub

FOB = "primebo1/FoB_SAM README.md Table 1"
# the rows added from 2026 sources: per method id, rows in the shipped CSV
ADDED = {"gmrd": 20, "protosam@fob_table": 20, "am_sam": 20, "fob_sammed2d": 20, "fob_sam": 20,
         "gmrd@issue1_repro": 5, "fob_sam@issue6_repro": 5, "densemp": 4, "adnet@re_sam2_table": 3,
         "gmrd@re_sam2_table": 3, "rpt@re_sam2_table": 3, "sam2_no_finetune@re_sam2_table": 3,
         "sam2_finetune@re_sam2_table": 3, "re_sam2": 3}


@pytest.fixture(scope="module")
def every_row() -> pd.DataFrame:
    return pub.load_published(alternatives=True)


def _value(table, method, dataset, setting, name="mean", source=None) -> float:
    rows = table[(table["method"] == method) & (table["dataset"] == dataset) & (table["setting"] == setting)
                 & (table["class"] == name)]
    if source is not None:
        rows = rows[rows["source"].str.contains(source, regex=False)]
    return rows["dice"].item()


def test_shipped_csv_holds_the_2026_additions(every_row):
    # 321 rows before, 152 added: 120 from FoB's table (RPT's 20 among them), 18 from RE-SAM2's README,
    # 4 from DenseMP's, 10 from two issue threads
    assert len(every_row) == 321 + 152
    counts = every_row["method"].value_counts()
    assert {m: counts[m] for m in ADDED} == ADDED
    assert counts["rpt"] == 30  # 10 transcribed by PONet, 20 by FoB
    sources = every_row["source"]
    assert sources.str.contains(FOB, regex=False).sum() == 120
    assert sources.str.startswith("zzzzz37/RE-SAM2").sum() == 18
    assert sources.str.startswith("zhaoxinf/DenseMP_release").sum() == 4
    assert sources.str.contains("/issues/", regex=False).sum() == 10
    assert set(every_row["dataset"]) == set(pub.DATASET_NAMES.values())


def test_spot_values_of_the_additions(every_row):
    assert _value(every_row, "gmrd", "abd_mri", "1") == pytest.approx(82.90)
    assert _value(every_row, "gmrd", "abd_ct", "2", "liver") == pytest.approx(80.39)
    assert _value(every_row, "fob_sam", "abd_ct", "1") == pytest.approx(86.21)
    assert _value(every_row, "fob_sam@issue6_repro", "abd_ct", "1") == pytest.approx(77.70)
    assert _value(every_row, "gmrd@issue1_repro", "abd_mri", "1", "right_kidney") == pytest.approx(90.51)
    assert _value(every_row, "am_sam", "abd_ct", "2", "liver") == pytest.approx(85.40)
    assert _value(every_row, "protosam@fob_table", "abd_mri", "2") == pytest.approx(77.83)
    assert _value(every_row, "densemp", "abd_mri", "2") == pytest.approx(76.86)
    assert _value(every_row, "gmrd@re_sam2_table", "card_mri", "1") == pytest.approx(79.11)
    assert _value(every_row, "re_sam2", "abd_ct", "2") == pytest.approx(86.12)
    # FoB's printed means are the averages of its organ values
    fob = every_row[every_row["source"].str.contains(FOB, regex=False)]
    organs = fob[fob["class"] != "mean"].groupby(["method", "dataset", "setting"])["dice"].mean()
    printed = fob[fob["class"] == "mean"].set_index(["method", "dataset", "setting"])["dice"]
    assert (organs - printed.reindex(organs.index)).abs().max() < 0.015


def test_one_shown_transcription_per_number(every_row):
    assert every_row[pub.SHOWN].dtype == bool
    assert (every_row.groupby(pub.KEY)[pub.SHOWN].sum() == 1).all()
    # RPT: FoB's transcription shown, PONet's kept as the alternative
    hidden = every_row[~every_row[pub.SHOWN]]
    assert set(hidden["method"]) == {"rpt"} and len(hidden) == 10
    assert hidden["source"].str.contains("via PONet table").all()
    assert _value(every_row, "rpt", "abd_mri", "1", source="via PONet") == pytest.approx(82.38)
    shown = pub.load_published()
    assert list(shown.columns) == pub.PUBLISHED_COLUMNS and len(shown) == 321 + 152 - 10
    assert _value(shown, "rpt", "abd_mri", "1") == pytest.approx(82.44)
    for dataset in ("chaos_mr", "synapse_ct", "cmr_bssfp"):
        for setting in ("1", "2", "2all"):
            rows = pub.rows_for(every_row, dataset, setting)
            assert not rows.duplicated(["method", "class"]).any(), (dataset, setting)
    rpt = pub.rows_for(every_row, "chaos_mr", "2all")
    assert _value(rpt, "rpt", "abd_mri", "2") == pytest.approx(79.04)


def test_alternatives_and_their_notes(every_row):
    alternatives = pub.alternatives(every_row, "chaos_mr", "1")
    assert list(alternatives["method"].unique()) == ["rpt"]
    assert alternatives.loc[alternatives["class"] == "mean", "dice"].item() == pytest.approx(82.38)
    notes = pub.alternative_notes(every_row, "chaos_mr", "2all")
    assert len(notes) == 1 and notes[0].startswith(f"rpt: shown as transcribed by {FOB}")
    assert "(mean 79.04); other transcription: Zhu et al. RPT MICCAI 2023 (via PONet table; verify) (mean 79.53)." \
        in notes[0]
    assert pub.alternative_notes(every_row, "chaos_mr", "2all", methods=["gmrd"]) == []
    # Abd-CT has one transcription of RPT; the default load has no alternatives at all
    assert pub.alternatives(every_row, "synapse_ct", "1").empty
    assert pub.alternatives(pub.load_published(), "chaos_mr", "1").empty


def test_setting_two_of_the_new_sources():
    assert pub.our_setting("gmrd", "2") == ("2all", True)
    assert pub.our_setting("fob_sam", "2") == ("2all", True) and pub.our_setting("fob_sammed2d", "2") == ("2all", True)
    assert pub.our_setting("gmrd@re_sam2_table", "2") == ("2all", True)
    assert pub.our_setting("protosam", "2") == ("2", True) and pub.our_setting("densemp", "2") == ("2", True)
    for unknown in ("am_sam", "protosam@fob_table", "re_sam2", "adnet@re_sam2_table"):
        assert pub.our_setting(unknown, "2") == ("2", False)
    assert pub.our_setting("gmrd", "1") == ("1", True)


def test_the_shown_column_is_checked(tmp_path):
    header = ",".join(pub.PUBLISHED_COLUMNS)
    rows = ["x,abd_mri,1,mean,70.0,paper A,", "x,abd_mri,1,mean,71.0,paper B,"]
    plain = tmp_path / "plain.csv"
    plain.write_text("\n".join([header, rows[0]]) + "\n", encoding="utf-8")
    assert pub.load_published(plain, alternatives=True)[pub.SHOWN].tolist() == [True]
    both = tmp_path / "both.csv"
    both.write_text("\n".join([header + ",shown", rows[0] + ",1", rows[1] + ",1"]) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="one row with shown=1: x/abd_mri/1/mean"):
        pub.load_published(both)
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([header + ",shown", rows[0] + ",yes"]) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="0 or 1"):
        pub.load_published(bad)
    # a frame without the column (built in code) shows the first row of a repeated number
    frame = pd.DataFrame([r.split(",") for r in rows], columns=pub.PUBLISHED_COLUMNS).astype({"dice": float})
    assert pub.rows_for(frame, "chaos_mr", "1")["dice"].tolist() == [70.0]
    assert pub.alternatives(frame, "chaos_mr", "1")["dice"].tolist() == [71.0]
