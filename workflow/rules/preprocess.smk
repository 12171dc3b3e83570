# Canonical conversion (validated NIfTI pairs + case table), per-case preprocessing
# (resampling, intensity handling per modality) and the per-class slice index.


# Which requested cases are usable, where that is only known after unpacking
# (AbdomenCT-1K's full release: images without a mask are listed and skipped). Only in
# the DAG when fsmis.data.adapters.cases_known_after_unpack says so; everything after
# the canonical step then takes its case list from this table (usable_cases()), and a
# dry-run shows the jobs after it once it has run.
if DYNAMIC_CASES:

    checkpoint inventory:
        input:
            raw=raw_inputs,
        output:
            inventory=PATHS.inventory,
        log:
            PATHS.log_inventory,
        conda:
            "../../envs/fsmis.yaml"
        params:
            dataset=lookup(dpath="dataset", within=config),
            cases=CASES,
            raw_dir=RAW_DIR,
            # the usable cases must still fill the folds (fsmis.data.splits.infeasible)
            n_folds=lookup(dpath="n_folds", within=config),
        script:
            "../scripts/inventory.py"


# One job per case: conversions run in parallel and a rerun redoes only the case asked.
rule canonical:
    input:
        raw=raw_inputs,
    output:
        image=PATHS.canonical_image,
        label=PATHS.canonical_label,
        row=PATHS.canonical_row,
    log:
        PATHS.log_canonical,
    conda:
        "../../envs/fsmis.yaml"
    params:
        dataset=lookup(dpath="dataset", within=config),
        raw_dir=RAW_DIR,
    script:
        "../scripts/canonical.py"


rule case_table:
    input:
        rows=per_case(rules.canonical.output.row),
    output:
        cases=PATHS.cases,
    log:
        PATHS.log_case_table,
    conda:
        "../../envs/fsmis.yaml"
    script:
        "../scripts/case_table.py"


rule preprocess:
    input:
        image=PATHS.canonical_image,
        label=PATHS.canonical_label,
    output:
        image=PATHS.image,
        label=PATHS.label,
    log:
        PATHS.log_preprocess,
    benchmark:
        PATHS.benchmark_preprocess
    conda:
        "../../envs/fsmis.yaml"
    params:
        preprocess=lookup(dpath="preprocess", within=config),
        modality=lambda wildcards: CASE_MODALITY[wildcards.case],
    script:
        "../scripts/preprocess.py"


rule classmap:
    input:
        labels=per_case(PATHS.label),
    output:
        classmap=PATHS.classmap,
    log:
        PATHS.log_classmap,
    conda:
        "../../envs/fsmis.yaml"
    params:
        cases=lambda wildcards: usable_cases(),
    script:
        "../scripts/classmap.py"
