# Helpers for the other .smk files: constants derived from the validated config,
# wildcard constraints, and input/param/resource functions. No rules in this file:
# `snakemake --lint` flags files that mix rules and functions; it matches the word
# "rule" followed by a name and a colon anywhere, comments included.
#
# At parse time only the standard-library modules of fsmis are imported (config,
# paths, envvars, the registries of methods and datasets): dry-runs and --lint must not
# need torch or mlflow. The MLflow handlers in the Snakefile import it lazily.

import hashlib
import importlib
import os
import re
import sys
import time
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

# `report` itself, at the start of a line, would be read as the report directive.
from snakemake.io import report as report_item

# --- CPU sharing -------------------------------------------------------------------

# Snakemake schedules against `--cores` as given. `--cores 8` on a 2-CPU machine would
# run 8 torch jobs at once, which thrash the caches (measured: ~40 % less throughput
# than 2 jobs). Each training/evaluation job therefore also takes one `cpu_jobs` token,
# and at most one such job per CPU of this machine runs at once unless the command line
# says otherwise (--resources cpu_jobs=N). Snakemake applies global resources to cluster
# executors too, so the slurm profiles lift it (`resources: cpu_jobs: 50`).
workflow.global_resources.setdefault("cpu_jobs", os.cpu_count() or 1)


# --- a Snakemake defect worked around ------------------------------------------------

# `--list-changes params` prints the outputs of every job with recorded params, changed or
# not: Snakemake 9's ParamsChange iterates over its files even when it holds no change
# (params_changed() merges an empty change with the per-file ones). Iterate over the files
# of a real change only, so the listing names exactly the jobs a config change reruns.
# Only the listing iterates over a ParamsChange; rerun decisions use its truth value.
_PARAMS_CHANGE = importlib.import_module("snakemake.persistence").ParamsChange
if list(_PARAMS_CHANGE(files={"probe"})):
    _PARAMS_CHANGE.__iter__ = lambda self: iter(self.files if self else ())


# --- dataset facts -----------------------------------------------------------------

# Folder where jobs record their MLflow runs for the handlers to store in one process
# (importing MLflow in every job cost ~3 s of CPU each). Absolute: jobs may run
# elsewhere (--directory, cluster nodes with the same shared filesystem).
MLFLOW_SPOOL = Path("results/mlflow/spool").absolute()

# The library shipped with this workflow: <repo>/src (this file is
# <repo>/workflow/rules/common.smk).
SRC_DIR = Path(workflow.current_basedir.get_path_or_uri(secret_free=True)).parents[1] / "src"


def fsmis_module(name):
    """Import a module of fsmis (only standard-library ones at parse time); fall back to
    the src/ tree beside this workflow when the package is not installed in the
    Python that runs Snakemake."""
    try:
        return importlib.import_module(name)
    except ImportError:
        if (SRC_DIR / "fsmis").is_dir() and str(SRC_DIR) not in sys.path:
            sys.path.insert(0, str(SRC_DIR))
            return importlib.import_module(name)
        raise


# Names of the environment variables (fsmis.envvars, standard library only). The
# onstart handler sets the parent run, the config hash and the spool folder there for
# the job scripts and fsmis.tracking; never through params/input: their value changes
# with every invocation and would mark every job as outdated.
ENVVARS = fsmis_module("fsmis.envvars")

# The result tree (fsmis.paths, standard library only): every rule's input, output,
# log and benchmark template comes from it, and the library fills and parses the same
# templates, so a path is spelled in one place.
PATHS = fsmis_module("fsmis.paths")

# One GPU job per device: on a local run with N visible GPUs (fsmis.devices) at most N
# jobs that ask for `gpu` run at once, and each leases a device of its own (job script
# fsmis_job.start). --resources gpu=K overrides. No limit on a cluster (its scheduler
# places GPU jobs) nor without GPUs (nothing may hold back the training jobs).
DEVICES = fsmis_module("fsmis.devices")
try:
    GPU_LIMIT = DEVICES.local_gpu_limit(
        workflow.is_main_process, workflow.resource_settings.cores, workflow.resource_settings.nodes
    )
except DEVICES.DeviceError as err:
    raise WorkflowError(str(err)) from None
if GPU_LIMIT:
    GPU_JOBS = workflow.global_resources.setdefault("gpu", GPU_LIMIT).value
    logger.info(f"{GPU_LIMIT} GPU(s) visible: at most {GPU_JOBS} GPU jobs at once, each on a device of its own")


# Registered methods: fsmis.models.registry (standard library only, so no torch at
# parse time), its METHODS plus any of FSMIS_EXTRA_METHODS. `untrained` is SSL-ALPNet's
# network after 0 steps; `mask_transfer` has no model and is only evaluated. Named
# variants (config `variants`) are trainable too (TRAINABLE, below).
REGISTERED = fsmis_module("fsmis.models.registry").names()


def source_digest(relative):
    """Digest of a library source file. Passed as a param where the file *is* the data
    (a generated dataset's generator, FACTS.source["generator"] of its adapter), so
    editing it regenerates the data: Snakemake's code trigger only sees the job script,
    not the library it calls."""
    return hashlib.sha256((SRC_DIR / relative).read_bytes()).hexdigest()[:12]


# The config's own checks, hash and case ids (fsmis.config, standard library only).
CONFIG = fsmis_module("fsmis.config")


def config_checked(fn, *args):
    """`fn(*args)` with a config problem shown as Snakemake's one-line WorkflowError."""
    try:
        return fn(*args)
    except CONFIG.ConfigError as err:
        raise WorkflowError(str(err)) from None


# --- constants of this invocation ---------------------------------------------------

# The Snakefile validated `config` against the schema (defaults filled) before
# including this file; these checks complete the validation before anything uses it.
# (At module level, not through config_checked: one frame fewer in Snakemake's message.)
try:
    CONFIG.check(config, REGISTERED)
except CONFIG.ConfigError as err:
    raise WorkflowError(str(err)) from None

EXPERIMENT = config["experiment"]
DATASET = config["dataset"]["name"]
# Dataset facts (modality, test classes, label groups, source): the FACTS of the
# dataset's adapter module, completed from the config for nifti_folder
# (fsmis.data.adapters.facts).
ADAPTERS = fsmis_module("fsmis.data.adapters")
# The key of results/data/{ds}/ (fsmis.data.adapters.dataset_id): the name, or for a
# dataset under dataset.root also that folder's name and path digest. Raw files stay
# under resources/{source}/ (the dataset's name: one source per name).
DATA_ID = ADAPTERS.dataset_id(config["dataset"])
DATASET_FACTS = ADAPTERS.facts(config["dataset"])
# "generated" (in-process, e.g. the phantom), "zenodo" (downloaded), "manual"
# (registration-only, placed by hand under dataset.root) or "local" (nifti_folder under
# dataset.root): it alone picks the fetch step, never the dataset's name.
SOURCE_KIND = DATASET_FACTS["source"]["kind"]
# Zenodo files this config needs, {file name: record id}, and the folder each archive is
# unpacked into, {folder name: file name} (fsmis.data.adapters.unpack_dir).
DOWNLOADS = (
    {f: str(r) for r, files in ADAPTERS.downloads(config["dataset"]).items() for f in files}
    if SOURCE_KIND == "zenodo"
    else {}
)
UNPACKED = {ADAPTERS.unpack_dir("", f).name: f for f in DOWNLOADS}
# Where the canonical step finds the raw data.
RAW_DIR = {
    "generated": f"resources/{DATASET}/raw",
    "zenodo": f"resources/{DATASET}/raw",
}.get(SOURCE_KIND) or config[
    "dataset"
].get("root")
# The requested cases (from the config alone). Where the usable ones are only known
# after unpacking (DYNAMIC_CASES), the inventory checkpoint decides: usable_cases().
CASES = config_checked(CONFIG.case_ids, config["dataset"])
# {case: CT|MR}: per case, since a nifti_folder may mix modalities (dataset.modality map
# or dataset.json training entries; fsmis.data.adapters.case_modalities)
CASE_MODALITY = ADAPTERS.case_modalities(config["dataset"], CASES)
DYNAMIC_CASES = SOURCE_KIND == "zenodo" and ADAPTERS.cases_known_after_unpack(config["dataset"])
# Predictions also written on the raw files' grids (evaluate.source_grid_predictions):
# "auto" = on for a user's local folder, whose raw images the user will overlay them on.
SOURCE_GRID = CONFIG.source_grid_predictions(config, SOURCE_KIND)
FOLDS = config["folds"]
# training seeds, a factor of the result tree (config `seeds`, default [seed])
SEEDS = config["seeds"]
SETTINGS = config["settings"]
METHODS = config["methods"]
BASELINES = config["baselines"]
PROTOCOLS = config["evaluate"]["protocols"]
TRAINABLE = REGISTERED + list(config["variants"]) + ["untrained"]
# Everything that gets a model.pt: the methods, plus `untrained` if asked for.
TRAINED = METHODS + [b for b in BASELINES if b in TRAINABLE]
EVALUATED = METHODS + BASELINES
CONFIG_HASH = CONFIG.config_hash(config)
# The models of one fold per setting: {setting: {group: test classes}} (fsmis.settings);
# one group "all" except in setting 2 (one model per label group).
GROUPS = {
    setting: fsmis_module("fsmis.settings").model_groups(
        setting, DATASET_FACTS["classes"], DATASET_FACTS.get("label_groups") or []
    )
    for setting in SETTINGS
}


# {ds}, {source} and {exp} only match the configured dataset and experiment: another value could
# not be produced correctly from this config, so it is better reported as a missing rule.
wildcard_constraints:
    ds=re.escape(DATA_ID),
    source=re.escape(DATASET),
    exp=re.escape(EXPERIMENT),
    case="[A-Za-z0-9_]+",
    method="[A-Za-z0-9_]+",
    setting="|".join(re.escape(s) for s in fsmis_module("fsmis.settings").SETTINGS),
    fold=r"\d+",
    seed="|".join(str(s) for s in SEEDS),
    file="|".join(re.escape(f) for f in DOWNLOADS) or "(?!)",
    archive="|".join(re.escape(a) for a in UNPACKED) or "(?!)",
    group="|".join(re.escape(g) for groups in GROUPS.values() for g in groups),


# --- input functions ---------------------------------------------------------------


def usable_cases():
    """The cases everything after the canonical step runs on: CASES, or the usable ones
    of the inventory checkpoint (Snakemake re-plans the jobs that ask once it ran).
    Read at every call, not cached: a checkpoint rerun in the same invocation (changed
    cases) must be seen by the re-planning."""
    if not DYNAMIC_CASES:
        return CASES
    table = checkpoints.inventory.get(ds=DATA_ID).output.inventory
    return ADAPTERS.usable_cases(table)


def per_case(pattern):
    """Input function: `pattern` ({ds}, {case}) for every usable case."""
    return lambda wildcards: expand(pattern, ds=DATA_ID, case=usable_cases())


def raw_inputs(wildcards):
    """What the canonical step reads, per source kind: the generated pairs or the
    unpacked archives; hand-placed data live outside the workflow (checked at start)."""
    if SOURCE_KIND == "generated":
        return rules.generate_phantom.output
    if SOURCE_KIND == "zenodo":
        return expand(rules.unpack.output.folder, source=DATASET, archive=list(UNPACKED))
    return []


def check_hand_placed_data():
    """Registration-only and local datasets: stop before any job when the files are not
    under dataset.root, with how many of the expected files are there and where their
    placement is described (the adapter's check_source)."""
    if SOURCE_KIND not in ("manual", "local"):
        return
    try:
        ADAPTERS.get(DATASET).check_source(config["dataset"], config["dataset"].get("root"))
    except fsmis_module("fsmis.errors").InputError as err:
        raise WorkflowError(str(err)) from None


# Command-line options that never read the dataset: no check for them (--lint is told
# by Snakemake itself, which parses without checking environment variables).
NO_DATA_OPTIONS = {
    "--lint",
    "--list-rules",
    "-l",
    "--list-target-rules",
    "--lt",
    "--list-changes",
    "--lc",
    "--list-input-changes",
    "--li",
    "--list-params-changes",
    "--lp",
    "--list-untracked",
    "--lu",
    "--summary",
    "-S",
    "--detailed-summary",
    "-D",
    "--unlock",
    "--cleanup-metadata",
    "--cm",
    "--print-compilation",
}


def data_needed():
    """Whether this invocation may read the dataset: a run or a dry-run in the main
    process (jobs, which parse this file again, skip the check), not a listing or lint."""
    linting = not getattr(workflow, "check_envvars", True)
    listing = any(arg.split("=", 1)[0] in NO_DATA_OPTIONS for arg in sys.argv[1:])
    return workflow.is_main_process and not linting and not listing


# When the workflow is parsed, dry-runs included: a missing or half-copied hand-placed
# dataset stops the invocation before any job is planned.
if data_needed():
    check_hand_placed_data()


def pretrained_weights(wildcards):
    """The backbone weight file, when the config names one (an input, so a missing or
    replaced file is noticed by Snakemake)."""
    path = config["model"]["pretrained"]
    return [] if path is None else [path]


def model_for_evaluation(wildcards):
    """{group: model.pt} of the same method/setting/fold (one per label group in
    setting 2); mask_transfer has no model."""
    if wildcards.method not in TRAINABLE:
        return {}
    return {group: expand(rules.train.output.model, group=group, **wildcards)[0] for group in GROUPS[wildcards.setting]}


def training_data(wildcards):
    """The method's pseudo-labels and normalisation (fsmis.models.resolve.training_data)."""
    return fsmis_module("fsmis.models.resolve").training_data(wildcards.method, config)


def pseudo_labels(wildcards):
    """Input function of the train rule: the pseudo-label maps its method trains on, 2D
    superpixels or 3D supervoxels (train.pseudo_labels), for every usable case."""
    if training_data(wildcards)["pseudo_labels"] == "supervoxels3d":
        return per_case(PATHS.supervoxels)(wildcards)
    return per_case(PATHS.superpixels)(wildcards)


def method_params(wildcards):
    """What the method in the wildcard is built from: its architecture and
    hyperparameters (per-setting overrides and a variant's own values included), so
    editing them reruns it (fsmis.models.resolve)."""
    resolve = fsmis_module("fsmis.models.resolve").resolve
    arch, params = resolve(wildcards.method, config, wildcards.setting)
    return {"architecture": arch, "params": params}


def train_mem_mb(wildcards, attempt):
    """Memory estimate for one training job: the paper backbones need far more than the
    demo one. Grows on retries (--retries)."""
    base = 4000 if config["model"]["backbone"] == "small_cnn" else 16000
    return base * attempt


def evaluate_gpu(wildcards):
    """mask_transfer runs no network, so it needs no GPU token."""
    return 1 if wildcards.method in TRAINABLE else 0


# --- outputs collected over the experiment -----------------------------------------


def fold_outputs(pattern, methods):
    """`pattern` for every method x setting x seed x fold (x label group of the setting,
    when the pattern has {group}) this config runs; {exp} stays a wildcard (filled from
    the job that asks)."""
    return [
        path
        for setting in SETTINGS
        for path in expand(
            pattern,
            method=methods,
            setting=setting,
            seed=SEEDS,
            fold=FOLDS,
            group=list(GROUPS[setting]),
            allow_missing=True,
        )
    ]


def report_slices(name, *exts):
    """The report's files `name` of every configured setting and protocol, e.g.
    dice_setting1_oracle.csv (PATHS.report_slice), for each of `exts`."""
    return [
        PATHS.fill("report_slice", exp=EXPERIMENT, name=name, setting=setting, protocol=protocol, ext=ext)
        for setting in SETTINGS
        for protocol in PROTOCOLS
        for ext in exts
    ]


def report_file(name, ext):
    """One report file of the whole experiment, e.g. dice_per_fold.csv (PATHS.report_file)."""
    return PATHS.fill("report_file", exp=EXPERIMENT, name=name, ext=ext)


def report_items(name, ext, caption, category):
    """One report() item per setting and protocol (the files of report_slices),
    labelled so that the HTML report can switch between them."""
    items = []
    for setting in SETTINGS:
        for protocol in PROTOCOLS:
            path = PATHS.fill("report_slice", exp=EXPERIMENT, name=name, setting=setting, protocol=protocol, ext=ext)
            labels = {"setting": setting, "protocol": protocol}
            items.append(report_item(path, caption=caption, category=category, labels=labels))
    return items


def report_skipped_cases():
    """At the end of a run: name the requested cases the inventory skipped."""
    if not DYNAMIC_CASES:
        return
    table = Path(expand(rules.inventory.output.inventory, ds=DATA_ID)[0])
    if not table.exists():
        return
    skipped = sorted(set(CASES) - set(ADAPTERS.usable_cases(table)))
    if skipped:
        logger.warning(
            f"{len(skipped)} of {len(CASES)} requested case(s) were skipped (no mask): "
            f"{', '.join(skipped)}; reasons in {table}"
        )


# When this invocation was parsed: the end-of-run summary's wall time, and whether the
# report was rebuilt by this run (its files' times).
STARTED = time.monotonic()
STARTED_AT = time.time()


def print_run_summary():
    """After a successful run that built the report: wall time, report folder, the
    headline Dice table, the HTML report and MLflow commands (fsmis.run_summary). After
    one that did not (one fold, data only), a line saying the report was not rebuilt."""
    headline = PATHS.fill(
        "report_slice", exp=EXPERIMENT, name="dice", setting=SETTINGS[0], protocol=PROTOCOLS[0], ext="md"
    )
    if not Path(headline).is_file():
        return
    if Path(headline).stat().st_mtime < STARTED_AT:
        logger.info(
            f"The report in {PATHS.fill('report_dir', exp=EXPERIMENT)}/ was not rebuilt by this run; "
            "`snakemake --cores N all` brings it up to date with what this run changed."
        )
        return
    tracking = fsmis_tracking()
    uri = tracking.tracking_uri() if tracking.enabled() else None
    text = fsmis_module("fsmis.run_summary").run_summary(
        EXPERIMENT, PATHS.fill("report_dir", exp=EXPERIMENT), time.monotonic() - STARTED, headline, uri
    )
    logger.info(text)


# --- MLflow (used by the onstart/onsuccess/onerror handlers only) -------------------


def fsmis_tracking():
    """fsmis.tracking (imports MLflow lazily, only when the handlers call it)."""
    return fsmis_module("fsmis.tracking")


def parent_run_tags():
    return {
        "config_hash": CONFIG_HASH,
        "dataset": DATASET,
        "dataset_id": DATA_ID,
        "experiment": EXPERIMENT,
        "snakemake_command": " ".join(sys.argv),
    }


def first_or_none(paths):
    return str(paths[0]) if paths else None
