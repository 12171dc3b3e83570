"""Job script of rule report: see fsmis.pipeline.report."""

from fsmis_job import one, parent, start, strs

tracking = start(snakemake)  # noqa: F821 (`snakemake` is injected by Snakemake)

from fsmis import pipeline  # noqa: E402 (imported once errors go to the job log)

pipeline.report(
    metrics_paths=strs(snakemake.input.metrics),
    train_logs=strs(snakemake.input.train_logs),
    config=dict(snakemake.config),
    # results/data/{ds}: the folder of classmap.json and preprocessed/
    data_dir=parent(snakemake.input.classmap),
    out_dir=parent(snakemake.output.qualitative),
    tracking=tracking,
    splits_json=one(snakemake.input.splits),
    published_csv=one(snakemake.input.published),
)
