# Tables and figures of the whole experiment, regenerated from the stored metrics.json,
# per_case.tsv, train_log.tsv and prediction files (no retraining). Figures and tables
# also go into `snakemake --report`.
#
# The rule has no wildcard (the paths name the configured experiment), so that
# `snakemake --cores 1 report` asks for it by name: Snakemake refuses a target rule
# with wildcards. With stored results it runs this job only.


rule report:
    input:
        # metrics, per_case and predictions: one entry per evaluation, in one order
        metrics=expand(fold_outputs(rules.evaluate.output.metrics, EVALUATED), exp=EXPERIMENT),
        per_case=expand(fold_outputs(rules.evaluate.output.per_case, EVALUATED), exp=EXPERIMENT),
        predictions=expand(fold_outputs(rules.evaluate.output.predictions, EVALUATED), exp=EXPERIMENT),
        train_logs=expand(fold_outputs(rules.train.output.train_log, TRAINED), exp=EXPERIMENT),
        splits=expand(rules.splits.output.splits, exp=EXPERIMENT),
        images=per_case(rules.preprocess.output.image),
        labels=per_case(rules.preprocess.output.label),
        # the papers' numbers the tables compare against (package data)
        published=SRC_DIR / "fsmis" / "published_results.csv",
    output:
        tables=report_items("dice", "csv", caption="../report/dice_table.rst", category="Dice tables"),
        markdown=report_slices("dice", "md", "tex"),
        # IoU, HD95 (mm) and NSD in the Dice table's layout, from the per-case rows
        iou=report_items("iou", "csv", caption="../report/metric_table.rst", category="IoU, HD95, NSD tables"),
        hd95=report_items("hd95", "csv", caption="../report/metric_table.rst", category="IoU, HD95, NSD tables"),
        nsd=report_items("nsd", "csv", caption="../report/metric_table.rst", category="IoU, HD95, NSD tables"),
        metric_text=report_slices("iou", "md", "tex")
        + report_slices("hd95", "md", "tex")
        + report_slices("nsd", "md", "tex"),
        paper=report_items("paper", "csv", caption="../report/paper_table.rst", category="Paper tables"),
        paper_text=report_slices("paper", "md", "tex"),
        stats=report_items(
            "stats",
            "csv",
            caption="../report/stats.rst",
            category="Spread and paired tests",
        ),
        stats_markdown=report_slices("stats", "md"),
        # the spread over folds, support choices (evaluate.supports) and seeds (seeds)
        spread=report_items(
            "spread",
            "csv",
            caption="../report/spread.rst",
            category="Spread and paired tests",
        ),
        spread_markdown=report_slices("spread", "md"),
        # published numbers beside ours, with the protocol key of each side
        reproduction=report_items(
            "reproduction",
            "csv",
            caption="../report/reproduction.rst",
            category="Paper tables",
        ),
        reproduction_text=report_slices("reproduction", "md", "tex"),
        bars=report_items("dice_bars", "png", caption="../report/dice_bars.rst", category="Dice figures"),
        qualitative_slices=report_items(
            "qualitative",
            "png",
            caption="../report/qualitative.rst",
            category="Qualitative",
        ),
        # the first setting and protocol again, under a name that does not change
        qualitative=report_file("qualitative", "png"),
        curves=report(
            report_file("training_curves", "png"),
            caption="../report/training_curves.rst",
            category="Training",
        ),
        per_fold=report_file("dice_per_fold", "csv"),
        per_case=report_file("dice_per_case", "csv"),
    log:
        PATHS.fill("log_report", exp=EXPERIMENT),
    conda:
        "../../envs/fsmis.yaml"
    params:
        # the case of each entry of input.images and input.labels
        cases=lambda wildcards: usable_cases(),
        # what the report reads, and so all the job is given: changing the reference
        # method or the table order redraws the report
        dataset=lookup(dpath="dataset", within=config),
        evaluate=lookup(dpath="evaluate", within=config),
        settings=lookup(dpath="settings", within=config),
        methods=lookup(dpath="methods", within=config),
        baselines=lookup(dpath="baselines", within=config),
        report=lookup(dpath="report", within=config),
        # the protocol key of the reproduction table
        n_folds=lookup(dpath="n_folds", within=config),
        splits=lookup(dpath="splits", within=config),
        seeds=lookup(dpath="seeds", within=config),
    script:
        "../scripts/report.py"
