# Training, one job per method x setting x seed x fold x label group (the group is "all" except
# in setting 2, which trains one model per label group: fsmis.settings). The `untrained` baseline runs the same
# rule with 0 steps. The library writes resumable `checkpoint.pt` files beside model.pt;
# they are deliberately not declared, so Snakemake never deletes them when it removes the
# outputs of a failed or incomplete job, and a rerun resumes from the last checkpoint.


rule train:
    input:
        images=per_case(rules.preprocess.output.image),
        labels=per_case(rules.preprocess.output.label),
        pseudo_labels=pseudo_labels,
        classmap=expand(rules.classmap.output.classmap, ds=DATA_ID),
        splits=rules.splits.output.splits,
        pretrained=pretrained_weights,
    output:
        model=PATHS.model,
        train_log=PATHS.train_log,
    log:
        PATHS.log_train,
    benchmark:
        PATHS.benchmark_train
    wildcard_constraints:
        method="|".join(TRAINABLE),
    conda:
        "../../envs/fsmis.yaml"
    # One torch thread per job by default: several single-thread jobs use a CPU better
    # than multi-thread jobs that oversubscribe it (OpenMP spin-waits). On a large CPU
    # box give more with --set-threads train=8; on a GPU it hardly matters.
    threads: 1
    resources:
        cpu_jobs=1,
        # A scheduling token: local runs honour it only with a global limit
        # (workflow/profiles/gpu); the SLURM profile turns it into --gpus.
        gpu=1,
        mem_mb=train_mem_mb,
    params:
        # What training reads, and so all the job is given (the job script builds its
        # config from these params alone); a change reruns the job.
        # the seed of this model: the {seed} wildcard (config `seeds`), so adding a seed
        # trains only the new one
        seed=lambda wildcards: int(wildcards.seed),
        model=lookup(dpath="model", within=config),
        train=lookup(dpath="train", within=config),
        method_params=method_params,
        # read for the dataset's facts and recorded in model.pt's config hash
        dataset=lookup(dpath="dataset", within=config),
        preprocess=lookup(dpath="preprocess", within=config),
        superpixels=lookup(dpath="superpixels", within=config),
        supervoxels=lookup(dpath="supervoxels", within=config),
        # pseudo-labels and intensity normalisation of the method's lineage (train.pseudo_labels,
        # train.normalisation)
        training_data=training_data,
        # the case of each entry of input.images and input.pseudo_labels
        cases=lambda wildcards: usable_cases(),
    script:
        "../scripts/train.py"
