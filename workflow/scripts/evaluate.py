"""Job script of rule evaluate: see fsmis.stages.evaluation.evaluate."""

from fsmis_job import by_case, declared_config, one, start

tracking = start(snakemake)  # noqa: F821 (`snakemake` is injected by Snakemake)

from fsmis.stages import evaluation  # noqa: E402 (imported once errors go to the job log)

source_grid = bool(snakemake.params.source_grid)
evaluation.evaluate(
    method=snakemake.wildcards.method,
    setting=snakemake.wildcards.setting,
    fold=int(snakemake.wildcards.fold),
    config=declared_config(snakemake.params, "seed", "evaluate", "model", "dataset"),
    splits_json=one(snakemake.input.splits),
    classmap_json=one(snakemake.input.classmap),
    images=by_case(snakemake.params.cases, snakemake.input.images),
    labels=by_case(snakemake.params.cases, snakemake.input.labels),
    models=dict(snakemake.params.models) or None,  # {group: model.pt}; None for mask_transfer
    pred_dir=one(snakemake.output.predictions),
    per_case_out=one(snakemake.output.per_case),
    metrics_out=one(snakemake.output.metrics),
    threads=snakemake.threads,
    tracking=tracking,
    source_grid=source_grid,
    cases_tsv=one(snakemake.input.cases) if source_grid else None,
    canonical=by_case(snakemake.params.cases, snakemake.input.canonical) if source_grid else None,
)
