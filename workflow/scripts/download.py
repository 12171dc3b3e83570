"""Job script of rule download: see fsmis.pipeline.download."""

from fsmis_job import one, start

tracking = start(snakemake)  # noqa: F821 (`snakemake` is injected by Snakemake)

from fsmis import pipeline  # noqa: E402 (imported once errors go to the job log)

pipeline.download(
    record=str(snakemake.params.record),
    name=snakemake.wildcards.file,
    out=one(snakemake.output.archive),
    tracking=tracking,
)
