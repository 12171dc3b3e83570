"""Job script of rule canonical: see fsmis.pipeline.canonical."""

from fsmis_job import one, parent, start, strs

tracking = start(snakemake)  # noqa: F821 (`snakemake` is injected by Snakemake)

from fsmis import pipeline  # noqa: E402 (imported once errors go to the job log)

pipeline.canonical(
    dataset=dict(snakemake.params.dataset),
    raw_dir=str(snakemake.params.raw_dir),
    out_dir=parent(snakemake.output.images[0]),
    cases=strs(snakemake.params.cases),
    cases_tsv=one(snakemake.output.cases),
    tracking=tracking,
)
