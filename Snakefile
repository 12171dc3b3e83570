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

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


# Fills every missing key with the paper default from the schema, then
# common.smk checks what the schema cannot express.
validate(config, "workflow/schemas/config.schema.yaml")


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
    check_hand_placed_data()
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
    fsmis_tracking().flush_spool(MLFLOW_SPOOL)
    if os.environ.get(ENVVARS.FSMIS_MLFLOW_PARENT_RUN_ID):
        fsmis_tracking().end_parent(
            os.environ[ENVVARS.FSMIS_MLFLOW_PARENT_RUN_ID],
            status="FINISHED",
            log_file=first_or_none(log),
        )


onerror:
    fsmis_tracking().flush_spool(MLFLOW_SPOOL)
    if os.environ.get(ENVVARS.FSMIS_MLFLOW_PARENT_RUN_ID):
        fsmis_tracking().end_parent(
            os.environ[ENVVARS.FSMIS_MLFLOW_PARENT_RUN_ID], status="FAILED", log_file=first_or_none(log)
        )


rule all:
    default_target: True
    input:
        expand(rules.report.output, exp=EXPERIMENT),
