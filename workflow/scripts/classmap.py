"""Job script of rule classmap: see fsmis.pipeline.classmap."""

from fsmis_job import one, start, strs

tracking = start(snakemake)  # noqa: F821 (`snakemake` is injected by Snakemake)

from fsmis import pipeline  # noqa: E402 (imported once errors go to the job log)

pipeline.classmap(
    # params.cases and input.labels come from the same case list, in the same order.
    label_paths=dict(
        zip(strs(snakemake.params.cases), strs(snakemake.input.labels), strict=True)
    ),
    out=one(snakemake.output.classmap),
    tracking=tracking,
)
