# Fetch stage: bring a dataset's raw files into resources/{source}/ (the dataset's name).
# Which step does it follows the source kind of the dataset's adapter (SOURCE_KIND,
# raw_inputs): "generated" datasets (the phantom) are written in-process (no network);
# "zenodo" ones (CHAOS, AbdomenCT-1K) are downloaded (verified) and unpacked (no member
# may escape its folder); "manual" (Synapse, Card-MRI) and "local" ones are placed by
# hand under dataset.root (checked before any job runs).


# The step of source kind "generated" (the adapter's generate()); named after the one
# such dataset so far, which keeps its log and benchmark paths.
rule generate_phantom:
    output:
        images=expand(PATHS.raw_image, source=DATASET, case=CASES),
        labels=expand(PATHS.raw_label, source=DATASET, case=CASES),
    log:
        PATHS.fill("log_generate_phantom", source=DATASET),
    benchmark:
        PATHS.fill("benchmark_generate_phantom", source=DATASET)
    conda:
        "../../envs/fsmis.yaml"
    params:
        dataset=lookup(dpath="dataset", within=config),
        cases=CASES,
        # the generator's code is the data: editing it regenerates them
        generator=(source_digest(DATASET_FACTS["source"]["generator"]) if SOURCE_KIND == "generated" else None),
    script:
        "../scripts/generate_phantom.py"


# Pretrained backbone weights (torchvision files, verified by the sha256 prefix in
# their names): model.pretrained: resources/weights/<name>.pth, with <name> a key of
# fsmis.data.weights.KNOWN (e.g. deeplabv3_resnet101_coco).
rule fetch_weights:
    output:
        weights=PATHS.weights,
    log:
        PATHS.log_fetch_weights,
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
        archive=PATHS.download,
    log:
        PATHS.log_download,
    conda:
        "../../envs/fsmis.yaml"
    params:
        record=lambda wildcards: DOWNLOADS[wildcards.file],
    script:
        "../scripts/download.py"


rule unpack:
    input:
        archive=lambda wildcards: PATHS.fill("download", source=wildcards.source, file=UNPACKED[wildcards.archive]),
    output:
        folder=directory(PATHS.unpacked),
    log:
        PATHS.log_unpack,
    conda:
        "../../envs/fsmis.yaml"
    script:
        "../scripts/unpack.py"
