"""Job script of rule splits: see fsmis.stages.data.splits."""

from fsmis_job import one, start

tracking = start(snakemake)  # noqa: F821 (`snakemake` is injected by Snakemake)

from fsmis.stages import data  # noqa: E402 (imported once errors go to the job log)

data.splits(
    cases_tsv=one(snakemake.input.cases),
    n_folds=int(snakemake.params.n_folds),
    lineage=snakemake.params.lineage,
    supp_idx=int(snakemake.params.supp_idx),
    out=one(snakemake.output.splits),
    tracking=tracking,
)
