"""Job script of checkpoint inventory: see fsmis.stages.data.inventory."""

from fsmis_job import one, start, strs

tracking = start(snakemake)  # noqa: F821 (`snakemake` is injected by Snakemake)

from fsmis.stages import data  # noqa: E402 (imported once errors go to the job log)

data.inventory(
    dataset=dict(snakemake.params.dataset),
    raw_dir=str(snakemake.params.raw_dir),
    cases=strs(snakemake.params.cases),
    n_folds=int(snakemake.params.n_folds),
    out=one(snakemake.output.inventory),
    tracking=tracking,
)
