"""Job script of rule train: see fsmis.stages.training.train."""

from fsmis_job import by_case, declared_config, one, start

tracking = start(snakemake)  # noqa: F821 (`snakemake` is injected by Snakemake)

from fsmis.stages import training  # noqa: E402 (imported once errors go to the job log)

training.train(
    method=snakemake.wildcards.method,
    setting=snakemake.wildcards.setting,
    fold=int(snakemake.wildcards.fold),
    group=snakemake.wildcards.group,
    config=declared_config(
        snakemake.params, "seed", "model", "train", "dataset", "preprocess", "superpixels", "supervoxels"
    ),
    training_data=dict(snakemake.params.training_data),
    method_params=dict(snakemake.params.method_params),
    splits_json=one(snakemake.input.splits),
    classmap_json=one(snakemake.input.classmap),
    images=by_case(snakemake.params.cases, snakemake.input.images),
    pseudo_labels=by_case(snakemake.params.cases, snakemake.input.pseudo_labels),
    model_out=one(snakemake.output.model),
    log_out=one(snakemake.output.train_log),
    threads=snakemake.threads,
    tracking=tracking,
)
