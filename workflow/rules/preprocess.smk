# Canonical conversion (validated NIfTI pairs + case table), per-case preprocessing
# (resampling, intensity handling per modality) and the per-class slice index.


rule canonical:
    input:
        raw=raw_inputs,
    output:
        images=expand("results/data/{{ds}}/canonical/{case}_image.nii.gz", case=CASES),
        labels=expand("results/data/{{ds}}/canonical/{case}_label.nii.gz", case=CASES),
        cases="results/data/{ds}/cases.tsv",
    log:
        "logs/canonical/{ds}.log",
    conda:
        "../../envs/fsmis.yaml"
    params:
        dataset=lookup(dpath="dataset", within=config),
        cases=CASES,
        raw_dir=RAW_DIR,
    script:
        "../scripts/canonical.py"


rule preprocess:
    input:
        image="results/data/{ds}/canonical/{case}_image.nii.gz",
        label="results/data/{ds}/canonical/{case}_label.nii.gz",
    output:
        image="results/data/{ds}/preprocessed/{case}_image.nii.gz",
        label="results/data/{ds}/preprocessed/{case}_label.nii.gz",
    log:
        "logs/preprocess/{ds}/{case}.log",
    benchmark:
        "results/benchmarks/preprocess/{ds}/{case}.tsv"
    conda:
        "../../envs/fsmis.yaml"
    params:
        preprocess=lookup(dpath="preprocess", within=config),
        modality=MODALITY,
    script:
        "../scripts/preprocess.py"


rule classmap:
    input:
        labels=expand(
            "results/data/{{ds}}/preprocessed/{case}_label.nii.gz", case=CASES
        ),
    output:
        classmap="results/data/{ds}/classmap.json",
    log:
        "logs/classmap/{ds}.log",
    conda:
        "../../envs/fsmis.yaml"
    params:
        cases=CASES,
    script:
        "../scripts/classmap.py"
