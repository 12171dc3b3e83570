"""Job script of rule superpixels: see fsmis.pipeline.superpixels."""

from fsmis_job import one, start

tracking = start(snakemake)  # noqa: F821 (`snakemake` is injected by Snakemake)

from fsmis import pipeline  # noqa: E402 (imported once errors go to the job log)

pipeline.superpixels(
    case=snakemake.wildcards.case,
    modality=snakemake.params.modality,
    params=dict(snakemake.params.superpixels),
    image_in=one(snakemake.input.image),
    out=one(snakemake.output.superpixels),
    threads=snakemake.threads,
    tracking=tracking,
)
