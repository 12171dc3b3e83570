"""Job script of rule canonical (one case): see fsmis.stages.data.canonical."""

from fsmis_job import one, parent, start

tracking = start(snakemake)  # noqa: F821 (`snakemake` is injected by Snakemake)

from fsmis.stages import data  # noqa: E402 (imported once errors go to the job log)

data.canonical(
    dataset=dict(snakemake.params.dataset),
    raw_dir=str(snakemake.params.raw_dir),
    out_dir=parent(snakemake.output.image),
    cases=[str(snakemake.wildcards.case)],
    cases_tsv=one(snakemake.output.row),
    tracking=tracking,
)
