"""Names of the environment variables fsmis and its workflow read, in one place.

Standard library only and without side effects: the Snakefile imports it at parse time,
when neither torch nor MLflow may be loaded. Readers refer to these constants, never
to the literal names, so a rename happens here alone.

FSMIS_TRACKING: ``off`` (or 0/false/no) turns MLflow tracking into no-ops; default on.
FSMIS_TRACKING_STRICT: ``1`` makes every tracking error raise instead of warning (tests).
MLFLOW_TRACKING_URI: MLflow's own variable; the store when no URI is passed.
FSMIS_MLFLOW_PARENT_RUN_ID: the invocation's parent run, set by the onstart handler.
FSMIS_MLFLOW_SPOOL: folder where jobs record their runs, set by the onstart handler.
FSMIS_MLFLOW_LIVE: ``1`` makes jobs log to MLflow directly even inside the workflow.
FSMIS_CONFIG_HASH: the invocation's config hash, set by the onstart handler for jobs.
FSMIS_ZENODO_API: Zenodo API base URL (tests point it at a fake server).
FSMIS_WEIGHTS_URL: folder URL to download pretrained weights from instead of the table's.
FSMIS_EXTRA_METHODS: ``name=module:Class[,...]``, methods added to the model registry.
FSMIS_CONFIG_DETAIL: ``1`` adds jsonschema's own message to each config error line.
FSMIS_DEVICES: the device ids GPU jobs share (overrides CUDA_VISIBLE_DEVICES and
    nvidia-smi; empty means CPU only), fsmis.devices.
FSMIS_LEASE_DIR: folder of the device lock files (default ``/tmp/fsmis-leases-<uid>``).
FSMIS_DEVICE_WAIT: seconds a GPU job waits for a free device (default 600).
"""

FSMIS_TRACKING = "FSMIS_TRACKING"
FSMIS_TRACKING_STRICT = "FSMIS_TRACKING_STRICT"
MLFLOW_TRACKING_URI = "MLFLOW_TRACKING_URI"
FSMIS_MLFLOW_PARENT_RUN_ID = "FSMIS_MLFLOW_PARENT_RUN_ID"
FSMIS_MLFLOW_SPOOL = "FSMIS_MLFLOW_SPOOL"
FSMIS_MLFLOW_LIVE = "FSMIS_MLFLOW_LIVE"
FSMIS_CONFIG_HASH = "FSMIS_CONFIG_HASH"
FSMIS_ZENODO_API = "FSMIS_ZENODO_API"
FSMIS_WEIGHTS_URL = "FSMIS_WEIGHTS_URL"
FSMIS_EXTRA_METHODS = "FSMIS_EXTRA_METHODS"
FSMIS_CONFIG_DETAIL = "FSMIS_CONFIG_DETAIL"
FSMIS_DEVICES = "FSMIS_DEVICES"
FSMIS_LEASE_DIR = "FSMIS_LEASE_DIR"
FSMIS_DEVICE_WAIT = "FSMIS_DEVICE_WAIT"
