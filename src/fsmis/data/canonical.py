"""Canonical conversion: checked image/label pairs with canonical label ids.

Every pair is validated (readable, same geometry, only known label values) before
anything is written, so one bad case never leaves a half-built output folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from fsmis.errors import InputError
from fsmis.io import read_image, write_image
from fsmis.labels import class_id, class_name

GEOMETRY_TOL = 1e-4
COLUMNS = ["case", "source_image", "source_label", "modality", "spacing_x", "spacing_y",
           "spacing_z", "size_x", "size_y", "size_z", "labels"]


def build(pairs, out_dir: str | os.PathLike, label_map: dict, modality: str) -> pd.DataFrame:
    """Validate and convert ``pairs`` = [(case, image_path, label_path), ...].

    ``label_map`` maps raw label values to canonical class names (``fsmis.labels``);
    raw 0 is background. Writes ``{out_dir}/{case}_image.nii.gz`` (pixel type kept) and
    ``{case}_label.nii.gz`` (uint8 canonical ids) and returns the ``cases.tsv`` table.
    """
    lut = _lookup(label_map)
    check_case_ids([c for c, _, _ in pairs])
    # pass 1 reads everything and keeps only the table rows: memory stays one case
    rows = [_validate(case, image, label, lut, modality) for case, image, label in pairs]
    out = Path(out_dir)
    for case, image_path, label_path in pairs:
        image = read_image(image_path)
        label = read_image(label_path)
        write_image(image, out / f"{case}_image.nii.gz")
        write_image(_to_canonical(label, lut), out / f"{case}_label.nii.gz")
    return pd.DataFrame(rows, columns=COLUMNS)


def _lookup(label_map: dict) -> dict[int, int]:
    """raw value -> canonical id; keys may be strings (from JSON/YAML), names must exist."""
    lut = {}
    for raw, name in label_map.items():
        try:
            lut[int(raw)] = class_id(name)
        except KeyError as err:
            raise ValueError(f"label map entry {raw!r}: {err.args[0]}") from None
    if 0 in lut:
        raise ValueError("label map must not map raw value 0: it is background")
    return lut


def check_case_ids(cases) -> None:
    seen = set()
    for case in cases:
        if not case or "/" in case or case.startswith("."):
            raise ValueError(f"invalid case id {case!r}: must be a plain file-name stem")
        if case in seen:
            raise ValueError(f"duplicate case id {case!r}")
        seen.add(case)


def _validate(case, image_path, label_path, lut, modality) -> dict:
    image = read_image(image_path)
    label = read_image(label_path)
    for path, img in ((image_path, image), (label_path, label)):
        if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(path, f"expected a 3D single-channel image, got {img.GetDimension()}D "
                                   f"with {img.GetNumberOfComponentsPerPixel()} component(s)")
    _check_geometry(image, label, image_path, label_path)
    present = _check_values(sitk.GetArrayViewFromImage(label), label_path, lut)
    sx, sy, sz = image.GetSpacing()
    nx, ny, nz = image.GetSize()
    names = [class_name(lut[v]) for v in sorted(present, key=lambda v: lut[v])]
    return {"case": case, "source_image": str(image_path), "source_label": str(label_path),
            "modality": modality, "spacing_x": sx, "spacing_y": sy, "spacing_z": sz,
            "size_x": nx, "size_y": ny, "size_z": nz, "labels": ",".join(names)}


def _check_geometry(image, label, image_path, label_path) -> None:
    checks = (("size", image.GetSize(), label.GetSize()),
              ("spacing", image.GetSpacing(), label.GetSpacing()),
              ("origin", image.GetOrigin(), label.GetOrigin()),
              ("direction", image.GetDirection(), label.GetDirection()))
    for what, a, b in checks:
        if not np.allclose(a, b, rtol=0.0, atol=GEOMETRY_TOL):
            raise InputError(label_path, f"geometry differs from its image {image_path}: "
                                         f"{what} {_fmt(b)} (label) vs {_fmt(a)} (image)")


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _check_values(arr: np.ndarray, label_path, lut) -> set[int]:
    """Return the non-zero raw values present; unknown or non-integer values are errors."""
    values = np.unique(arr)
    if not np.all(values == np.round(values)):
        bad = values[values != np.round(values)][:10]
        raise InputError(label_path, f"non-integer label values {bad.tolist()}")
    values = {int(v) for v in values}
    unknown = sorted(values - set(lut) - {0})
    if unknown:
        raise InputError(label_path, f"unknown label values {unknown}; allowed: {sorted({0, *lut})}")
    return values - {0}


def _to_canonical(label: sitk.Image, lut) -> sitk.Image:
    raw = sitk.GetArrayViewFromImage(label)
    out = np.zeros(raw.shape, np.uint8)
    for value, cid in lut.items():  # explicit map: never inferred from sorted values
        out[raw == value] = cid
    img = sitk.GetImageFromArray(out)
    img.CopyInformation(label)
    return img
