"""Job script of rule report: see fsmis.stages.reporting.report."""

from fsmis_job import by_case, declared_config, one, parent, start, strs

tracking = start(snakemake)  # noqa: F821 (`snakemake` is injected by Snakemake)

from fsmis.stages import reporting  # noqa: E402 (imported once errors go to the job log)

reporting.report(
    # metrics, per_case and predictions: one entry per evaluation, in one order
    metrics_paths=strs(snakemake.input.metrics),
    per_case_paths=strs(snakemake.input.per_case),
    prediction_dirs=strs(snakemake.input.predictions),
    train_logs=strs(snakemake.input.train_logs),
    config=declared_config(
        snakemake.params,
        "dataset",
        "evaluate",
        "settings",
        "methods",
        "baselines",
        "report",
        "n_folds",
        "splits",
        "seeds",
    ),
    images=by_case(snakemake.params.cases, snakemake.input.images),
    labels=by_case(snakemake.params.cases, snakemake.input.labels),
    splits_json=one(snakemake.input.splits),
    # the report folder: every output is a file in it (fsmis.paths report_*)
    out_dir=parent(snakemake.output.qualitative),
    tracking=tracking,
    published_csv=one(snakemake.input.published),
)
