"""Job script of rule supervoxels: see fsmis.stages.data.supervoxels."""

from fsmis_job import one, start

tracking = start(snakemake)  # noqa: F821 (`snakemake` is injected by Snakemake)

from fsmis.stages import data  # noqa: E402 (imported once errors go to the job log)

data.supervoxels(
    case=snakemake.wildcards.case,
    params=dict(snakemake.params.supervoxels),
    image_in=one(snakemake.input.image),
    out=one(snakemake.output.supervoxels),
    tracking=tracking,
)
