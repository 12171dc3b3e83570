"""Card-MRI: MS-CMRSeg 2019 bSSFP ("C0"), 35 labelled scans; registration-only, placed
by hand under ``dataset.root`` (shared code: :mod:`fsmis.data.adapters.manual`).

``patient<N>_C0.nii.gz`` + ``patient<N>_C0_manual.nii.gz``, patients 1-35. Case id =
``cmr_<N>``.
"""

from __future__ import annotations

import re

from fsmis.data.adapters import Facts, manual

FACTS = Facts(
    modality="MR",
    label_map={200: "lv_myo", 500: "lv_bp", 600: "rv"},
    classes=["lv_bp", "lv_myo", "rv"],
    # the reference runs Card-MRI in setting 1 only: one group holding every class
    label_groups=[["lv_bp", "lv_myo", "rv"]],
    source={
        "kind": "manual",
        # where the placement is described (named in the message of missing files)
        "docs": 'docs/datasets.md, section "MS-CMRSeg 2019 bSSFP (Card-MRI)"',
        "page": "https://zmiclab.github.io/zxh/0/mscmrseg19/data.html (MS-CMRSeg 2019; registration)",
        "layout": (
            "<dataset.root>/c0t2lge/patient1_C0.nii.gz ... patient35_C0.nii.gz\n"
            "<dataset.root>/c0gt/patient1_C0_manual.nii.gz ... patient35_C0_manual.nii.gz\n"
            "(bSSFP images and their manual labels, 35 patients; file names must be exactly these,\n"
            "any sub-folder of dataset.root is searched; T2/LGE files may sit beside them)\n"
        ),
    },
)
LAYOUT = manual.Layout(
    numbers=tuple(range(1, 36)),
    id="cmr_{}",
    image=(re.compile(r"patient(\d+)_C0\.nii\.gz"), "patient{}_C0.nii.gz"),
    label=(re.compile(r"patient(\d+)_C0_manual\.nii\.gz"), "patient{}_C0_manual.nii.gz"),
)


# the adapter interface (fsmis.data.adapters), bound to this layout
case_ids, check_source, pairs = manual.adapter_functions(LAYOUT, FACTS)
