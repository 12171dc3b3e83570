"""Dataset facts: modality, label map, test classes in the papers' column order and
the label groups of setting 2. Adding a dataset = one entry here plus its fetch /
canonical adapter.
"""

from __future__ import annotations

DATASETS: dict[str, dict] = {
    "phantom": {
        "modality": "CT",
        # raw phantom values -> canonical names (explicit, never inferred)
        "label_map": {1: "liver", 2: "spleen", 3: "right_kidney", 4: "left_kidney"},
        "classes": ["left_kidney", "right_kidney", "spleen", "liver"],
        "label_groups": [["left_kidney", "right_kidney"], ["liver", "spleen"]],
    },
    # Abd-MRI: CHAOS T2-SPIR (DICOM + PNG masks), 20 training subjects.
    "chaos_mr": {
        "modality": "MR",
        # PNG grey values of the official CHAOS evaluation code (each read as a range
        # there; the adapter snaps the ranges onto these values)
        "label_map": {63: "liver", 126: "right_kidney", 189: "left_kidney", 252: "spleen"},
        "classes": ["left_kidney", "right_kidney", "spleen", "liver"],
        # upper vs lower abdomen, as SSL-ALPNet's CHAOST2 LABEL_GROUP
        "label_groups": [["left_kidney", "right_kidney"], ["liver", "spleen"]],
        "source": {
            "kind": "zenodo",
            "records": {"3431873": ["CHAOS_Train_Sets.zip"]},  # CHAOS v1.03, CC BY-NC-SA 4.0
            # third-party-confirmed checksum (landscape.md 3.2); the Zenodo API is authoritative
            "md5": {"CHAOS_Train_Sets.zip": "df21053002a1cc86df918a87da3b2c19"},
        },
    },
    # AbdomenCT-1K: labels 1-4 in both public forms; kidneys are one label.
    "abdomenct1k": {
        "modality": "CT",
        "label_map": {1: "liver", 2: "kidney", 3: "spleen", 4: "pancreas"},
        "classes": ["liver", "kidney", "spleen", "pancreas"],
        # no reference defines setting 2 here: ours, upper (liver, spleen) vs lower abdomen
        "label_groups": [["kidney", "pancreas"], ["liver", "spleen"]],
        "source": {
            "kind": "zenodo",
            # `records` = the default form; config dataset.form picks one of `forms`
            "records": {"5903037": ["Subtask1.zip", "Subtask2.zip"]},
            "default_form": "benchmark",
            "forms": {
                # FLARE21 = the fully-supervised benchmark: 361 labelled cases per subtask
                "benchmark": {"records": {"5903037": ["Subtask1.zip", "Subtask2.zip"]}},
                # the full release: 1062 images, 1000 public masks
                "full": {"records": {
                    "5903099": ["AbdomenCT-1K-ImagePart1.zip"],
                    "5903846": ["AbdomenCT-1K-ImagePart2.zip"],
                    "5903769": ["AbdomenCT-1K-ImagePart3.zip", "Mask.7z"],
                }},
            },
            # third-party checksums (landscape.md 3.1); the Zenodo API is authoritative
            "md5": {
                "AbdomenCT-1K-ImagePart1.zip": "946325d0209179d767bea914c93e9a54",
                "AbdomenCT-1K-ImagePart2.zip": "eb24ba869589d15fe1d89ccf7f13aaa4",
                "AbdomenCT-1K-ImagePart3.zip": "7f5a131e83f3bb38932e8fb62d040a3f",
                "Mask.7z": "dfca75d15912d5d7323585c53e1d75d9",
            },
        },
    },
    # Abd-CT: Synapse / BTCV, 30 labelled scans; registration-only.
    "synapse_ct": {
        "modality": "CT",
        # the four FSMIS organs; the other nine BTCV organs are set to background
        "label_map": {1: "spleen", 2: "right_kidney", 3: "left_kidney", 6: "liver"},
        "classes": ["left_kidney", "right_kidney", "spleen", "liver"],
        "label_groups": [["left_kidney", "right_kidney"], ["liver", "spleen"]],  # SSL-ALPNet's SABS groups
        "source": {
            "kind": "manual",
            "page": "https://www.synapse.org/#!Synapse:syn3193805/wiki/89480 "
                    "(Abdomen/RawData.zip in folder syn3553734; free account + data terms)",
            "layout": (
                "<dataset.root>/RawData/Training/img/img0001.nii.gz ... img0040.nii.gz\n"
                "<dataset.root>/RawData/Training/label/label0001.nii.gz ... label0040.nii.gz\n"
                "(RawData.zip unzipped into dataset.root; the 30 labelled scans are 0001-0010 and\n"
                "0021-0040; file names must be exactly these, any sub-folder of dataset.root is searched)\n"
            ),
        },
    },
    # Card-MRI: MS-CMRSeg 2019 bSSFP ("C0"), 35 labelled scans; registration-only.
    "cmr_bssfp": {
        "modality": "MR",
        "label_map": {200: "lv_myo", 500: "lv_bp", 600: "rv"},
        "classes": ["lv_bp", "lv_myo", "rv"],
        # the reference runs Card-MRI in setting 1 only: one group holding every class
        "label_groups": [["lv_bp", "lv_myo", "rv"]],
        "source": {
            "kind": "manual",
            "page": "https://zmiclab.github.io/zxh/0/mscmrseg19/data.html (MS-CMRSeg 2019; registration)",
            "layout": (
                "<dataset.root>/c0t2lge/patient1_C0.nii.gz ... patient35_C0.nii.gz\n"
                "<dataset.root>/c0gt/patient1_C0_manual.nii.gz ... patient35_C0_manual.nii.gz\n"
                "(bSSFP images and their manual labels, 35 patients; file names must be exactly these,\n"
                "any sub-folder of dataset.root is searched; T2/LGE files may sit beside them)\n"
            ),
        },
    },
    # Any nnU-Net / MSD folder: modality, label map, classes and groups come from the
    # config (dataset.modality, dataset.label_map, ...), see fsmis.data.adapters.nifti_folder.
    "nifti_folder": {
        "modality": None,
        "label_map": None,
        "classes": None,
        "label_groups": None,
        "source": {"kind": "local"},
    },
}


def info(name: str) -> dict:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None
