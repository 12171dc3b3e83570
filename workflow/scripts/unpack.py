"""Job script of rule unpack: see fsmis.stages.data.unpack."""

from fsmis_job import one, start

tracking = start(snakemake)  # noqa: F821 (`snakemake` is injected by Snakemake)

from fsmis.stages import data  # noqa: E402 (imported once errors go to the job log)

data.unpack(
    archive=one(snakemake.input.archive),
    out_dir=one(snakemake.output.folder),
    tracking=tracking,
)
