"""The canonical label vocabulary shared by every dataset adapter.

Datasets map their own label values onto these ids explicitly (never by sorting the
unique values of a mask), so a class has one id everywhere in the workflow.
"""

from __future__ import annotations

CLASSES: dict[str, int] = {
    "background": 0,
    "liver": 1,
    "spleen": 2,
    "left_kidney": 3,
    "right_kidney": 4,
    "kidney": 5,  # AbdomenCT-1K merges both kidneys
    "pancreas": 6,
    "lv_bp": 7,
    "lv_myo": 8,
    "rv": 9,
}
_NAMES = {v: k for k, v in CLASSES.items()}


def class_id(name: str) -> int:
    try:
        return CLASSES[name]
    except KeyError:
        raise KeyError(f"unknown class {name!r}; known: {', '.join(CLASSES)}") from None


def class_name(cid: int) -> str:
    try:
        return _NAMES[int(cid)]
    except KeyError:
        raise KeyError(f"unknown class id {cid}; known: {sorted(_NAMES)}") from None
