# fsmis: few-shot medical image segmentation benchmark.
#
#   snakemake --cores N                     the demo experiment (config.yaml): CPU, no network
#   snakemake --cores N --configfile my.yaml --replace-workflow-config   another experiment
#   snakemake --cores N --workflow-profile workflow/profiles/gpu     one job per GPU
#   snakemake --workflow-profile workflow/profiles/slurm             a SLURM cluster
#   snakemake results/demo/panet/setting1/seed1234/fold0/metrics.json         one fold only
#
# Results tree (docs/design.md, 'Stages and the files between them'; every template in
# src/fsmis/paths.py, which the rules and the library share):
#   resources/phantom/raw/{case}_{image,label}.nii.gz            fetch
#   results/data/{ds}/canonical/..., cases.tsv                   canonical
#   results/data/{ds}/preprocessed/..., classmap.json            preprocess, classmap
#   results/data/{ds}/superpixels/{case}.nii.gz                  superpixels
#   results/{exp}/splits.json                                    splits
#   results/{exp}/{method}/setting{setting}/seed{seed}/fold{fold}/          train, evaluate
#   results/{exp}/report/                                        report
#   results/mlflow/                                              MLflow store
#   logs/{rule}/..., results/benchmarks/{rule}/...

import os
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


# The config's schema check (fsmis.config, standard library + jsonschema): the src/
# tree beside this file when the package is not installed (as fsmis_module in common.smk).
try:
    import fsmis.config as fsmis_config
except ImportError:
    sys.path.insert(0, os.path.join(workflow.basedir, "src"))
    import fsmis.config as fsmis_config

# Fills every missing key with the paper default from the schema, as
# snakemake.utils.validate would, but stops with one line per problem (key path, value,
# what is allowed; FSMIS_CONFIG_DETAIL=1 adds jsonschema's message). Raised here, not in
# a function, so Snakemake adds a single location line. Then common.smk checks what the
# schema cannot express.
if not workflow.modifier.skip_validation:
    try:
        fsmis_config.validate(config, os.path.join(workflow.basedir, "workflow/schemas/config.schema.yaml"))
    except fsmis_config.ConfigError as err:
        raise WorkflowError(str(err)) from None


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/fetch.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/superpixels.smk"
include: "workflow/rules/splits.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


localrules:
    all,
    splits,
    case_table,


# One MLflow parent run per invocation. Snakemake calls these handlers in the main
# process only, and not for dry-runs or when there is nothing to do. Jobs find the run
# (and the config hash) through the environment, never through params/input, which
# would mark every job outdated on the next invocation. `log` is the list of this
# invocation's Snakemake log files.
onstart:
    tracking = fsmis_tracking()
    tracking.init_store(experiment=EXPERIMENT)
    # Jobs record their runs here; the handlers below store them (fsmis.tracking).
    # Runs left by an interrupted invocation are stored first.
    tracking.flush_spool(MLFLOW_SPOOL)
    os.environ[ENVVARS.FSMIS_MLFLOW_SPOOL] = str(MLFLOW_SPOOL)
    run_id = tracking.start_parent(experiment=EXPERIMENT, tags=parent_run_tags())
    # None when tracking is off (FSMIS_TRACKING=off) or the store is unreachable.
    if run_id:
        os.environ[ENVVARS.FSMIS_MLFLOW_PARENT_RUN_ID] = run_id
    else:
        os.environ.pop(ENVVARS.FSMIS_MLFLOW_PARENT_RUN_ID, None)
    os.environ[ENVVARS.FSMIS_CONFIG_HASH] = CONFIG_HASH


onsuccess:
    report_skipped_cases()
    # The parent's end first: a store that fails records it in the spool too, and the
    # flush then names everything that waits there in one line.
    if os.environ.get(ENVVARS.FSMIS_MLFLOW_PARENT_RUN_ID):
        fsmis_tracking().end_parent(
            os.environ[ENVVARS.FSMIS_MLFLOW_PARENT_RUN_ID],
            status="FINISHED",
            log_file=first_or_none(log),
            spool=MLFLOW_SPOOL,
        )
    fsmis_tracking().flush_spool(MLFLOW_SPOOL)
    # last: where the results are and what they say
    print_run_summary()


onerror:
    if os.environ.get(ENVVARS.FSMIS_MLFLOW_PARENT_RUN_ID):
        fsmis_tracking().end_parent(
            os.environ[ENVVARS.FSMIS_MLFLOW_PARENT_RUN_ID],
            status="FAILED",
            log_file=first_or_none(log),
            spool=MLFLOW_SPOOL,
        )
    fsmis_tracking().flush_spool(MLFLOW_SPOOL)


rule all:
    default_target: True
    input:
        expand(rules.report.output, exp=EXPERIMENT),
