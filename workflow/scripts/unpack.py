"""Job script of rule unpack: see fsmis.pipeline.unpack."""

from fsmis_job import one, start

tracking = start(snakemake)  # noqa: F821 (`snakemake` is injected by Snakemake)

from fsmis import pipeline  # noqa: E402 (imported once errors go to the job log)

pipeline.unpack(
    archive=one(snakemake.input.archive),
    out_dir=one(snakemake.output.folder),
    tracking=tracking,
)
