"""Shared code of the registration-only datasets the user places by hand under
``dataset.root`` (``synapse_ct``, ``cmr_bssfp``): each of their adapter modules states
its :class:`Layout` and its ``FACTS`` (whose source gives the page and layout shown when
files are missing) and hands ``case_ids``, ``check_source`` and ``pairs`` to the
functions here. Not a dataset itself, so not in the registry.

Files are found by exact name anywhere below ``dataset.root`` (the release's folder
names differ between copies).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from pathlib import Path

from fsmis.data.adapters import Facts, ManualDataMissing, find_files, select_cases

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a hand-placed release names its labelled scans."""

    numbers: tuple[int, ...]  # case numbers of the labelled scans
    id: str  # case id template, e.g. "synapse_{:04d}"
    image: tuple[re.Pattern, str]  # (file-name pattern, group 1 = case number; file-name template)
    label: tuple[re.Pattern, str]
    background: tuple[int, ...] = ()  # raw label values set to 0 in a work copy (organs FSMIS does not use)


def _number(layout: Layout, case: str) -> int:
    prefix = layout.id.split("{")[0]
    m = re.fullmatch(re.escape(prefix) + r"(\d+)", case)
    if not m:
        raise ValueError(f"not a case id of this dataset: {case!r} (expected {layout.id.format(1)}, ...)")
    return int(m.group(1))


def case_ids(layout: Layout, dataset_cfg: dict) -> list[str]:
    return select_cases([layout.id.format(n) for n in layout.numbers], dataset_cfg, layout.id.format)


def _locate(layout: Layout, facts: Facts, cfg: dict, root, cases) -> dict[str, tuple[Path, Path]]:
    """``{case: (image, label)}``, or ManualDataMissing naming every missing file."""
    source = facts.source

    def missing(what, hint=""):
        raise ManualDataMissing(cfg["name"], root, source["page"], source["layout"], what, hint)

    if root is None:
        missing(["dataset.root: set it to the folder holding the files"])
    root = Path(root)
    if not root.is_dir():
        missing([f"{root} (folder does not exist)"])
    images = find_files(root, layout.image[0], "image")
    labels = find_files(root, layout.label[0], "label")
    absent = []
    for case in cases:
        n = _number(layout, case)
        absent += [tpl.format(n) for found, (_, tpl) in ((images, layout.image), (labels, layout.label))
                   if n not in found]
    if absent:
        archives = sorted(p.name for p in root.iterdir() if p.suffix.lower() in (".zip", ".7z", ".tar", ".tgz"))
        missing(absent, f"Found archive(s) {archives} in dataset.root: unpack them there." if archives else "")
    return {c: (images[_number(layout, c)], labels[_number(layout, c)]) for c in cases}


def check_source(layout: Layout, facts: Facts, dataset_cfg: dict, root) -> None:
    """Fast (file names, and each NIfTI's gzip trailer against its header): the
    Snakefile calls it before anything runs, so a half-copied folder stops the run at
    once, naming the truncated files."""
    from fsmis.nifti_check import check_files

    found = _locate(layout, facts, dataset_cfg, root, case_ids(layout, dataset_cfg))
    check_files([p for pair in found.values() for p in pair], thorough=False)


def pairs(layout: Layout, facts: Facts, dataset_cfg: dict, raw_dir, work_dir, cases) -> list[tuple[str, ...]]:
    found = _locate(layout, facts, dataset_cfg, raw_dir, list(cases))
    out = []
    for case in cases:
        image, label = found[case]
        used = label
        if layout.background:
            used = zero_values(label, layout.background, Path(work_dir) / f"{case}_label.nii.gz")
        # cases.tsv names the raw files, not the work copy that is deleted afterwards
        out.append((case, str(image), str(used), str(image), str(label)))
    return out


def adapter_functions(layout: Layout, facts: Facts):
    """``(case_ids, check_source, pairs)`` of a hand-placed dataset with this layout, in
    the adapter interface's signatures: a dataset module binds them in one line."""
    return (functools.partial(case_ids, layout), functools.partial(check_source, layout, facts),
            functools.partial(pairs, layout, facts))


def zero_values(label_path, values, out_path) -> Path:
    """Write ``label_path`` with ``values`` set to 0 (geometry kept) to ``out_path``."""
    import numpy as np
    import SimpleITK as sitk

    from fsmis.io import read_image, write_image

    label = read_image(label_path)
    arr = sitk.GetArrayFromImage(label)
    arr[np.isin(arr, list(values))] = 0
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(label)
    write_image(out, out_path)
    return Path(out_path)
