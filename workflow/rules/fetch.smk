# Fetch stage: bring a dataset's raw files into resources/{ds}/. The phantom is
# generated in-process (no network); downloading adapters join here later.


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
