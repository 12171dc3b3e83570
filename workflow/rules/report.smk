# Tables and figures of the whole experiment, regenerated from the stored metrics.json,
# per_case.tsv, train_log.tsv and prediction files (no retraining). Figures and tables
# also go into `snakemake --report`.
#
# The rule has no wildcard (the paths name the configured experiment), so that
# `snakemake --cores 1 report` asks for it by name: Snakemake refuses a target rule
# with wildcards. With stored results it runs this job only.


rule report:
    input:
        metrics=expand(
            fold_outputs(rules.evaluate.output.metrics, EVALUATED), exp=EXPERIMENT
        ),
        per_case=expand(
            fold_outputs(rules.evaluate.output.per_case, EVALUATED), exp=EXPERIMENT
        ),
        predictions=expand(
            fold_outputs(rules.evaluate.output.predictions, EVALUATED), exp=EXPERIMENT
        ),
        train_logs=expand(
            fold_outputs(rules.train.output.train_log, TRAINED), exp=EXPERIMENT
        ),
        splits=expand(rules.splits.output.splits, exp=EXPERIMENT),
        images=per_case(rules.preprocess.output.image),
        labels=per_case(rules.preprocess.output.label),
        classmap=expand(rules.classmap.output.classmap, ds=DATA_ID),
        # the papers' numbers the tables compare against (package data)
        published=SRC_DIR / "fsmis" / "published_results.csv",
    output:
        tables=report_items(
            f"results/{EXPERIMENT}/report/dice_setting{{setting}}_{{protocol}}.csv",
            caption="../report/dice_table.rst",
            category="Dice tables",
        ),
        markdown=expand(
            f"results/{EXPERIMENT}/report/dice_setting{{setting}}_{{protocol}}.md",
            setting=SETTINGS,
            protocol=PROTOCOLS,
        ),
        paper=report_items(
            f"results/{EXPERIMENT}/report/paper_setting{{setting}}_{{protocol}}.csv",
            caption="../report/paper_table.rst",
            category="Paper tables",
        ),
        paper_text=expand(
            f"results/{EXPERIMENT}/report/paper_setting{{setting}}_{{protocol}}.{{ext}}",
            setting=SETTINGS,
            protocol=PROTOCOLS,
            ext=["md", "tex"],
        ),
        stats=report_items(
            f"results/{EXPERIMENT}/report/stats_setting{{setting}}_{{protocol}}.csv",
            caption="../report/stats.rst",
            category="Spread and paired tests",
        ),
        stats_markdown=expand(
            f"results/{EXPERIMENT}/report/stats_setting{{setting}}_{{protocol}}.md",
            setting=SETTINGS,
            protocol=PROTOCOLS,
        ),
        bars=report_items(
            f"results/{EXPERIMENT}/report/dice_bars_setting{{setting}}_{{protocol}}.png",
            caption="../report/dice_bars.rst",
            category="Dice figures",
        ),
        qualitative_slices=report_items(
            f"results/{EXPERIMENT}/report/qualitative_setting{{setting}}_{{protocol}}.png",
            caption="../report/qualitative.rst",
            category="Qualitative",
        ),
        # the first setting and protocol again, under a name that does not change
        qualitative=f"results/{EXPERIMENT}/report/qualitative.png",
        curves=report(
            f"results/{EXPERIMENT}/report/training_curves.png",
            caption="../report/training_curves.rst",
            category="Training",
        ),
        per_fold=f"results/{EXPERIMENT}/report/dice_per_fold.csv",
        per_case=f"results/{EXPERIMENT}/report/dice_per_case.csv",
    log:
        f"logs/report/{EXPERIMENT}.log",
    conda:
        "../../envs/fsmis.yaml"
    script:
        "../scripts/report.py"
