"""MLflow tracking for workflow jobs: one parent run per ``snakemake`` call, one child run per job.

Where things go: a SQLite store at ``results/mlflow/mlflow.db`` (relative to the
workflow's working directory; ``MLFLOW_TRACKING_URI`` overrides it), the artifacts in
``results/mlflow/artifacts`` beside it, and one MLflow experiment per workflow
experiment, of the same name. The onstart handler opens the store and the parent run,
whose id reaches the jobs as ``FSMIS_MLFLOW_PARENT_RUN_ID``; every job's run is a child
of it, tagged with the job's stage, rule, wildcards, config hash and git commit.

Modules:

- :mod:`~fsmis.tracking.store`: which store, opening it from many processes at once
  (the SQLite migration lock), the experiment, and the failure policy;
- :mod:`~fsmis.tracking.runs`: the parent run, :func:`job_run` and the handle a job
  logs through, live or spooled;
- :mod:`~fsmis.tracking.values`: params, tags and hashes as MLflow stores them;
- :mod:`~fsmis.tracking.spool`: runs recorded to files inside the workflow and stored
  in one process by :func:`flush_spool`; ``python -m fsmis.tracking store-spool`` stores
  the runs left there when the store could not be reached (an MLflow server that was down);
- :mod:`~fsmis.tracking.query`: runs read back as pandas frames.

Tracking is a side channel: a science job never fails because the store is unreachable
(strict mode aside, see ``store``), and the workflow's calls to a server that does not
answer give up in seconds, leaving the runs in the spool (``store.bounded_http``).
``FSMIS_TRACKING=off`` makes every function here a no-op that writes nothing and does
not import MLflow; importing this package never imports MLflow either (it costs seconds
of CPU).
"""

from fsmis.tracking.query import metric_history, search
from fsmis.tracking.runs import RunLogger, end_parent, job_run, start_parent
from fsmis.tracking.spool import flush_spool
from fsmis.tracking.store import DEFAULT_URI, artifact_location, enabled, init_store, sqlite_path, tracking_uri
from fsmis.tracking.values import MAX_PARAM_VALUE, MAX_TAG_VALUE, flatten

__all__ = [
    "DEFAULT_URI",
    "MAX_PARAM_VALUE",
    "MAX_TAG_VALUE",
    "RunLogger",
    "artifact_location",
    "enabled",
    "end_parent",
    "flatten",
    "flush_spool",
    "init_store",
    "job_run",
    "metric_history",
    "search",
    "sqlite_path",
    "start_parent",
    "tracking_uri",
]
