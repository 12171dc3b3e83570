"""The papers' published Dice numbers, and which of our results each one stands beside.

The numbers follow the papers: ``published_results.csv`` in the ``fsmis`` package
(method, dataset, setting, class, dice, source, note), copied from the papers' tables
with their source, Dice in percent. The mapping of the papers' names to our ids is
ours:

* datasets: ``chaos_mr`` = Abd-MRI (``abd_mri``), ``synapse_ct`` = Abd-CT (``abd_ct``),
  ``cmr_bssfp`` = Card-MRI (``card_mri``); any other dataset (the phantom) has none;
* methods: the same id, else the single ``<id>@<who re-ran it>`` row (PANet's only
  medical numbers are re-runs by others), else none;
* settings: "1" = "1". The papers' "Setting 2" has two definitions (``docs/datasets.md``,
  'Setting 2: two definitions'): the SSL-ALPNet code drops training slices with *any* test
  organ (our ``2``), the ADNet code family only slices with *all* test organs (our
  ``2all``). :data:`SETTING2_AS` says which one each source used; a published Setting-2
  row of a method not listed there is shown under our ``2`` and marked unverified.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import pandas as pd

from fsmis.errors import InputError

PUBLISHED_COLUMNS = ["method", "dataset", "setting", "class", "dice", "source", "note"]
DATASET_NAMES = {"chaos_mr": "abd_mri", "synapse_ct": "abd_ct", "cmr_bssfp": "card_mri"}
DATASET_LABELS = {"abd_mri": "Abd-MRI", "abd_ct": "Abd-CT", "card_mri": "Card-MRI"}
# Which of our settings a published "Setting 2" row corresponds to (docs/datasets.md,
# 'Setting 2: two definitions'): SSL-ALPNet's code and DSPNet's (built on it, also for
# its re-runs of other methods) drop slices with any test organ; the ADNet family only
# those with all.
SETTING2_AS = {
    "ssl_alpnet": "2", "dspnet": "2", "ssl_alpnet@dspnet_rerun": "2", "panet@dspnet_rerun": "2",
    "qnet@dspnet_rerun": "2", "catnet@dspnet_rerun": "2",
    "adnet": "2all", "qnet": "2all", "catnet": "2all", "rpt": "2all", "pgrnet": "2all",
}


def load_published(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """The published numbers (the shipped CSV unless ``path`` is given); Dice in percent."""
    source = Path(path) if path is not None else resources.files("fsmis") / "published_results.csv"
    with source.open("r", encoding="utf-8") as handle:
        table = pd.read_csv(handle, dtype={"setting": str, "method": str, "dataset": str, "class": str})
    missing = [c for c in PUBLISHED_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(source, f"missing column(s) {', '.join(missing)}")
    table["note"] = table["note"].fillna("")
    table["dice"] = pd.to_numeric(table["dice"], errors="raise")
    return table[PUBLISHED_COLUMNS]


def published_dataset(dataset: str) -> str:
    """The CSV's dataset name of one of our dataset ids (ids the CSV uses pass through)."""
    return DATASET_NAMES.get(dataset, dataset)


def our_setting(method: str, published_setting: str) -> tuple[str, bool]:
    """Our setting id of a published row, and whether that mapping is verified."""
    if published_setting != "2":
        return published_setting, True
    return SETTING2_AS.get(method, "2"), method in SETTING2_AS


def rows_for(published: pd.DataFrame, dataset: str, setting: str) -> pd.DataFrame:
    """Published rows comparable with our ``dataset`` and ``setting``, with a
    ``verified`` column (False: the source's Setting-2 definition is not known)."""
    part = published[published["dataset"] == published_dataset(dataset)]
    if part.empty:
        return part.assign(verified=pd.Series(dtype=bool))
    mapped = [our_setting(m, s) for m, s in zip(part["method"], part["setting"])]
    part = part.assign(ours=[m[0] for m in mapped], verified=[m[1] for m in mapped])
    return part[part["ours"] == str(setting)].drop(columns="ours")


def match(method: str, available: Sequence[str]) -> str | None:
    """The published method id that stands for our ``method`` (see module docstring)."""
    if method in available:
        return method
    reruns = [m for m in dict.fromkeys(available) if m.split("@", 1)[0] == method and "@" in m]
    return reruns[0] if len(reruns) == 1 else None
