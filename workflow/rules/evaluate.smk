# Evaluation of one method/baseline x setting x fold under the configured protocols.


rule evaluate:
    input:
        models=lambda wc: list(model_for_evaluation(wc).values()),
        images=per_case(rules.preprocess.output.image),
        labels=per_case(rules.preprocess.output.label),
        classmap=expand(rules.classmap.output.classmap, ds=DATASET),
        splits=rules.splits.output.splits,
    output:
        per_case="results/{exp}/{method}/setting{setting}/fold{fold}/per_case.tsv",
        metrics="results/{exp}/{method}/setting{setting}/fold{fold}/metrics.json",
        predictions=directory(
            "results/{exp}/{method}/setting{setting}/fold{fold}/predictions"
        ),
    log:
        "logs/evaluate/{exp}/{method}/setting{setting}/fold{fold}.log",
    benchmark:
        "results/benchmarks/evaluate/{exp}/{method}/setting{setting}/fold{fold}.tsv"
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
        seed=lookup(dpath="seed", within=config),
        evaluate=lookup(dpath="evaluate", within=config),
        # {group: model.pt}; empty for mask_transfer
        models=model_for_evaluation,
        method_params=method_params,
    script:
        "../scripts/evaluate.py"
