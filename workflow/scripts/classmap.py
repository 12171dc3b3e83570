"""Job script of rule classmap: see fsmis.stages.data.classmap."""

from fsmis_job import by_case, one, start

tracking = start(snakemake)  # noqa: F821 (`snakemake` is injected by Snakemake)

from fsmis.stages import data  # noqa: E402 (imported once errors go to the job log)

data.classmap(
    label_paths=by_case(snakemake.params.cases, snakemake.input.labels),
    out=one(snakemake.output.classmap),
    tracking=tracking,
)
