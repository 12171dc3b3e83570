"""Conversion of a dataset's raw image/label pairs to the canonical form.

Every pair is checked before anything is written (readable files, identical
geometry, only label values the dataset's explicit label map knows), so a bad case
stops the stage with an error naming the file, and no half-built folder is left.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from fsmis import io
from fsmis.errors import InputError
from fsmis.labels import class_id

GEOMETRY_TOL = 1e-4


def _geometry(img: sitk.Image) -> dict:
    return {"size": img.GetSize(), "spacing": img.GetSpacing(), "origin": img.GetOrigin(),
            "direction": img.GetDirection()}


def check_pair(image: sitk.Image, label: sitk.Image, image_path, label_path) -> None:
    gi, gl = _geometry(image), _geometry(label)
    for key in ("size", "spacing", "origin", "direction"):
        a, b = np.asarray(gi[key], float), np.asarray(gl[key], float)
        if a.shape != b.shape or not np.allclose(a, b, atol=GEOMETRY_TOL, rtol=0):
            raise InputError(label_path, f"geometry differs from its image {image_path}: {key} "
                                         f"{tuple(np.round(b, 4))} (label) vs {tuple(np.round(a, 4))} (image)")
    if image.GetDimension() != 3:
        raise InputError(image_path, f"expected a 3D volume, got {image.GetDimension()}D")


def map_labels(label: np.ndarray, label_map: dict, label_path) -> np.ndarray:
    """Raw label values -> canonical ids, refusing any value the map does not name."""
    raw = {int(k): v for k, v in label_map.items()}
    present = set(np.unique(label).tolist())
    unknown = sorted(present - set(raw) - {0})
    if unknown:
        allowed = ", ".join(f"{k} ({v})" for k, v in sorted(raw.items()))
        raise InputError(label_path, f"unknown label values {unknown}; this dataset's label map allows 0 "
                                     f"(background), {allowed}")
    out = np.zeros(label.shape, np.uint8)
    for value, name in raw.items():
        out[label == value] = class_id(name)
    return out


def build(pairs, out_dir, label_map: dict, modality: str) -> pd.DataFrame:
    """``pairs``: ``[(case, image_path, label_path)]``; returns the ``cases.tsv`` table."""
    checked = []
    for case, image_path, label_path in pairs:
        image, label = io.read_image(image_path), io.read_image(label_path)
        check_pair(image, label, image_path, label_path)
        mapped = map_labels(sitk.GetArrayFromImage(label), label_map, label_path)
        checked.append((case, image_path, label_path, image, mapped))
    rows = []
    out_dir = Path(out_dir)
    for case, image_path, label_path, image, mapped in checked:
        lab = sitk.GetImageFromArray(mapped)
        lab.CopyInformation(image)
        io.write_image(image, out_dir / f"{case}_image.nii.gz")
        io.write_image(lab, out_dir / f"{case}_label.nii.gz")
        names = [n for n in label_map.values() if (mapped == class_id(n)).any()]
        sx, sy, sz = image.GetSpacing()
        nx, ny, nz = image.GetSize()
        rows.append({"case": case, "source_image": str(image_path), "source_label": str(label_path),
                     "modality": modality, "spacing_x": sx, "spacing_y": sy, "spacing_z": sz,
                     "size_x": nx, "size_y": ny, "size_z": nz, "labels": ",".join(names)})
    return pd.DataFrame(rows)
