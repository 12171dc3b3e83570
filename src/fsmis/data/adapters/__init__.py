"""The dataset registry and the adapters: a dataset's raw layout -> ``[(case, image,
raw label), ...]``.

A dataset is one module of this package, named as the dataset, plus its line in
:data:`DATASETS`. The module states the dataset's facts once, ``FACTS`` (a
:class:`Facts`: modality, label map, classes in the papers' table order, label groups,
source), and ``fsmis.data.canonical.build(pairs, out_dir, label_map, modality)`` then
validates its pairs and maps the raw label values to canonical ids. Every adapter
module exposes

* ``FACTS``; a fact given as None is read from the config by the module's function
  of the same name (nifti_folder: ``modality(cfg)``, ``label_map(cfg)``, ...).
* ``case_ids(dataset_cfg) -> list[str]``: from the config alone, so the Snakemake DAG
  is static (nifti_folder may read its local ``dataset.json`` / ``labelsTr/``).
* ``check_source(dataset_cfg, root) -> None``: raises when the raw data are not where
  they should be (``ManualDataMissing`` for registration-only datasets).
* ``pairs(dataset_cfg, raw_dir, work_dir, cases) -> [(case, image_path, label_path)]``:
  NIfTI paths; converted or filtered volumes are written to ``work_dir`` atomically
  (``work_dir`` is deleted after the canonical step: such a pair adds the raw sources
  as fourth and fifth elements, which ``cases.tsv`` records instead).

Optionally, where which requested cases are usable is only known after unpacking
(AbdomenCT-1K's full release has images without a mask):

* ``cases_known_after_unpack(dataset_cfg) -> bool`` and
* ``inventory(dataset_cfg, raw_dir, cases) -> {case: None | reason skipped}``;

the workflow then runs its ``inventory`` checkpoint and builds everything after the
canonical step from the kept cases (:func:`cases_known_after_unpack`, :func:`inventory`
below give every adapter these two, with "all requested cases are usable" as default).

Where cases of one dataset may differ in modality (nifti_folder):

* ``modality_claims(dataset_cfg, cases) -> {case: (modality, where read, per case)}``;

:func:`case_modalities` and :func:`modality_claims` below give every other adapter
the dataset's one modality, claimed folder-wide by the adapter's facts.

``FACTS.source["kind"]`` says how the raw data arrive; the workflow picks the fetch
step by it, never by the dataset's name:

* ``generated``: the adapter's ``generate(dataset_cfg, out_dir, cases) -> [case]``
  writes ``{case}_image.nii.gz`` / ``{case}_label.nii.gz`` into ``resources/<name>/raw``;
  ``source["generator"]`` is the library file (relative to ``src/``) whose code *is*
  the data, so editing it regenerates them.
* ``zenodo``: ``source["records"]`` (or the adapter's ``downloads(dataset_cfg)``) are
  downloaded, verified and unpacked into ``resources/<name>/raw``.
* ``manual`` (registration-only; ``source["page"]`` and ``source["layout"]`` tell the
  user where to get the files and how to place them) and ``local``: the files are
  under ``dataset.root``; ``check_source`` runs before any job.

Downloaded archives are expected unpacked one folder per archive, ``unpack_dir``:
``raw_dir/CHAOS_Train_Sets/...``, ``raw_dir/Subtask1/...``, ``raw_dir/Mask/...``. The
adapters search below those folders, so an extra top-level folder inside an archive
does not matter.

Only the standard library is imported at module level (here and in every adapter): the
Snakefile imports these modules at parse time and dry-runs must stay fast.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
import re
from pathlib import Path

from fsmis.errors import InputError

# The registry: one line per dataset, its name = its module in this package. The one
# list of dataset names: the workflow checks `dataset.name` against it (common.smk).
DATASETS = (
    "phantom",  # synthetic abdominal CT, generated in-process (the demo; no network)
    "chaos_mr",  # Abd-MRI: CHAOS T2-SPIR, Zenodo
    "abdomenct1k",  # AbdomenCT-1K, Zenodo
    "synapse_ct",  # Abd-CT: Synapse / BTCV, registration-only
    "cmr_bssfp",  # Card-MRI: MS-CMRSeg 2019 bSSFP, registration-only
    "nifti_folder",  # any nnU-Net / MSD folder under dataset.root
)
SOURCE_KINDS = ("generated", "zenodo", "manual", "local")
_ARCHIVE_SUFFIXES = (".zip", ".7z", ".tar.gz", ".tgz", ".tar")


class ManualDataMissing(InputError):
    """A registration-only dataset is not where the config says; the message names the
    dataset, the page to get it from, the exact layout expected and what is missing."""

    def __init__(self, dataset: str, root, page: str, layout: str, missing: list[str], hint: str = ""):
        self.dataset, self.page, self.layout, self.missing = dataset, page, layout, list(missing)
        shown = "\n".join(f"  {m}" for m in missing[:10])
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        where = "dataset.root is not set" if root is None else f"dataset.root = {root}"
        problem = (
            f"dataset {dataset!r} is missing ({where}).\n"
            f"It needs a registration and cannot be downloaded by the workflow: get it from\n  {page}\n"
            f"and place it under dataset.root exactly like this:\n{layout.rstrip()}\n"
            f"Missing:\n{shown}{more}" + (f"\n{hint}" if hint else "")
        )
        super().__init__("<dataset.root unset>" if root is None else root, problem)


@dataclasses.dataclass(frozen=True)
class Facts:
    """What a dataset is, stated once in its adapter module as ``FACTS``. A fact given
    as None comes from the config, through the module's function of the same name."""

    modality: str | None  # "CT" or "MR"
    label_map: dict[int, str] | None  # raw label value -> canonical class (explicit, never inferred)
    classes: list[str] | None  # test classes in the papers' table order
    label_groups: list[list[str]] | None  # setting 2: one model per group
    source: dict  # {"kind": one of SOURCE_KINDS, ...what that kind needs (module docstring)}

    def __post_init__(self):
        # a typo here would otherwise surface as a missing fetch step far downstream
        if self.source.get("kind") not in SOURCE_KINDS:
            raise ValueError(f"unknown source kind {self.source.get('kind')!r}; known: {', '.join(SOURCE_KINDS)}")


def get(name: str):
    """The adapter module of dataset ``name``."""
    if name not in DATASETS:
        raise ValueError(f"no adapter for dataset {name!r}; registered datasets: {', '.join(DATASETS)}")
    return importlib.import_module(f"{__name__}.{name}")


def source_kind(name: str) -> str | None:
    """The source kind of a registered dataset (no config needed), None for any other
    name (e.g. "unknown" in a report without a dataset column)."""
    return get(name).FACTS.source["kind"] if name in DATASETS else None


_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def dataset_id(dataset_cfg: dict) -> str:
    """The key of the dataset's data folder, ``results/data/<id>/``.

    ``dataset.id`` when the config sets one; otherwise the name, plus the adapter's
    ``source_tag`` (e.g. AbdomenCT-1K's full release) and, for a dataset read from
    ``dataset.root``, the folder's name and a digest of its absolute path: experiments
    on different folders never share (and so never reprocess) each other's files, and
    two configs naming the same folder share its processed data.
    """
    given = dataset_cfg.get("id")
    if given is not None:
        if not _ID_PATTERN.fullmatch(str(given)):
            raise ValueError(f"dataset.id {given!r}: use letters, digits, '_', '.', '-' (a folder name)")
        return str(given)
    name = dataset_cfg["name"]
    parts = [name]
    tag = _optional(dataset_cfg, "source_tag")
    if tag and tag(dataset_cfg):
        parts.append(tag(dataset_cfg))
    if dataset_cfg.get("root"):
        root = Path(os.path.abspath(os.path.expanduser(str(dataset_cfg["root"]))))
        slug = re.sub(r"[^A-Za-z0-9]+", "_", root.name).strip("_")[:40]
        digest = hashlib.sha256(str(root).encode("utf-8")).hexdigest()[:8]
        parts += [p for p in (slug, digest) if p]
    return "_".join(parts)


def unpack_dir(raw_dir, archive_name: str) -> Path:
    """Where archive ``archive_name`` is unpacked: ``raw_dir/<name without suffix>``."""
    name = Path(archive_name).name
    for suffix in _ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return Path(raw_dir) / name


def downloads(dataset_cfg: dict) -> dict[str, list[str]]:
    """``{zenodo record id: [file names]}`` this config needs ({} for other sources)."""
    module = get(dataset_cfg["name"])
    if hasattr(module, "downloads"):
        return module.downloads(dataset_cfg)
    return {r: list(f) for r, f in module.FACTS.source.get("records", {}).items()}


def _optional(dataset_cfg: dict, name: str):
    """The adapter's optional function ``name``, or None."""
    return getattr(get(dataset_cfg["name"]), name, None)


def cases_known_after_unpack(dataset_cfg: dict) -> bool:
    """Whether the usable cases of this config are only known after unpacking."""
    fn = _optional(dataset_cfg, "cases_known_after_unpack")
    return bool(fn and fn(dataset_cfg))


def inventory(dataset_cfg: dict, raw_dir, cases) -> dict[str, str | None]:
    """``{case: None if usable, else why it is skipped}``; every case is usable for an
    adapter without an ``inventory``."""
    fn = _optional(dataset_cfg, "inventory")
    return fn(dataset_cfg, raw_dir, list(cases)) if fn else {c: None for c in cases}


def usable_cases(inventory_tsv) -> list[str]:
    """The usable cases of the table the workflow's ``inventory`` step wrote (columns
    case, usable 1/0, reason), in order."""
    import csv

    with open(inventory_tsv, newline="", encoding="utf-8") as f:
        return [row["case"] for row in csv.DictReader(f, delimiter="\t") if row["usable"] == "1"]


def facts(dataset_cfg: dict) -> dict:
    """The dataset's facts as a dict (modality, label_map, classes, label_groups,
    source), a copy of its adapter's ``FACTS`` with the entries that come from the
    config (None there, as in nifti_folder) filled in."""
    module = get(dataset_cfg["name"])
    out = dataclasses.asdict(module.FACTS)  # a deep copy: callers may not edit the module's facts
    for key in ("modality", "label_map", "classes", "label_groups"):
        if out.get(key) is None:
            out[key] = getattr(module, key)(dataset_cfg)
    return out


def modality_claims(dataset_cfg: dict, cases) -> dict[str, tuple[str, str, bool]]:
    """``{case: (CT|MR, where that was read, whether it was stated for this case alone)}``."""
    fn = _optional(dataset_cfg, "modality_claims")
    if fn:
        return fn(dataset_cfg, list(cases))
    value = facts(dataset_cfg)["modality"]
    return {case: (value, f"dataset {dataset_cfg['name']}", False) for case in cases}


def case_modalities(dataset_cfg: dict, cases) -> dict[str, str]:
    """``{case: "CT" | "MR"}``: what preprocessing, superpixels and normalisation use."""
    return {case: claim[0] for case, claim in modality_claims(dataset_cfg, cases).items()}


def select_cases(all_ids: list[str], dataset_cfg: dict, id_of=None) -> list[str]:
    """Apply ``dataset.exclude`` then ``dataset.cases`` to ``all_ids`` (kept in order).

    ``cases``: None or "all" (default) = every case; an integer N = the first N cases;
    a list = exactly those ids. Integers in ``cases``/``exclude`` lists are case numbers,
    turned into ids by ``id_of`` (e.g. 5 -> "chaos_5").
    """

    def norm(c):
        if id_of is not None and isinstance(c, int) and not isinstance(c, bool):
            return id_of(c)
        return str(c)

    name = dataset_cfg.get("name", "?")
    known = set(all_ids)
    exclude = [norm(c) for c in dataset_cfg.get("exclude") or []]
    bad = [c for c in exclude if c not in known]
    if bad:
        raise ValueError(f"dataset {name}: dataset.exclude names unknown cases {bad}; ids look like {all_ids[:3]}")
    pool = [c for c in all_ids if c not in set(exclude)]
    spec = dataset_cfg.get("cases")
    if spec is None or spec == "all":
        return pool
    if isinstance(spec, int) and not isinstance(spec, bool):
        if not 1 <= spec <= len(pool):
            raise ValueError(f"dataset {name}: dataset.cases = {spec}, but there are {len(pool)} cases "
                             f"({len(exclude)} excluded)")
        return pool[:spec]
    if isinstance(spec, (list, tuple)):
        wanted = [norm(c) for c in spec]
        bad = [c for c in wanted if c not in known]
        if bad:
            raise ValueError(f"dataset {name}: dataset.cases names unknown cases {bad}; ids look like {all_ids[:3]}")
        dupes = sorted({c for c in wanted if wanted.count(c) > 1})
        if dupes:
            raise ValueError(f"dataset {name}: dataset.cases lists {dupes} more than once")
        clash = sorted(set(wanted) & set(exclude))
        if clash:
            raise ValueError(f"dataset {name}: cases {clash} are both listed in dataset.cases and excluded")
        chosen = set(wanted)
        return [c for c in all_ids if c in chosen]
    raise ValueError(f"dataset {name}: dataset.cases must be 'all', an integer or a list of ids, got {spec!r}")


def find_files(root, pattern, what: str) -> dict[int, Path]:
    """``{number: path}`` of the files below ``root`` whose name fully matches the regex
    ``pattern`` (one group: the case number). macOS ``._*`` shadow files never match an
    anchored pattern. The same number found twice is an error: which copy is meant would
    be a guess."""
    found: dict[int, Path] = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            m = pattern.fullmatch(f)
            if not m:
                continue
            n, path = int(m.group(1)), Path(dirpath) / f
            if n in found:
                raise InputError(path, f"{what} {n} found twice: also {found[n]}; keep only one copy")
            found[n] = path
    return found
