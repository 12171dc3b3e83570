"""Job script of rule generate_phantom, the fetch step of every dataset of source kind
"generated": see fsmis.stages.data.generate."""

from fsmis_job import parent, start, strs

tracking = start(snakemake)  # noqa: F821 (`snakemake` is injected by Snakemake)

from fsmis.stages import data  # noqa: E402 (imported once errors go to the job log)

data.generate(
    dataset=dict(snakemake.params.dataset),
    out_dir=parent(snakemake.output.images[0]),
    cases=strs(snakemake.params.cases),
    tracking=tracking,
)
