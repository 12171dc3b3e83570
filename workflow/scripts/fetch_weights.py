"""Job script of rule fetch_weights: see fsmis.stages.data.fetch_weights."""

from fsmis_job import one, start

tracking = start(snakemake)  # noqa: F821 (`snakemake` is injected by Snakemake)

from fsmis.stages import data  # noqa: E402 (imported once errors go to the job log)

data.fetch_weights(
    name=snakemake.wildcards.weights,
    out=one(snakemake.output.weights),
    tracking=tracking,
)
