"""The result tree as code: every path the workflow reads or writes, by name.

Each *kind* of path has one template in Snakemake's wildcard syntax (``{name}``). The
rules take their input/output/log/benchmark strings from here (``output:
model=PATHS.model``); the library fills them (:func:`fill`, :func:`within`,
:func:`beside`) and reads paths back (:func:`parse`) instead of assembling folder
and file names itself, so the tree is defined once.

A template is a base kind (a folder) plus a part under it. That is what lets the
library name a file inside a folder the rule declares (``within(predictions_dir,
"prediction", ...)``, ``within(report_dir, ...)``) or next to a declared file
(``beside(model_pt, "checkpoint")``) without knowing the layout.

Standard library only: the Snakefile imports this module at parse time, when neither
torch nor SimpleITK may be importable.
"""

from __future__ import annotations

import os
import re

# The evaluation protocols (fsmis.protocols.PROTOCOLS, the config schema's enum) and
# the settings (fsmis.settings.SETTINGS), repeated here because both appear in file
# names and this module may import nothing heavy; tests/test_paths.py checks they agree.
PROTOCOLS = ("oracle", "full")
SETTINGS = ("1", "2", "2all", "2any")

# What each wildcard may hold when a path is parsed or filled. Matches the rules'
# wildcard_constraints where those exist (workflow/rules/common.smk).
WILDCARDS = {
    "source": r"[A-Za-z0-9_.-]+",  # dataset name (resources/{source}/)
    "ds": r"[^/]+",  # dataset id (fsmis.data.adapters.dataset_id)
    # an experiment named like a folder results/ holds for other purposes could not be
    # told apart from it
    "exp": r"(?!(?:data|benchmarks|mlflow)(?:/|$))[^/]+",
    "case": r"[A-Za-z0-9_]+",
    "method": r"[A-Za-z0-9_]+",
    "setting": "|".join(re.escape(s) for s in sorted(SETTINGS, key=len, reverse=True)),
    "fold": r"\d+",
    "seed": r"\d+",  # a training seed (config `seeds`)
    "group": r"[A-Za-z0-9_+]+",  # "all" or label classes joined by "+" (fsmis.settings)
    "protocol": "|".join(PROTOCOLS),
    "file": r"[^/]+",  # a Zenodo file name
    "archive": r"[^/]+",  # the folder an archive is unpacked into
    "weights": r"[A-Za-z0-9_]+",  # a key of fsmis.data.weights.KNOWN
    "config_hash": r"[A-Za-z0-9_]+",
    "name": r"[a-z][a-z0-9_]*",  # report table/figure name (hd95, ...)
    "ext": r"[a-z]+",
}

# Oracle predictions keep the plain case name; other protocols add "_<protocol>".
_SUFFIXED = {"protocol": "|".join(p for p in PROTOCOLS if p != "oracle")}

# kind: (base kind or None, part under the base, wildcard regexes special to the kind).
# Order matters to parse(): where two templates can match one path, the first listed
# wins (e.g. a prediction file before a folder named like a case).
_DEFS: dict[str, tuple[str | None, str, dict]] = {
    # -- raw resources (fetch stage)
    "weights": (None, "resources/weights/{weights}.pth", {}),
    "download": (None, "resources/{source}/downloads/{file}", {}),
    "raw_dir": (None, "resources/{source}/raw", {}),
    "raw_image": ("raw_dir", "{case}_image.nii.gz", {}),  # generated phantom pairs
    "raw_label": ("raw_dir", "{case}_label.nii.gz", {}),
    "unpacked": ("raw_dir", "{archive}", {}),
    # -- one dataset's derived data: results/data/{ds}/
    "data_dir": (None, "results/data/{ds}", {}),
    "inventory": ("data_dir", "inventory.tsv", {}),
    "cases": ("data_dir", "cases.tsv", {}),
    "classmap": ("data_dir", "classmap.json", {}),
    "canonical_dir": ("data_dir", "canonical", {}),
    "canonical_image": ("canonical_dir", "{case}_image.nii.gz", {}),
    "canonical_label": ("canonical_dir", "{case}_label.nii.gz", {}),
    "canonical_row": ("canonical_dir", "{case}.tsv", {}),
    "preprocessed_dir": ("data_dir", "preprocessed", {}),
    "image": ("preprocessed_dir", "{case}_image.nii.gz", {}),
    "label": ("preprocessed_dir", "{case}_label.nii.gz", {}),
    "superpixels_dir": ("data_dir", "superpixels", {}),
    "superpixels": ("superpixels_dir", "{case}.nii.gz", {}),
    "supervoxels_dir": ("data_dir", "supervoxels", {}),
    "supervoxels": ("supervoxels_dir", "{case}.nii.gz", {}),
    # -- one experiment: results/{exp}/
    "experiment_dir": (None, "results/{exp}", {}),
    "splits": ("experiment_dir", "splits.json", {}),
    "report_dir": ("experiment_dir", "report", {}),
    # per setting and protocol: dice_setting1_oracle.csv, dice_bars_setting2_full.png, ...
    "report_slice": ("report_dir", "{name}_setting{setting}_{protocol}.{ext}", {}),
    # once per experiment: dice_per_fold.csv, qualitative.png, training_curves.png, ...
    "report_file": ("report_dir", "{name}.{ext}", {}),
    # one training seed of one fold (config `seeds`: the seed is a factor of the tree)
    "fold_dir": ("experiment_dir", "{method}/setting{setting}/seed{seed}/fold{fold}", {}),
    "metrics": ("fold_dir", "metrics.json", {}),
    "per_case": ("fold_dir", "per_case.tsv", {}),
    "predictions": ("fold_dir", "predictions", {}),
    "prediction": ("predictions", "{case}_{protocol}.nii.gz", _SUFFIXED),
    "prediction_oracle": ("predictions", "{case}.nii.gz", {}),
    # the same on the raw file's grid (evaluate.source_grid_predictions)
    "source_grid_prediction": ("predictions", "source_grid/{case}_{protocol}.nii.gz", _SUFFIXED),
    "source_grid_prediction_oracle": ("predictions", "source_grid/{case}.nii.gz", {}),
    # one model per label group of the setting ("all" unless setting 2)
    "model_dir": ("fold_dir", "{group}", {}),
    "model": ("model_dir", "model.pt", {}),
    "train_log": ("model_dir", "train_log.tsv", {}),
    # resume state, not declared to Snakemake (it would delete it with a failed job)
    "checkpoint": ("model_dir", "checkpoint.pt", {}),
    # a resume state of another configuration, set aside
    "stale_checkpoint": ("model_dir", "checkpoint.{config_hash}.pt", {}),
}

# logs/{rule}/<job>.log and results/benchmarks/{rule}/<job>.tsv: one file per job,
# named by the job's wildcards.
_JOBS = {
    "generate_phantom": "{source}",
    "fetch_weights": "{weights}",
    "download": "{source}/{file}",
    "unpack": "{source}/{archive}",
    "inventory": "{ds}",
    "canonical": "{ds}/{case}",
    "case_table": "{ds}",
    "preprocess": "{ds}/{case}",
    "classmap": "{ds}",
    "superpixels": "{ds}/{case}",
    "supervoxels": "{ds}/{case}",
    "splits": "{exp}",
    "train": "{exp}/{method}/setting{setting}/seed{seed}/fold{fold}/{group}",
    "evaluate": "{exp}/{method}/setting{setting}/seed{seed}/fold{fold}",
    "report": "{exp}",
}
_BENCHMARKED = ("generate_phantom", "preprocess", "superpixels", "supervoxels", "train", "evaluate")
# Benchmarks first: results/benchmarks/... must not be read as an experiment's file.
_DEFS = {
    **{f"benchmark_{rule}": (None, f"results/benchmarks/{rule}/{_JOBS[rule]}.tsv", {}) for rule in _BENCHMARKED},
    **_DEFS,
    **{f"log_{rule}": (None, f"logs/{rule}/{job}.log", {}) for rule, job in _JOBS.items()},
}

_FIELD = re.compile(r"\{(\w+)\}")


def _full(kind: str) -> str:
    base, part, _ = _DEFS[kind]
    return part if base is None else f"{_full(base)}/{part}"


# kind -> full template, e.g. TEMPLATES["model"] ==
# "results/{exp}/{method}/setting{setting}/fold{fold}/{group}/model.pt"
TEMPLATES: dict[str, str] = {kind: _full(kind) for kind in _DEFS}


def __getattr__(name: str) -> str:
    """``fsmis.paths.model`` etc.: the template of that kind (the rules' spelling)."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def _constraint(kind: str, name: str) -> str:
    return _DEFS[kind][2].get(name, WILDCARDS.get(name, r"[^/]+"))


def _regex(kind: str, template: str) -> str:
    out, seen, pos = [], set(), 0
    for field in _FIELD.finditer(template):
        out.append(re.escape(template[pos : field.start()]))
        name = field[1]
        out.append(f"(?P={name})" if name in seen else f"(?P<{name}>{_constraint(kind, name)})")
        seen.add(name)
        pos = field.end()
    out.append(re.escape(template[pos:]))
    return "".join(out)


# Whole paths (relative to the working directory, or with any folder in front: a job
# may see absolute paths) and the parts under each kind's base.
_WHOLE = {kind: re.compile(rf"(?:^|(?<=/)){_regex(kind, t)}$") for kind, t in TEMPLATES.items()}
_PART = {kind: re.compile(rf"(?:^|(?<=/)){_regex(kind, d[1])}$") for kind, d in _DEFS.items()}


def wildcards(kind: str) -> list[str]:
    """The wildcard names of a kind's template, in order of first appearance."""
    return list(dict.fromkeys(_FIELD.findall(_template(kind))))


def _template(kind: str) -> str:
    try:
        return TEMPLATES[kind]
    except KeyError:
        raise ValueError(f"unknown kind of path {kind!r}; known: {', '.join(TEMPLATES)}") from None


def _format(kind: str, template: str, values: dict, partial: bool = False) -> str:
    needed = list(dict.fromkeys(_FIELD.findall(template)))
    unknown = sorted(set(values) - set(needed))
    if unknown:
        raise ValueError(f"{kind}: no wildcard(s) {', '.join(unknown)} in {template!r}")
    if not partial:
        missing = [n for n in needed if n not in values]
        if missing:
            raise ValueError(f"{kind}: wildcard(s) {', '.join(missing)} not given for {template!r}")
    for name, value in values.items():
        if not re.fullmatch(_constraint(kind, name), str(value)):
            raise ValueError(f"{kind}: {name}={value!r} does not match {_constraint(kind, name)!r}")
    return _FIELD.sub(lambda m: str(values[m[1]]) if m[1] in values else m[0], template)


def fill(kind: str, **values) -> str:
    """The path of ``kind`` with every wildcard filled; a missing, unknown or malformed
    wildcard raises ValueError (a path that parse() could not read back)."""
    return _format(kind, _template(kind), values)


def partial(kind: str, **values) -> str:
    """The template of ``kind`` with only the given wildcards filled, the others left as
    ``{name}`` (for rules that expand the rest themselves)."""
    return _format(kind, _template(kind), values, partial=True)


def match(kind: str, path: str | os.PathLike) -> dict[str, str] | None:
    """The wildcards of ``path`` read as ``kind``, or None when it is not one."""
    _template(kind)
    found = _WHOLE[kind].search(os.fspath(path))
    return None if found is None else found.groupdict()


def parse(path: str | os.PathLike) -> tuple[str, dict[str, str]]:
    """``(kind, wildcards)`` of a path of the tree; ValueError for any other path.
    Leading folders are ignored, so an absolute path of a job parses too."""
    text = os.fspath(path)
    for kind, pattern in _WHOLE.items():
        found = pattern.search(text)
        if found is not None:
            return kind, found.groupdict()
    raise ValueError(f"{text}: not a path of the result tree (fsmis.paths)")


def _join(folder: str | os.PathLike, name: str) -> str:
    folder = os.fspath(folder)
    return os.path.join(folder, name) if folder else name


def name_in_base(kind: str, **values) -> str:
    """The part of ``kind`` under its base folder, filled (e.g. ``model.pt``)."""
    _template(kind)
    if _DEFS[kind][0] is None:
        raise ValueError(f"{kind} is not under another kind of path")
    return _format(kind, _DEFS[kind][1], values)


def within(folder: str | os.PathLike, kind: str, **values) -> str:
    """``kind`` inside ``folder``, a path of its base kind that the caller was given
    (e.g. the ``predictions`` folder a rule declares). Only the part under the base is
    filled: the folder's own wildcards are not needed."""
    return _join(folder, name_in_base(kind, **values))


def stem(kind: str, **values) -> str:
    """``name_in_base`` without its ``.{ext}``: for writers that add their own
    extensions (``report_slice`` tables are written as .csv and .md together)."""
    _template(kind)
    part = _DEFS[kind][1]
    if not part.endswith(".{ext}"):
        raise ValueError(f"{kind}: {part!r} does not end in .{{ext}}")
    return _format(kind, part[: -len(".{ext}")], values)


def base_of(path: str | os.PathLike, kind: str) -> tuple[str, dict[str, str]]:
    """``(folder, wildcards of the part)`` of a path of ``kind``: the folder of its base
    kind that holds it. ValueError if the path does not end in the kind's part."""
    _template(kind)
    text = os.fspath(path)
    found = _PART[kind].search(text)
    if _DEFS[kind][0] is None or found is None:
        raise ValueError(f"{text}: does not end in a {kind} path ({_DEFS[kind][1]!r})")
    return text[: found.start()].rstrip("/"), found.groupdict()


def beside(path: str | os.PathLike, kind: str, **values) -> str:
    """``kind`` in the same base folder as ``path`` (a path of another kind with that
    base): e.g. ``beside(model_pt, "checkpoint")``, ``beside(metrics_json, "per_case")``.
    Wildcards of the part come from ``path`` where not given."""
    _template(kind)
    base = _DEFS[kind][0]
    siblings = [k for k, d in _DEFS.items() if base is not None and d[0] == base]
    for sibling in siblings:
        try:
            folder, own = base_of(path, sibling)
        except ValueError:
            continue
        needed = set(_FIELD.findall(_DEFS[kind][1]))
        merged = {k: v for k, v in {**own, **values}.items() if k in needed}
        return _join(folder, name_in_base(kind, **merged))
    raise ValueError(f"{os.fspath(path)}: not a file whose folder also holds {kind} paths "
                     f"({', '.join(siblings) or 'none'})")


def prediction(predictions_dir: str | os.PathLike, case: str, protocol: str, source_grid: bool = False) -> str:
    """One prediction file in an evaluation's ``predictions`` folder: ``{case}.nii.gz``
    for the oracle protocol, ``{case}_{protocol}.nii.gz`` for the others, under
    ``source_grid/`` when on the raw file's grid."""
    kind = ("source_grid_" if source_grid else "") + ("prediction_oracle" if protocol == "oracle" else "prediction")
    values = {"case": case} if protocol == "oracle" else {"case": case, "protocol": protocol}
    return within(predictions_dir, kind, **values)


def train_label(path: str | os.PathLike) -> str:
    """The label of a training run in figures, ``"<method> setting<s> seed<n> fold<k> <group>"``,
    read from its ``train_log`` (or ``model``) path."""
    for kind in ("train_log", "model"):
        found = match(kind, path)
        if found is not None:
            return (f"{found['method']} setting{found['setting']} seed{found['seed']} fold{found['fold']} "
                    f"{found['group']}")
    raise ValueError(f"{os.fspath(path)}: not a train_log or model path of the result tree")
