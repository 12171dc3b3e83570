# Tables and figures of the whole experiment, regenerated from the stored metrics.json
# files (no retraining). Figures and tables also go into `snakemake --report`.


rule report:
    input:
        metrics=fold_outputs(rules.evaluate.output.metrics, EVALUATED),
        predictions=fold_outputs(rules.evaluate.output.predictions, EVALUATED),
        train_logs=fold_outputs(rules.train.output.train_log, TRAINED),
        images=expand(rules.preprocess.output.image, ds=DATASET, case=CASES),
        labels=expand(rules.preprocess.output.label, ds=DATASET, case=CASES),
        classmap=expand(rules.classmap.output.classmap, ds=DATASET),
    output:
        tables=report_items(
            "results/{exp}/report/dice_setting{setting}_{protocol}.csv",
            caption="../report/dice_table.rst",
            category="Dice tables",
        ),
        markdown=expand(
            "results/{{exp}}/report/dice_setting{setting}_{protocol}.md",
            setting=SETTINGS,
            protocol=PROTOCOLS,
        ),
        bars=report_items(
            "results/{exp}/report/dice_bars_setting{setting}_{protocol}.png",
            caption="../report/dice_bars.rst",
            category="Dice figures",
        ),
        qualitative=report(
            "results/{exp}/report/qualitative.png",
            caption="../report/qualitative.rst",
            category="Qualitative",
        ),
        curves=report(
            "results/{exp}/report/training_curves.png",
            caption="../report/training_curves.rst",
            category="Training",
        ),
    log:
        "logs/report/{exp}.log",
    conda:
        "../../envs/fsmis.yaml"
    script:
        "../scripts/report.py"
