"""The synthetic abdominal CT phantom (``fsmis.data.phantom``): the demo dataset,
generated in-process, no network.

Config: ``dataset.n_cases`` cases ``phantom_000``, ``phantom_001``, ... drawn with
``dataset.phantom_seed``. ``dataset.cases`` / ``dataset.exclude`` do not apply: the
generator writes every case of the seed.
"""

from __future__ import annotations

from pathlib import Path

from fsmis.data.adapters import Facts
from fsmis.errors import InputError

FACTS = Facts(
    modality="CT",
    # the generator's own raw values (fsmis.data.phantom.PHANTOM_LABEL_MAP; a test
    # checks they agree: the generator imports numpy, this module may not)
    label_map={1: "liver", 2: "spleen", 3: "right_kidney", 4: "left_kidney"},
    classes=["left_kidney", "right_kidney", "spleen", "liver"],
    label_groups=[["left_kidney", "right_kidney"], ["liver", "spleen"]],
    source={"kind": "generated", "generator": "fsmis/data/phantom.py"},
)


def case_ids(dataset_cfg: dict) -> list[str]:
    if "n_cases" not in dataset_cfg:  # the schema's default fills it in the workflow
        raise ValueError("dataset phantom: dataset.n_cases is not set")
    return [f"phantom_{i:03d}" for i in range(int(dataset_cfg["n_cases"]))]


def generate(dataset_cfg: dict, out_dir, cases) -> list[str]:
    """Write the cases into ``out_dir`` (``{case}_image/_label.nii.gz``); the ids written."""
    from fsmis.data import phantom

    return phantom.write_dataset(out_dir, n_cases=len(cases), seed=dataset_cfg.get("phantom_seed", 0))


def _files(raw_dir, case: str) -> tuple[Path, Path]:
    return Path(raw_dir) / f"{case}_image.nii.gz", Path(raw_dir) / f"{case}_label.nii.gz"


def check_source(dataset_cfg: dict, root) -> None:
    missing = [p.name for c in case_ids(dataset_cfg) for p in _files(root, c) if not p.is_file()]
    if missing:
        raise InputError(root, f"{len(missing)} generated file(s) missing, e.g. {missing[:3]}: rerun the generation")


def pairs(dataset_cfg: dict, raw_dir, work_dir, cases) -> list[tuple[str, ...]]:
    # the generated files already are canonical-ready NIfTI pairs: nothing to convert
    return [(c, *map(str, _files(raw_dir, c))) for c in cases]
