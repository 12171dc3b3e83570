"""Common start of every job script in this folder.

Snakemake puts this folder on ``sys.path`` when it runs a ``script:``, so the job
scripts import it as ``fsmis_job``. It sends the job's stdout, stderr and ``logging``
output into the rule's log file, makes ``fsmis`` importable, and builds the
``tracking`` dict that every stage function of ``fsmis.stages`` takes.
"""

import importlib.util
import logging
import os
import sys
from pathlib import Path

# The library shipped beside this workflow: <repo>/src (this file is
# <repo>/workflow/scripts/fsmis_job.py).
SRC_DIR = Path(__file__).resolve().parents[2] / "src"


def start(snakemake) -> dict:
    """Redirect output into ``snakemake.log[0]``, configure logging, return tracking."""
    log = open(snakemake.log[0], "w", buffering=1)
    sys.stderr = log
    sys.stdout = log
    logging.basicConfig(
        level=logging.INFO,
        stream=log,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    logger = logging.getLogger("fsmis.workflow")
    wildcards = {name: str(value) for name, value in snakemake.wildcards.items()}
    logger.info(
        "rule %s, wildcards %s, threads %s",
        snakemake.rule,
        wildcards,
        snakemake.threads,
    )
    _ensure_fsmis_importable(logger)

    from fsmis import envvars  # importable only now

    # A job that asks for a GPU leases a device of its own before torch can initialise
    # CUDA (fsmis.devices); the stage logs its id in the job's MLflow run.
    device_id = None
    if snakemake.resources.get("gpu", 0):
        from fsmis.devices import lease_for_job

        device_id = lease_for_job() or "cpu"
        logger.info("device %s", device_id)

    # Computed once per invocation in workflow/rules/common.smk and exported by the
    # Snakefile's onstart handler; recomputed (same function, same config) if a job runs
    # without it.
    config_hash = os.environ.get(envvars.FSMIS_CONFIG_HASH)
    if not config_hash:
        from fsmis.config import config_hash as hash_config

        config_hash = hash_config(snakemake.config)
    tracking = {
        "experiment": snakemake.config["experiment"],
        "rule": snakemake.rule,
        "wildcards": wildcards,
        "config_hash": config_hash,
    }
    if device_id is not None:
        tracking["device_id"] = device_id
    return tracking


def _ensure_fsmis_importable(logger: logging.Logger) -> None:
    # A conda env made by `--sdm conda` holds the dependencies but cannot hold this
    # checkout's package (conda resolves pip paths from a copy of the env file), so
    # fall back to the src/ tree that ships with the workflow.
    if importlib.util.find_spec("fsmis") is None and (SRC_DIR / "fsmis").is_dir():
        sys.path.insert(0, str(SRC_DIR))
        logger.info("fsmis is not installed; importing it from %s", SRC_DIR)


def one(paths) -> str:
    """The single path of a named input/output that may be a str or a 1-item list."""
    if isinstance(paths, str):
        return str(paths)
    paths = list(paths)
    if len(paths) != 1:
        raise ValueError(f"expected exactly one path, got {paths}")
    return str(paths[0])


def one_or_none(paths) -> str | None:
    """Like one(), but an empty list (an optional input that is absent) gives None."""
    if not isinstance(paths, str) and len(paths) == 0:
        return None
    return one(paths)


def strs(paths) -> list[str]:
    return [str(p) for p in paths]


def parent(path) -> str:
    return str(Path(one(path)).parent)


def by_case(cases, paths) -> dict[str, str]:
    """``{case: path}`` of a per-case input: the rule declares ``paths`` from the same
    case list as its ``params.cases``, in the same order."""
    return dict(zip(strs(cases), strs(paths), strict=True))


def declared_config(params, *sections) -> dict:
    """The config sections a rule declares as params, as the job's config: a job given
    only these cannot depend on a config key whose change Snakemake would not see."""
    return {section: getattr(params, section) for section in sections}
