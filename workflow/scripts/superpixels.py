"""Job script of rule superpixels: see fsmis.stages.data.superpixels."""

from fsmis_job import one, start

tracking = start(snakemake)  # noqa: F821 (`snakemake` is injected by Snakemake)

from fsmis.stages import data  # noqa: E402 (imported once errors go to the job log)

data.superpixels(
    case=snakemake.wildcards.case,
    modality=snakemake.params.modality,
    params=dict(snakemake.params.superpixels),
    image_in=one(snakemake.input.image),
    out=one(snakemake.output.superpixels),
    threads=snakemake.threads,
    tracking=tracking,
)
