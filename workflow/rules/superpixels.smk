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


# 3D supervoxel pseudo-labels (the self-supervision signal of the ADNet lineage: ADNet,
# Q-Net, CAT-Net, RPT, GMRD), one job per case; made only for methods that train on them
# (train.pseudo_labels).
rule supervoxels:
    input:
        image=PATHS.image,
    output:
        supervoxels=PATHS.supervoxels,
    log:
        PATHS.log_supervoxels,
    benchmark:
        PATHS.benchmark_supervoxels
    # before the training wave: otherwise the scheduler starts the other methods' training
    # and evaluation first and the lineage's training became the run's serial tail (the
    # demo's supervoxels ran 4.5 min after the first, measured from a clean clone)
    priority: 10
    conda:
        "../../envs/fsmis.yaml"
    # one CPU's worth each, like training: on a fresh checkout every process compiles the
    # numba kernels until one has cached them, so 8 at once on 2 cores compiled 8 times
    # (1.5 min per job instead of about 20 s, measured on the 2-core development machine)
    resources:
        cpu_jobs=1,
    params:
        supervoxels=lookup(dpath="supervoxels", within=config),
    script:
        "../scripts/supervoxels.py"
