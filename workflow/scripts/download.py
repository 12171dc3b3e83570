"""Job script of rule download: see fsmis.stages.data.download."""

from fsmis_job import one, start

tracking = start(snakemake)  # noqa: F821 (`snakemake` is injected by Snakemake)

from fsmis.stages import data  # noqa: E402 (imported once errors go to the job log)

data.download(
    record=str(snakemake.params.record),
    name=snakemake.wildcards.file,
    out=one(snakemake.output.archive),
    tracking=tracking,
)
