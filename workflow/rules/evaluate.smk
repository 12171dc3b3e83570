# Evaluation of one method/baseline x setting x seed x fold under the configured
# protocols, with evaluate.supports support scans per fold (no retraining).


rule evaluate:
    input:
        models=lambda wc: list(model_for_evaluation(wc).values()),
        images=per_case(rules.preprocess.output.image),
        labels=per_case(rules.preprocess.output.label),
        classmap=expand(rules.classmap.output.classmap, ds=DATA_ID),
        splits=rules.splits.output.splits,
        # for predictions on the raw files' grids: each case's canonical image (its
        # geometry) and cases.tsv (its source orientation)
        canonical=per_case(rules.canonical.output.image) if SOURCE_GRID else [],
        cases=expand(rules.case_table.output.cases, ds=DATA_ID) if SOURCE_GRID else [],
    output:
        per_case=PATHS.per_case,
        metrics=PATHS.metrics,
        # {case}.nii.gz, {case}_full.nii.gz, source_grid/...: fsmis.paths.prediction
        predictions=directory(PATHS.predictions),
    log:
        PATHS.log_evaluate,
    benchmark:
        PATHS.benchmark_evaluate
    wildcard_constraints:
        method="|".join(TRAINABLE + ["mask_transfer"]),
    conda:
        "../../envs/fsmis.yaml"
    # One torch thread per job by default: several single-thread jobs use a CPU better
    # than multi-thread jobs that oversubscribe it (OpenMP spin-waits). On a large CPU
    # box give more with --set-threads train=8; on a GPU it hardly matters.
    threads: 1
    resources:
        cpu_jobs=1,
        gpu=evaluate_gpu,
    params:
        # what evaluation reads, and so all the job is given (the job script builds its
        # config from these params alone)
        seed=lambda wildcards: int(wildcards.seed),
        evaluate=lookup(dpath="evaluate", within=config),
        model=lookup(dpath="model", within=config),
        dataset=lookup(dpath="dataset", within=config),
        # {group: model.pt}; empty for mask_transfer
        models=model_for_evaluation,
        method_params=method_params,
        source_grid=SOURCE_GRID,
        # the case of each entry of input.images, input.labels and input.canonical
        cases=lambda wildcards: usable_cases(),
    script:
        "../scripts/evaluate.py"
