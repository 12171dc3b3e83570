"""Any nnU-Net (v1/v2) or MSD-style folder at ``dataset.root``::

    imagesTr/<case>_0000.nii.gz  (nnU-Net)  or  imagesTr/<case>.nii.gz  (MSD)
    labelsTr/<case>.nii.gz
    dataset.json                 (labels, modality / channel_names, optional training list)

Cases: ``dataset.json``'s ``training`` list when present, else the files of
``labelsTr/``. Case id = the label file's stem with every character outside
``[A-Za-z0-9_]`` replaced by ``_`` (``liver-3.nii.gz`` -> ``liver_3``); ids that
collide after that are an error.

Config (``dataset.``): ``label_map`` (required) maps raw values or ``dataset.json``
label names to canonical names, several may map to one (``{liver: liver, cancer:
liver}``); ``ignore_labels`` (values or names) are set to background in a copy in
``work_dir``; ``modality``: "CT"/"MR" for every case, or ``{case: CT|MR}`` for a folder
that mixes them (default from ``dataset.json``: a ``"modality"`` key in a case's
training entry, else the first channel name; see :func:`modality_claims`); ``classes`` and
``label_groups`` (default: every mapped class, one group).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from fsmis.data.adapters import Facts, select_cases
from fsmis.errors import InputError

# every fact but the source comes from the config: modality(), label_map(), classes(),
# label_groups() below
FACTS = Facts(modality=None, label_map=None, classes=None, label_groups=None, source={"kind": "local"})

_MR_NAMES = {"MR", "MRI", "T1", "T2", "T1W", "T2W", "T1GD", "T1CE", "FLAIR", "ADC", "DWI", "BSSFP", "CINE"}


def _root(cfg: dict) -> Path:
    if not cfg.get("root"):
        raise ValueError("dataset nifti_folder: set dataset.root to the folder holding imagesTr/, labelsTr/, "
                         "dataset.json")
    return Path(cfg["root"])


def _meta(root: Path) -> dict:
    path = root / "dataset.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(path, f"invalid JSON: {err}") from None


def _ending(meta: dict) -> str:
    return meta.get("file_ending", ".nii.gz")


def _stems(root: Path) -> list[str]:
    """Label file stems, from dataset.json's training list or labelsTr/."""
    meta = _meta(root)
    ending = _ending(meta)
    if meta.get("training"):
        names = [Path(e["label"]).name for e in meta["training"]]
    else:
        labels = root / "labelsTr"
        if not labels.is_dir():
            raise InputError(labels, "folder does not exist (and dataset.json has no training list)")
        names = [p.name for p in labels.iterdir() if not p.name.startswith(".")]  # skip macOS ._ files
    stems = sorted(n[: -len(ending)] for n in names if n.endswith(ending))
    if not stems:
        raise InputError(root, f"no training cases (*{ending} in labelsTr/ or dataset.json 'training')")
    return stems


def _case_id(stem: str) -> str:
    """A label file's stem as a case id: every character outside [A-Za-z0-9_] becomes _."""
    return re.sub(r"[^A-Za-z0-9_]", "_", stem)


def _ids(root: Path) -> dict[str, str]:
    """case id -> label stem."""
    out: dict[str, str] = {}
    for stem in _stems(root):
        case = _case_id(stem)
        if case in out:
            raise InputError(root, f"file names {out[case]!r} and {stem!r} give the same case id {case!r}")
        out[case] = stem
    return out


def case_ids(dataset_cfg: dict) -> list[str]:
    # natural order (case_2 before case_10), as the folds are cut
    ids = sorted(_ids(_root(dataset_cfg)), key=lambda c: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", c)])
    return select_cases(ids, dataset_cfg)


def _raw_values(meta: dict) -> dict[str, int]:
    """dataset.json label name -> raw value (v1: {"1": "liver"}, v2: {"liver": 1})."""
    out = {}
    for k, v in (meta.get("labels") or {}).items():
        if isinstance(v, list):
            raise InputError("dataset.json", f"region-based label {k!r} is not supported")
        if str(k).isdigit():
            out[str(v)] = int(k)
        else:
            out[str(k)] = int(v)
    return out


def _value(key, names: dict[str, int], what: str) -> int:
    if isinstance(key, int) or str(key).isdigit():
        return int(key)
    if str(key) not in names:
        raise ValueError(f"dataset.{what}: {key!r} is neither a number nor a label of dataset.json "
                         f"(labels: {sorted(names)})")
    return names[str(key)]


def label_map(dataset_cfg: dict) -> dict[int, str]:
    given = dataset_cfg.get("label_map")
    if not given:
        raise ValueError("dataset nifti_folder: dataset.label_map is required (raw value or dataset.json label "
                         "name -> canonical class name, e.g. {1: liver, spleen: spleen})")
    names = _raw_values(_meta(_root(dataset_cfg)))
    out: dict[int, str] = {}
    for key, canonical in given.items():
        value = _value(key, names, "label_map")
        if value in out and out[value] != canonical:
            raise ValueError(f"dataset.label_map maps raw value {value} twice ({out[value]}, {canonical})")
        out[value] = canonical
    return out


def _kind(channel) -> str | None:
    """CT or MR from a dataset.json channel/modality name (None when it says neither)."""
    name = str(channel).upper().replace("-", "")
    return "CT" if name == "CT" else "MR" if name in _MR_NAMES else None


def _checked(value, where: str) -> str:
    if value not in ("CT", "MR"):
        raise ValueError(f"{where} must be CT or MR, got {value!r}")
    return value


def modality_claims(dataset_cfg: dict, cases) -> dict[str, tuple[str, str, bool]]:
    """``{case: (modality, where it was read, stated for this case alone)}``.

    First match wins: ``dataset.modality`` as a map ``{case: CT|MR}`` (per case), a
    ``"modality"`` key in the case's ``dataset.json`` training entry (per case),
    ``dataset.modality`` as one value (folder-wide), the first of ``dataset.json``'s
    ``channel_names`` / ``modality`` (folder-wide). A folder-wide claim is checked
    against each case's intensities at canonical conversion
    (``fsmis.data.canonical.intensity_modality``), so a folder that mixes CT and MR
    without saying so per case is refused there instead of being windowed wrongly.
    """
    cases = list(cases)
    root = _root(dataset_cfg)
    given = dataset_cfg.get("modality")
    per_case_cfg = {str(k): v for k, v in given.items()} if isinstance(given, dict) else {}
    unknown = sorted(set(per_case_cfg) - set(_ids(root)))
    if unknown:
        raise ValueError(f"dataset.modality names unknown cases {unknown}; case ids look like {cases[:3]}")
    meta = _meta(root)
    entries = {_case_id(Path(e["label"]).name[: -len(_ending(meta))]): e
               for e in meta.get("training") or [] if isinstance(e, dict) and "label" in e}
    channels = list((meta.get("channel_names") or meta.get("modality") or {}).values())
    folder_wide = None
    if isinstance(given, str):
        folder_wide = (_checked(given, "dataset.modality"), "dataset.modality")
    elif channels and _kind(channels[0]):
        folder_wide = (_kind(channels[0]), f"dataset.json channel {channels[0]!r}")
    out = {}
    for case in cases:
        if str(case) in per_case_cfg:
            where = f"dataset.modality[{case}]"
            out[case] = (_checked(per_case_cfg[str(case)], where), where, True)
        elif "modality" in entries.get(case, {}):
            where = f"dataset.json training entry of {case}"
            stated = entries[case]["modality"]
            out[case] = (_checked(_kind(stated) or stated, where), where, True)
        elif folder_wide is not None:
            out[case] = (*folder_wide, False)
        else:
            raise ValueError(f"dataset nifti_folder: cannot tell CT from MR for case {case} (dataset.json "
                             f"channels {channels}); set dataset.modality: CT or MR, or per case "
                             f"dataset.modality: {{{case}: MR, ...}}")
    return out


def modality(dataset_cfg: dict) -> str:
    """The folder's modality: CT or MR, or "mixed" when its cases differ (every
    per-case consumer reads ``fsmis.data.adapters.case_modalities`` instead)."""
    kinds = {claim[0] for claim in modality_claims(dataset_cfg, case_ids(dataset_cfg)).values()}
    return kinds.pop() if len(kinds) == 1 else "mixed"


def classes(dataset_cfg: dict) -> list[str]:
    return list(dataset_cfg.get("classes") or dict.fromkeys(label_map(dataset_cfg).values()))


def label_groups(dataset_cfg: dict) -> list[list[str]]:
    return [list(g) for g in dataset_cfg.get("label_groups") or [classes(dataset_cfg)]]


def check_source(dataset_cfg: dict, root) -> None:
    """Fast (file names, and each NIfTI's gzip trailer against its header): run when the
    workflow is parsed, so a half-copied folder stops the run at once. Missing files: one
    paragraph saying how many of the expected ones are under ``root`` and where the
    layout is described; truncated files: named."""
    from fsmis.nifti_check import check_files

    root, cases = Path(root), case_ids(dataset_cfg)
    ending, ids, absent = _ending(_meta(root)), _ids(root), []
    for case in cases:
        stem = ids[case]
        # nnU-Net names channel 0 <case>_0000; MSD has no channel suffix (_locate)
        images = [root / "imagesTr" / f"{stem}_0000{ending}", root / "imagesTr" / f"{stem}{ending}"]
        if not any(p.is_file() for p in images):
            absent.append(f"imagesTr/{images[0].name} (or {images[1].name})")
        if not (root / "labelsTr" / f"{stem}{ending}").is_file():
            absent.append(f"labelsTr/{stem}{ending}")
    if absent:
        shown = ", ".join(absent[:4]) + (f" and {len(absent) - 4} more" if len(absent) > 4 else "")
        raise InputError(root, f"dataset 'nifti_folder': {2 * len(cases) - len(absent)} of {2 * len(cases)} "
                               f"expected files are there ({len(cases)} cases, image and label each). Missing: "
                               f"{shown}. The layout: README.md, section \"Running the paper experiments\" "
                               f"(row nifti_folder), and docs/data.md, section \"Hand-placed datasets\".")
    found = _locate(dataset_cfg, root, cases)
    check_files([p for pair in found.values() for p in pair], thorough=False)


def _locate(cfg: dict, root, cases) -> dict[str, tuple[Path, Path]]:
    root = Path(root)
    ending, ids, out = _ending(_meta(root)), _ids(root), {}
    for case in cases:
        stem = ids[case]
        label = root / "labelsTr" / f"{stem}{ending}"
        # nnU-Net names channel 0 <case>_0000; MSD has no channel suffix
        image = next((p for p in (root / "imagesTr" / f"{stem}_0000{ending}", root / "imagesTr" / f"{stem}{ending}")
                      if p.is_file()), None)
        if image is None:
            raise InputError(root / "imagesTr", f"no image for case {case}: expected {stem}_0000{ending} or "
                                                f"{stem}{ending}")
        if not label.is_file():
            raise InputError(label, f"label of case {case} does not exist")
        out[case] = (image, label)
    return out


def pairs(dataset_cfg: dict, raw_dir, work_dir, cases) -> list[tuple[str, ...]]:
    from fsmis.data.adapters.manual import zero_values

    found = _locate(dataset_cfg, raw_dir, list(cases))
    names = _raw_values(_meta(Path(raw_dir)))
    ignore = [_value(k, names, "ignore_labels") for k in dataset_cfg.get("ignore_labels") or []]
    out = []
    for case in cases:
        image, label = found[case]
        used = zero_values(label, ignore, Path(work_dir) / f"{case}_label.nii.gz") if ignore else label
        # cases.tsv names the raw files, not the work copy that is deleted afterwards
        out.append((case, str(image), str(used), str(image), str(label)))
    return out
