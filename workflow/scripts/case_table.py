"""Job script of rule case_table: see fsmis.stages.data.case_table."""

from fsmis_job import one, start, strs

start(snakemake)  # noqa: F821 (`snakemake` is injected by Snakemake)

from fsmis.stages import data  # noqa: E402 (imported once errors go to the job log)

data.case_table(rows=strs(snakemake.input.rows), out=one(snakemake.output.cases))
