"""Registration-only datasets the user places by hand under ``dataset.root``:

* ``synapse_ct`` (Synapse / BTCV): ``img0001.nii.gz`` + ``label0001.nii.gz``; the 30
  labelled scans are 0001-0010 and 0021-0040. Case id = ``synapse_<NNNN>``. The labels
  hold 13 organs; the nine that FSMIS does not use are set to background in a copy
  written to ``work_dir`` (any other unexpected value is left for canonical to refuse).
* ``cmr_bssfp`` (MS-CMRSeg 2019 bSSFP): ``patient<N>_C0.nii.gz`` +
  ``patient<N>_C0_manual.nii.gz``, patients 1-35. Case id = ``cmr_<N>``.

Files are found by exact name anywhere below ``dataset.root`` (the release's folder
names differ between copies); the page and layout are in ``sources.DATASETS``.
Which dataset a call is about comes from ``dataset_cfg["name"]``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from fsmis.data import sources
from fsmis.data.adapters import ManualDataMissing, find_files, select_cases

log = logging.getLogger(__name__)

SPECS = {
    "synapse_ct": {
        "numbers": (*range(1, 11), *range(21, 41)),
        "id": "synapse_{:04d}",
        "image": (re.compile(r"img(\d{4})\.nii\.gz"), "img{:04d}.nii.gz"),
        "label": (re.compile(r"label(\d{4})\.nii\.gz"), "label{:04d}.nii.gz"),
        # gallbladder, esophagus, stomach, aorta, IVC, portal/splenic vein, pancreas, adrenals
        "background": (4, 5, 7, 8, 9, 10, 11, 12, 13),
    },
    "cmr_bssfp": {
        "numbers": tuple(range(1, 36)),
        "id": "cmr_{}",
        "image": (re.compile(r"patient(\d+)_C0\.nii\.gz"), "patient{}_C0.nii.gz"),
        "label": (re.compile(r"patient(\d+)_C0_manual\.nii\.gz"), "patient{}_C0_manual.nii.gz"),
        "background": (),
    },
}


def _spec(cfg: dict) -> tuple[str, dict]:
    name = cfg.get("name")
    if name not in SPECS:
        raise ValueError(f"manual adapter: unknown dataset {name!r}; known: {', '.join(SPECS)}")
    return name, SPECS[name]


def _number(spec: dict, case: str) -> int:
    prefix = spec["id"].split("{")[0]
    m = re.fullmatch(re.escape(prefix) + r"(\d+)", case)
    if not m:
        raise ValueError(f"not a case id of this dataset: {case!r} (expected {spec['id'].format(1)}, ...)")
    return int(m.group(1))


def case_ids(dataset_cfg: dict) -> list[str]:
    _, spec = _spec(dataset_cfg)
    return select_cases([spec["id"].format(n) for n in spec["numbers"]], dataset_cfg, spec["id"].format)


def _locate(cfg: dict, root, cases) -> dict[str, tuple[Path, Path]]:
    """``{case: (image, label)}``, or ManualDataMissing naming every missing file."""
    name, spec = _spec(cfg)
    source = sources.info(name)["source"]

    def missing(what, hint=""):
        raise ManualDataMissing(name, root, source["page"], source["layout"], what, hint)

    if root is None:
        missing(["dataset.root: set it to the folder holding the files"])
    root = Path(root)
    if not root.is_dir():
        missing([f"{root} (folder does not exist)"])
    images = find_files(root, spec["image"][0], "image")
    labels = find_files(root, spec["label"][0], "label")
    absent = []
    for case in cases:
        n = _number(spec, case)
        absent += [tpl.format(n) for found, (_, tpl) in ((images, spec["image"]), (labels, spec["label"]))
                   if n not in found]
    if absent:
        archives = sorted(p.name for p in root.iterdir() if p.suffix.lower() in (".zip", ".7z", ".tar", ".tgz"))
        missing(absent, f"Found archive(s) {archives} in dataset.root: unpack them there." if archives else "")
    return {c: (images[_number(spec, c)], labels[_number(spec, c)]) for c in cases}


def check_source(dataset_cfg: dict, root) -> None:
    """Fast (file names, and each NIfTI's gzip trailer against its header): the
    Snakefile calls it before anything runs, so a half-copied folder stops the run at
    once, naming the truncated files."""
    from fsmis.nifti_check import check_files

    found = _locate(dataset_cfg, root, case_ids(dataset_cfg))
    check_files([p for pair in found.values() for p in pair], thorough=False)


def pairs(dataset_cfg: dict, raw_dir, work_dir, cases) -> list[tuple[str, ...]]:
    _, spec = _spec(dataset_cfg)
    found = _locate(dataset_cfg, raw_dir, list(cases))
    out = []
    for case in cases:
        image, label = found[case]
        used = label
        if spec["background"]:
            used = zero_values(label, spec["background"], Path(work_dir) / f"{case}_label.nii.gz")
        # cases.tsv names the raw files, not the work copy that is deleted afterwards
        out.append((case, str(image), str(used), str(image), str(label)))
    return out


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
