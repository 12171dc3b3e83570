"""Tables, figures and statistics of one experiment, rebuilt from its stored results.

Nothing here trains or evaluates: the report reads each fold's ``metrics.json``
(docs/contracts.md, "Evaluation outputs") and the ``per_case.tsv`` beside it, and lays
the numbers out like the papers' tables. Modules, by what they do:

- ``results``: the long table of every ``metrics.json``, the per-case rows, the
  per-fold view;
- ``tables``: the Dice table (mean ± std over folds, in percent), its text cells, the
  Markdown and file writers every table uses;
- ``stats``: spread over folds and over scans, paired Wilcoxon tests;
- ``published``: the papers' numbers and which of our results each stands beside;
- ``paper_tables``: our numbers beside the published ones (Markdown, CSV, LaTeX);
- ``spread``: how far each number moves over folds, support choices and seeds;
- ``reproduction``: every published number beside ours, with each side's protocol key;
- ``figures``: Dice bars, qualitative overlays, training curves, placeholders;
- ``build``: :func:`build_report`, every file of the report directory.

Each module's docstring says what follows the papers and what is ours.
"""

from fsmis.report.build import build_report
from fsmis.report.figures import bar_figure, curve_figure, placeholder_figure, qualitative_figure
from fsmis.report.results import CASE_COLUMNS, LONG_COLUMNS, collect, fold_values, read_cases
from fsmis.report.tables import dice_table, formatted, write_tables

__all__ = [
    "CASE_COLUMNS", "LONG_COLUMNS", "bar_figure", "build_report", "collect", "curve_figure", "dice_table",
    "fold_values", "formatted", "placeholder_figure", "qualitative_figure", "read_cases", "write_tables",
]
