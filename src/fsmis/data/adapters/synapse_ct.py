"""Abd-CT: Synapse / BTCV, 30 labelled scans; registration-only, placed by hand under
``dataset.root`` (shared code: :mod:`fsmis.data.adapters.manual`).

``img0001.nii.gz`` + ``label0001.nii.gz``; the 30 labelled scans are 0001-0010 and
0021-0040. Case id = ``synapse_<NNNN>``. The labels hold 13 organs; the nine that
FSMIS does not use are set to background in a copy written to ``work_dir`` (any other
unexpected value is left for canonical to refuse).
"""

from __future__ import annotations

import re

from fsmis.data.adapters import Facts, manual

FACTS = Facts(
    modality="CT",
    # the four FSMIS organs; the other nine BTCV organs are set to background (LAYOUT)
    label_map={1: "spleen", 2: "right_kidney", 3: "left_kidney", 6: "liver"},
    classes=["left_kidney", "right_kidney", "spleen", "liver"],
    label_groups=[["left_kidney", "right_kidney"], ["liver", "spleen"]],  # SSL-ALPNet's SABS groups
    source={
        "kind": "manual",
        # where the placement is described (named in the message of missing files)
        "docs": 'docs/datasets.md, section "Synapse / BTCV (Abd-CT)"',
        "page": "https://www.synapse.org/#!Synapse:syn3193805/wiki/89480 "
                "(Abdomen/RawData.zip in folder syn3553734; free account + data terms)",
        "layout": (
            "<dataset.root>/RawData/Training/img/img0001.nii.gz ... img0040.nii.gz\n"
            "<dataset.root>/RawData/Training/label/label0001.nii.gz ... label0040.nii.gz\n"
            "(RawData.zip unzipped into dataset.root; the 30 labelled scans are 0001-0010 and\n"
            "0021-0040; file names must be exactly these, any sub-folder of dataset.root is searched)\n"
        ),
    },
)
LAYOUT = manual.Layout(
    numbers=(*range(1, 11), *range(21, 41)),
    id="synapse_{:04d}",
    image=(re.compile(r"img(\d{4})\.nii\.gz"), "img{:04d}.nii.gz"),
    label=(re.compile(r"label(\d{4})\.nii\.gz"), "label{:04d}.nii.gz"),
    # gallbladder, esophagus, stomach, aorta, IVC, portal/splenic vein, pancreas, adrenals
    background=(4, 5, 7, 8, 9, 10, 11, 12, 13),
)


# the adapter interface (fsmis.data.adapters), bound to this layout
case_ids, check_source, pairs = manual.adapter_functions(LAYOUT, FACTS)
