# Cross-validation folds of the experiment (test cases, support case, training cases).


rule splits:
    input:
        cases=expand(rules.case_table.output.cases, ds=DATA_ID),
    output:
        splits=PATHS.splits,
    log:
        PATHS.log_splits,
    conda:
        "../../envs/fsmis.yaml"
    params:
        n_folds=lookup(dpath="n_folds", within=config),
        lineage=lookup(dpath="splits/lineage", within=config),
        supp_idx=lookup(dpath="splits/supp_idx", within=config),
    script:
        "../scripts/splits.py"
