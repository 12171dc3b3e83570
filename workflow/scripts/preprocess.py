"""Job script of rule preprocess: see fsmis.stages.data.preprocess."""

from fsmis_job import one, start

tracking = start(snakemake)  # noqa: F821 (`snakemake` is injected by Snakemake)

from fsmis.stages import data  # noqa: E402 (imported once errors go to the job log)

data.preprocess(
    case=snakemake.wildcards.case,
    modality=snakemake.params.modality,
    params=dict(snakemake.params.preprocess),
    image_in=one(snakemake.input.image),
    label_in=one(snakemake.input.label),
    image_out=one(snakemake.output.image),
    label_out=one(snakemake.output.label),
    tracking=tracking,
)
