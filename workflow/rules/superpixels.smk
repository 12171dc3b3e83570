# Superpixel pseudo-labels (the self-supervision signal of SSL-ALPNet), one job per case.


rule superpixels:
    input:
        image=PATHS.image,
    output:
        superpixels=PATHS.superpixels,
    log:
        PATHS.log_superpixels,
    benchmark:
        PATHS.benchmark_superpixels
    conda:
        "../../envs/fsmis.yaml"
    threads: 2
    params:
        superpixels=lookup(dpath="superpixels", within=config),
        modality=lambda wildcards: CASE_MODALITY[wildcards.case],
    script:
        "../scripts/superpixels.py"
