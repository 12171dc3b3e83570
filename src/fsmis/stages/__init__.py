"""One function per workflow stage: read inputs, call the library, write outputs
atomically, and log a child run to MLflow.

``workflow/scripts/*.py`` only unpack ``snakemake.*`` and call these, so every stage
can also be run from Python (or a notebook) without Snakemake. ``tracking`` is
``{"experiment", "rule", "wildcards", "config_hash"}``.

Modules, by role:

- :mod:`~fsmis.stages.jobs`: what every stage shares (the MLflow job run, threads,
  reading a declared per-case file, the label groups of a fold);
- :mod:`~fsmis.stages.data`: fetch, inventory, canonical, preprocess, classmap,
  superpixels and splits;
- :mod:`~fsmis.stages.training`: train one model;
- :mod:`~fsmis.stages.evaluation`: evaluate one method on one fold;
- :mod:`~fsmis.stages.reporting`: the report and its qualitative panels.

Nothing is imported here, so a job script loads only the stage module it calls.
"""
