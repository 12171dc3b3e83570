"""AbdomenCT-1K, in either public form (config ``dataset.form``):

* ``benchmark`` (default): Zenodo 5903037, ``Subtask{1,2}.zip`` with
  ``TrainImage/train_NNNN_0000.nii.gz`` + ``TrainMask/train_NNNN.nii.gz``, 361 labelled
  cases each; ``dataset.subtask`` (1 or 2) picks one (the two share the MSD pancreas
  cases, so mixing them would put one patient in two folds).
  Case id = ``subtask<k>_<NNNN>`` (``train_0007`` of Subtask1 -> ``subtask1_0007``).
* ``full``: ``AbdomenCT-1K-ImagePart{1,2,3}.zip`` (``Case_NNNNN_0000.nii.gz``, 1062
  images) + ``Mask.7z`` (``Mask/Case_NNNNN.nii.gz``, 1000 masks).
  Case id = ``case_<NNNNN>`` (``Case_00042_0000.nii.gz`` -> ``case_00042``).

Images and masks pair by case number. Which 62 images of the full release have no
public mask is not known before unpacking, so in the full form ``case_ids`` are the
*requested* cases and :func:`inventory` (run by the workflow's ``inventory`` checkpoint
once the archives are unpacked) says which of them are usable: a maskless case is
listed with its reason and skipped, the rest of the workflow is built from the kept
ones. ``pairs`` itself still refuses a maskless case (with the ``dataset.exclude`` line
to paste), so a caller that bypasses the inventory never trains on a case without
labels. The benchmark form has a mask for every case and keeps a static case list.
"""

from __future__ import annotations

import re
from pathlib import Path

from fsmis.data.adapters import Facts, find_files, select_cases, unpack_dir
from fsmis.errors import InputError

BENCHMARK_RECORD = "5903037"
BENCHMARK_CASES = 361  # per subtask
FULL_CASES = 1062  # Case_00001 .. Case_01062
FULL_RECORDS = {
    "5903099": ["AbdomenCT-1K-ImagePart1.zip"],
    "5903846": ["AbdomenCT-1K-ImagePart2.zip"],
    "5903769": ["AbdomenCT-1K-ImagePart3.zip", "Mask.7z"],
}
FACTS = Facts(
    modality="CT",
    # labels 1-4 in both public forms; the kidneys are one label
    label_map={1: "liver", 2: "kidney", 3: "spleen", 4: "pancreas"},
    classes=["liver", "kidney", "spleen", "pancreas"],
    # no reference defines setting 2 here: ours, upper (liver, spleen) vs lower abdomen
    label_groups=[["kidney", "pancreas"], ["liver", "spleen"]],
    source={
        "kind": "zenodo",
        # `records` = the default form; config dataset.form picks one of `forms`, and
        # downloads() below the files of the config's form and subtask
        "records": {BENCHMARK_RECORD: ["Subtask1.zip", "Subtask2.zip"]},
        "default_form": "benchmark",
        "forms": {
            # FLARE21 = the fully-supervised benchmark: 361 labelled cases per subtask
            "benchmark": {"records": {BENCHMARK_RECORD: ["Subtask1.zip", "Subtask2.zip"]}},
            # the full release: 1062 images, 1000 public masks
            "full": {"records": FULL_RECORDS},
        },
        # third-party checksums (docs/datasets.md); the Zenodo API is authoritative
        "md5": {
            "AbdomenCT-1K-ImagePart1.zip": "946325d0209179d767bea914c93e9a54",
            "AbdomenCT-1K-ImagePart2.zip": "eb24ba869589d15fe1d89ccf7f13aaa4",
            "AbdomenCT-1K-ImagePart3.zip": "7f5a131e83f3bb38932e8fb62d040a3f",
            "Mask.7z": "dfca75d15912d5d7323585c53e1d75d9",
        },
    },
)
_PATTERNS = {  # form -> (image, mask) file-name patterns; group 1 = case number
    "benchmark": (re.compile(r"train_(\d+)_0000\.nii\.gz"), re.compile(r"train_(\d+)\.nii\.gz")),
    "full": (re.compile(r"Case_(\d+)_0000\.nii\.gz"), re.compile(r"Case_(\d+)\.nii\.gz")),
}


def _form(cfg: dict) -> str:
    form = cfg.get("form", "benchmark")
    if form not in _PATTERNS:
        raise ValueError(f"dataset.form must be 'benchmark' or 'full', got {form!r}")
    return form


def _subtask(cfg: dict) -> int:
    k = cfg.get("subtask", 1)
    if k not in (1, 2, "1", "2"):
        raise ValueError(f"dataset.subtask must be 1 or 2, got {k!r}")
    return int(k)


def _id_of(cfg: dict):
    if _form(cfg) == "full":
        return lambda n: f"case_{n:05d}"
    k = _subtask(cfg)
    return lambda n: f"subtask{k}_{n:04d}"


def _number(case: str) -> int:
    m = re.fullmatch(r"(?:case|subtask[12])_(\d+)", case)
    if not m:
        raise ValueError(f"not an AbdomenCT-1K case id: {case!r}")
    return int(m.group(1))


def source_tag(dataset_cfg: dict) -> str | None:
    """The full release is another source than the benchmark record: its own data folder."""
    return "full" if _form(dataset_cfg) == "full" else None


def case_ids(dataset_cfg: dict) -> list[str]:
    id_of = _id_of(dataset_cfg)
    n = FULL_CASES if _form(dataset_cfg) == "full" else BENCHMARK_CASES
    return select_cases([id_of(i) for i in range(1, n + 1)], dataset_cfg, id_of)


def downloads(dataset_cfg: dict) -> dict[str, list[str]]:
    if _form(dataset_cfg) == "full":
        return {r: list(f) for r, f in FULL_RECORDS.items()}
    return {BENCHMARK_RECORD: [f"Subtask{_subtask(dataset_cfg)}.zip"]}


def _index(cfg: dict, raw_dir) -> tuple[dict, dict, Path]:
    """``(images, masks, mask folder)``: ``{case number: path}`` of what unpacking produced."""
    raw_dir = Path(raw_dir)
    image_re, mask_re = _PATTERNS[_form(cfg)]
    if _form(cfg) == "full":
        images = {}
        for archive in FULL_RECORDS.values():
            for name in archive:
                if name.endswith(".zip"):
                    part = unpack_dir(raw_dir, name)
                    images.update(find_files(part, image_re, "image of case") if part.is_dir() else {})
        mask_dir = unpack_dir(raw_dir, "Mask.7z")
        masks = find_files(mask_dir, mask_re, "mask of case") if mask_dir.is_dir() else {}
        if not images or not mask_dir.is_dir():
            raise InputError(raw_dir, "expected the unpacked full release below it: AbdomenCT-1K-ImagePart{1,2,3}/"
                                      "...Case_NNNNN_0000.nii.gz and Mask/...Case_NNNNN.nii.gz")
        return images, masks, mask_dir
    name = f"Subtask{_subtask(cfg)}"
    where = unpack_dir(raw_dir, f"{name}.zip")
    found = {}
    for folder in ("TrainImage", "TrainMask"):
        hits = sorted(p for p in where.rglob(folder) if p.is_dir()) if where.is_dir() else []
        if len(hits) != 1:
            raise InputError(where, f"expected one {folder}/ folder from {name}.zip below it, found "
                                    f"{[str(h) for h in hits] or 'none'}")
        found[folder] = hits[0]
    images = find_files(found["TrainImage"], image_re, "image of case")
    masks = find_files(found["TrainMask"], mask_re, "mask of case")
    return images, masks, found["TrainMask"]


def _index_with_images(cfg: dict, raw_dir, cases) -> tuple[dict, dict, Path]:
    """``_index``, refusing a requested case without an image (incomplete archives)."""
    images, masks, mask_where = _index(cfg, raw_dir)
    no_image = [c for c in cases if _number(c) not in images]
    if no_image:
        raise InputError(raw_dir, f"{len(no_image)} requested case(s) have no image: {no_image[:10]}")
    return images, masks, mask_where


def cases_known_after_unpack(dataset_cfg: dict) -> bool:
    """True where the usable cases are only known once the archives are unpacked (the
    full release: 62 of its images have no public mask)."""
    return _form(dataset_cfg) == "full"


def inventory(dataset_cfg: dict, raw_dir, cases) -> dict[str, str | None]:
    """``{case: None if usable, else the reason it is skipped}`` for the requested
    ``cases``, in order. A requested case without an image is an error (the archives
    are incomplete), not a skip."""
    _, masks, mask_where = _index_with_images(dataset_cfg, raw_dir, cases)
    return {c: None if _number(c) in masks else f"no mask below {mask_where}" for c in cases}


def check_source(dataset_cfg: dict, root) -> None:
    """The unpacked folders exist and every requested case has its image (masks are
    checked by ``pairs``, which says what to do about maskless cases)."""
    images, _, _ = _index(dataset_cfg, root)
    missing = [c for c in case_ids(dataset_cfg) if _number(c) not in images]
    if missing:
        raise InputError(root, f"{len(missing)} requested case(s) have no image after unpacking: {missing[:10]}")


def pairs(dataset_cfg: dict, raw_dir, work_dir, cases) -> list[tuple[str, ...]]:
    images, masks, mask_where = _index_with_images(dataset_cfg, raw_dir, cases)
    maskless = [c for c in cases if _number(c) not in masks]
    if maskless:
        raise InputError(mask_where, (
            f"{len(maskless)} requested case(s) have no mask: {maskless}. "
            + ("The full release publishes masks for 1000 of its 1062 images. " if _form(dataset_cfg) == "full" else "")
            + f"Leave them out with\n  dataset:\n    exclude: [{', '.join(maskless)}]\n"
            "(or choose cases with dataset.cases)"))
    return [(c, str(images[_number(c)]), str(masks[_number(c)])) for c in cases]
