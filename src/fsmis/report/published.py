"""The papers' published Dice numbers, and which of our results each one stands beside.

The numbers follow the papers: ``published_results.csv`` in the ``fsmis`` package
(method, dataset, setting, class, dice, source, note, shown), copied from the papers'
tables, their code repositories' READMEs or issue threads, each row with its source,
Dice in percent. The mapping of the papers' names to our ids is ours:

* datasets: ``chaos_mr`` = Abd-MRI (``abd_mri``), ``synapse_ct`` = Abd-CT (``abd_ct``),
  ``cmr_bssfp`` = Card-MRI (``card_mri``); any other dataset (the phantom) has none.
  Card-MRI has one setting in the papers; rows whose source does not label it are
  filed under ``1``;
* methods: the same id, else the single ``<id>@<who>`` row (PANet's only medical
  numbers are re-runs by others), else none. ``<id>@<who>`` ids are numbers of method
  ``<id>`` that someone other than its authors produced or printed: a re-run
  (``panet@dspnet_rerun``, ``gmrd@issue1_repro``) or another paper's or README's
  comparison table, kept apart from the method's own numbers (``protosam@fob_table``,
  ``*@re_sam2_table``); they stay separate methods;
* settings: "1" = "1". The papers' "Setting 2" has two definitions (``docs/datasets.md``,
  'Setting 2: two definitions'): the SSL-ALPNet code drops training slices with *any* test
  organ (our ``2``), the ADNet code family only slices with *all* test organs (our
  ``2all``). :data:`SETTING2_AS` says which one each source used; a published Setting-2
  row of a method not listed there is shown under our ``2`` and marked unverified.

Transcriptions (ours): where two sources print different numbers for the same method,
dataset, setting and class (RPT's Abd-MRI numbers as printed in the PONet paper and in
the FoB paper), both rows are kept, and the ``shown`` column (1/0) says which one the
tables show; exactly one row per (method, dataset, setting, class) is shown. The rule
that sets it: the method's own paper or repository first; else the transcription that
another, independent source agrees with; else the one shipped first. For RPT neither
is its own: FoB's is shown, because RE-SAM2's README prints the same Setting-2 means
(79.04, 71.69), while no other source of the table prints the PONet ones.
:func:`rows_for` returns the shown rows, :func:`alternatives` the others for the notes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import pandas as pd

from fsmis.errors import InputError

PUBLISHED_COLUMNS = ["method", "dataset", "setting", "class", "dice", "source", "note"]
SHOWN = "shown"  # optional column: 1 = the transcription the tables show, 0 = an alternative one
KEY = ["method", "dataset", "setting", "class"]
DATASET_NAMES = {"chaos_mr": "abd_mri", "synapse_ct": "abd_ct", "cmr_bssfp": "card_mri"}
DATASET_LABELS = {"abd_mri": "Abd-MRI", "abd_ct": "Abd-CT", "card_mri": "Card-MRI"}
# Which of our settings a published "Setting 2" row corresponds to (docs/datasets.md,
# 'Setting 2: two definitions'): SSL-ALPNet's code and DSPNet's (built on it, also for
# its re-runs of other methods) drop slices with any test organ; the ADNet family only
# those with all.
SETTING2_AS = {
    "ssl_alpnet": "2", "dspnet": "2", "ssl_alpnet@dspnet_rerun": "2", "panet@dspnet_rerun": "2",
    "qnet@dspnet_rerun": "2", "catnet@dspnet_rerun": "2",
    # ProtoSAM, SSL-DINOv2 and DenseMP run on SSL-ALPNet's training and validation code
    "protosam": "2", "ssl_dinov2": "2", "densemp": "2",
    "adnet": "2all", "qnet": "2all", "catnet": "2all", "rpt": "2all", "pgrnet": "2all",
    # GMRD and FoB (SAM or SAM-Med2D prompted by a trained ResNet-101) copy the ADNet data loader and its AND exclusion
    "gmrd": "2all", "fob_sam": "2all", "fob_sammed2d": "2all",
    # RE-SAM2's README does not label the setting, but these rows equal GMRD's and RPT's own Setting-2 means
    "gmrd@re_sam2_table": "2all", "rpt@re_sam2_table": "2all",
    # not known, so unverified: am_sam (no code), protosam@fob_table (FoB's re-run, pipeline not stated),
    # re_sam2 and its other baselines (setting itself only inferred)
}


def _shown_mask(table: pd.DataFrame) -> pd.Series:
    """Which rows are the shown transcription: the ``shown`` column where there is one,
    else the first row of each (method, dataset, setting, class)."""
    if SHOWN in table.columns:
        return table[SHOWN].astype(bool)
    return ~table.duplicated(KEY, keep="first")


def load_published(path: str | os.PathLike | None = None, *, alternatives: bool = False) -> pd.DataFrame:
    """The published numbers (the shipped CSV unless ``path`` is given); Dice in percent.

    By default the shown transcription of each (method, dataset, setting, class) in the
    columns :data:`PUBLISHED_COLUMNS`; with ``alternatives`` every row and a boolean
    ``shown`` column (what :func:`alternatives` needs; :func:`rows_for` takes either).
    A CSV without ``shown`` shows every row; more or fewer than one shown row for a key
    raises ``InputError``."""
    source = Path(path) if path is not None else resources.files("fsmis") / "published_results.csv"
    with source.open("r", encoding="utf-8") as handle:
        table = pd.read_csv(handle, dtype={"setting": str, "method": str, "dataset": str, "class": str})
    missing = [c for c in PUBLISHED_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(source, f"missing column(s) {', '.join(missing)}")
    table["note"] = table["note"].fillna("")
    table["dice"] = pd.to_numeric(table["dice"], errors="raise")
    if SHOWN in table.columns:
        flags = pd.to_numeric(table[SHOWN], errors="coerce")
        if not flags.isin([0, 1]).all():
            raise InputError(source, f"column {SHOWN} must hold 0 or 1 in every row")
        table[SHOWN] = flags.astype(bool)
    else:
        table[SHOWN] = True
    counts = table.groupby(KEY, sort=False)[SHOWN].sum()
    wrong = counts[counts != 1]
    if not wrong.empty:
        listed = "; ".join("/".join(key) for key in wrong.index[:5])
        raise InputError(source, f"each method, dataset, setting and class needs one row with {SHOWN}=1: {listed}")
    if alternatives:
        return table[PUBLISHED_COLUMNS + [SHOWN]]
    return table.loc[table[SHOWN], PUBLISHED_COLUMNS].reset_index(drop=True)


def published_dataset(dataset: str) -> str:
    """The CSV's dataset name of one of our dataset ids (ids the CSV uses pass through)."""
    return DATASET_NAMES.get(dataset, dataset)


def our_setting(method: str, published_setting: str) -> tuple[str, bool]:
    """Our setting id of a published row, and whether that mapping is verified."""
    if published_setting != "2":
        return published_setting, True
    return SETTING2_AS.get(method, "2"), method in SETTING2_AS


def _comparable(published: pd.DataFrame, dataset: str, setting: str) -> pd.DataFrame:
    """Every row (any transcription) comparable with our ``dataset`` and ``setting``, with ``verified``."""
    part = published[published["dataset"] == published_dataset(dataset)]
    if part.empty:
        return part.assign(verified=pd.Series(dtype=bool))
    mapped = [our_setting(m, s) for m, s in zip(part["method"], part["setting"])]
    part = part.assign(ours=[m[0] for m in mapped], verified=[m[1] for m in mapped])
    return part[part["ours"] == str(setting)].drop(columns="ours")


def rows_for(published: pd.DataFrame, dataset: str, setting: str) -> pd.DataFrame:
    """Published rows comparable with our ``dataset`` and ``setting``, one per (method,
    class): the shown transcription. With a ``verified`` column (False: the source's
    Setting-2 definition is not known)."""
    part = _comparable(published, dataset, setting)
    return part[_shown_mask(part)] if not part.empty else part


def alternatives(published: pd.DataFrame, dataset: str, setting: str) -> pd.DataFrame:
    """The rows :func:`rows_for` leaves out: other transcriptions of a shown number
    (empty unless ``published`` was loaded with ``alternatives=True``)."""
    part = _comparable(published, dataset, setting)
    return part[~_shown_mask(part)] if not part.empty else part


def alternative_notes(published: pd.DataFrame, dataset: str, setting: str,
                      methods: Sequence[str] | None = None) -> list[str]:
    """One note per published method (of ``methods``, default all) with another
    transcription: which source is shown and what the other one prints (its mean, else
    the classes it has)."""
    shown, others = rows_for(published, dataset, setting), alternatives(published, dataset, setting)
    notes = []
    for method in dict.fromkeys(others["method"]):
        if methods is not None and method not in methods:
            continue
        alts = [_summary(rows) for _, rows in others[others["method"] == method].groupby("source", sort=False)]
        notes.append(f"{method}: shown as transcribed by {_summary(shown[shown['method'] == method])}; "
                     f"other transcription: {'; '.join(alts)}.")
    return notes


def _summary(rows: pd.DataFrame) -> str:
    """``source (mean 82.44)`` of one transcription; its classes where it has no mean."""
    means = rows.loc[rows["class"] == "mean", "dice"]
    values = f"mean {means.iloc[0]:.2f}" if len(means) else ", ".join(
        f"{c} {v:.2f}" for c, v in zip(rows["class"], rows["dice"]))
    return f"{rows['source'].iloc[0]} ({values})"


def match(method: str, available: Sequence[str]) -> str | None:
    """The published method id that stands for our ``method`` (see module docstring)."""
    if method in available:
        return method
    reruns = [m for m in dict.fromkeys(available) if m.split("@", 1)[0] == method and "@" in m]
    return reruns[0] if len(reruns) == 1 else None
