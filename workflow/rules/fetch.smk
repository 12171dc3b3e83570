# Fetch stage: bring a dataset's raw files into resources/{source}/ (the dataset's name). The phantom is
# generated in-process (no network); CHAOS and AbdomenCT-1K are downloaded from Zenodo
# (verified) and unpacked (no member may escape its folder); Synapse and Card-MRI are
# placed by hand under dataset.root (checked before any job runs).


rule generate_phantom:
    output:
        images=expand("resources/phantom/raw/{case}_image.nii.gz", case=CASES),
        labels=expand("resources/phantom/raw/{case}_label.nii.gz", case=CASES),
    log:
        "logs/generate_phantom/phantom.log",
    benchmark:
        "results/benchmarks/generate_phantom/phantom.tsv"
    conda:
        "../../envs/fsmis.yaml"
    params:
        dataset=lookup(dpath="dataset", within=config),
        cases=CASES,
        generator=source_digest("fsmis/data/phantom.py"),
    script:
        "../scripts/generate_phantom.py"


# Pretrained backbone weights (torchvision files, verified by the sha256 prefix in
# their names): model.pretrained: resources/weights/<name>.pth, with <name> a key of
# fsmis.data.weights.KNOWN (e.g. deeplabv3_resnet101_coco).
rule fetch_weights:
    output:
        weights="resources/weights/{weights}.pth",
    log:
        "logs/fetch_weights/{weights}.log",
    wildcard_constraints:
        weights="[A-Za-z0-9_]+",
    conda:
        "../../envs/fsmis.yaml"
    script:
        "../scripts/fetch_weights.py"


# One job per Zenodo file. A partial `.part` beside the output is deliberately not
# declared: Snakemake leaves it after a failure and the rerun resumes it.
rule download:
    output:
        archive="resources/{source}/downloads/{file}",
    log:
        "logs/download/{source}/{file}.log",
    params:
        record=lambda wildcards: DOWNLOADS[wildcards.file],
    conda:
        "../../envs/fsmis.yaml"
    script:
        "../scripts/download.py"


rule unpack:
    input:
        archive=lambda wildcards: f"resources/{wildcards.source}/downloads/{UNPACKED[wildcards.archive]}",
    output:
        folder=directory("resources/{source}/raw/{archive}"),
    log:
        "logs/unpack/{source}/{archive}.log",
    conda:
        "../../envs/fsmis.yaml"
    script:
        "../scripts/unpack.py"
