"""Shared code of the registration-only datasets the user places by hand under
``dataset.root`` (``synapse_ct``, ``cmr_bssfp``): each of their adapter modules states
its :class:`Layout` and its ``FACTS`` (whose source gives the page, the layout and the
docs section named when files are missing) and hands ``case_ids``, ``check_source`` and ``pairs`` to the
functions here. Not a dataset itself, so not in the registry.

Files are found by exact name anywhere below ``dataset.root`` (the release's folder
names differ between copies). When files are missing, :class:`HandPlacedMissing` says in
one paragraph how many of the expected files are there, where the files come from, and
which sections of README.md and of docs/datasets.md (``FACTS.source["docs"]``) tell how
to place them.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from pathlib import Path

from fsmis.data.adapters import Facts, ManualDataMissing, find_files, select_cases

log = logging.getLogger(__name__)

#: the README section whose table says, per dataset, what the user does
README_SECTION = 'README.md, section "Running the paper experiments"'
SHOWN_MISSING = 4  # missing file names the message lists before "and N more"


class HandPlacedMissing(ManualDataMissing):
    """:class:`ManualDataMissing` (same attributes, and ``expected``: how many files the
    config needs) whose message is one short paragraph: the dataset, how many of the
    expected files are under dataset.root, the page to get them from, where the placement
    is described, and the first missing names. ``str()`` is that paragraph alone, without
    the ``<path>: `` prefix of an InputError: it names dataset.root itself."""

    def __init__(self, dataset: str, root, page: str, layout: str, missing: list[str], expected: int,
                 docs: str, hint: str = "", where: str = ""):
        super().__init__(dataset, root, page, layout, missing, hint)
        self.expected = expected
        if root is None:
            found = f"dataset.root is not set ({expected} files expected)"
        else:
            found = f"{expected - len(missing)} of {expected} expected files under {root}{where}"
        names = [] if root is None else list(missing)
        shown = ", ".join(names[:SHOWN_MISSING]) + (f" and {len(names) - SHOWN_MISSING} more"
                                                    if len(names) > SHOWN_MISSING else "")
        problem = (
            f"dataset {dataset!r}: {found}. It needs a registration and is placed by hand: get it from {page} "
            f"and see {README_SECTION}, and {docs}, for where the files go."
            + (f" Missing: {shown}." if shown else "") + (f" {hint}" if hint else "")
        )
        self.problem, self.args = problem, (problem,)


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
    """``{case: (image, label)}``, or HandPlacedMissing naming the missing files."""
    source = facts.source
    expected = [tpl.format(_number(layout, case)) for case in cases for _, tpl in (layout.image, layout.label)]

    def missing(absent, hint="", where=""):
        raise HandPlacedMissing(cfg["name"], root, source["page"], source["layout"], absent, len(expected),
                                source["docs"], hint, where)

    if root is None:
        missing(["dataset.root: set it to the folder holding the files"])
    root = Path(root)
    if not root.is_dir():
        missing(expected, where=" (the folder does not exist)")
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
