# Superpixel pseudo-labels (the self-supervision signal of SSL-ALPNet), one job per case.


rule superpixels:
    input:
        image="results/data/{ds}/preprocessed/{case}_image.nii.gz",
    output:
        superpixels="results/data/{ds}/superpixels/{case}.nii.gz",
    log:
        "logs/superpixels/{ds}/{case}.log",
    benchmark:
        "results/benchmarks/superpixels/{ds}/{case}.tsv"
    conda:
        "../../envs/fsmis.yaml"
    threads: 2
    params:
        superpixels=lookup(dpath="superpixels", within=config),
        modality=lambda wildcards: CASE_MODALITY[wildcards.case],
    script:
        "../scripts/superpixels.py"
