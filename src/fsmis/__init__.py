"""fsmis: few-shot medical image segmentation benchmark library.

Every workflow stage in ``workflow/scripts`` is a thin adapter around this package,
so each stage can be imported, tested and rerun without Snakemake.
"""

__version__ = "0.1.0"
