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
}


def info(name: str) -> dict:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None
