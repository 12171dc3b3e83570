"""Canonical conversion: checked image/label pairs with canonical label ids, in one
anatomical orientation.

Every pair is validated (readable, same geometry, only known label values) before
anything is written, so one bad case never leaves a half-built output folder.

Orientation: every case is brought to ``ORIENTATION`` (``LPS``: array x increases
toward the patient's left, y toward posterior, z toward superior; identity direction
in ITK's physical space, the layout of most DICOM-derived CT). Only axes are permuted
and flipped, with direction and origin updated (``sitk.DICOMOrient``), so no voxel is
interpolated and every voxel keeps its physical position. After it, array axis 0 runs
inferior -> superior in every case, so support and query slices are matched along the
same anatomical axis. An oblique acquisition keeps its small rotation (the closest
axes are chosen). ``cases.tsv`` records the source orientation code;
:func:`to_source_grid` puts a label volume back onto the raw file's grid.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from fsmis.errors import InputError
from fsmis.io import atomic_path, read_image
from fsmis.labels import class_id, class_name

GEOMETRY_TOL = 1e-4
ORIENTATION = "LPS"
COLUMNS = ["case", "source_image", "source_label", "modality", "orientation_source", "orientation",
           "spacing_x", "spacing_y", "spacing_z", "size_x", "size_y", "size_z", "labels"]


def orientation_of(image: sitk.Image) -> str:
    """Three-letter code of the closest anatomical axes (``LPS``, ``RAS``, ...)."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def reorient(image: sitk.Image, code: str = ORIENTATION) -> sitk.Image:
    """Permute/flip axes to ``code``; physical positions are unchanged."""
    return image if orientation_of(image) == code else sitk.DICOMOrient(image, code)


def to_source_grid(volume: sitk.Image, canonical: sitk.Image, source_orientation: str) -> sitk.Image:
    """A label volume on any grid (e.g. a preprocessed-grid prediction) resampled by
    nearest neighbour onto the grid of the canonical image, then given the raw file's
    axis order back: the result overlays the raw image voxel for voxel."""
    on_canonical = sitk.Resample(volume, canonical, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                 volume.GetPixelID())
    return reorient(on_canonical, source_orientation)


# Intensity signatures that tell CT from MR without a header field: CT in Hounsfield
# units always holds air (about -1000) around or inside the body; MR intensities are
# non-negative (or z-scored, a few units below 0). Between the two: no verdict.
CT_AIR_HU = -500.0
CT_AIR_FRACTION = 0.005
MR_MIN = -50.0


def intensity_modality(arr: np.ndarray) -> tuple[str | None, str]:
    """``(CT | MR | None, evidence)`` from a volume's intensities alone."""
    air = float(np.count_nonzero(arr < CT_AIR_HU)) / max(arr.size, 1)
    low = float(arr.min()) if arr.size else 0.0
    evidence = f"minimum {low:g}, {100 * air:.1f} % of voxels below {CT_AIR_HU:g}"
    if air >= CT_AIR_FRACTION:
        return "CT", evidence
    if low >= MR_MIN:
        return "MR", evidence
    return None, evidence


def build(pairs, out_dir: str | os.PathLike, label_map: dict, modality, claims: dict | None = None) -> pd.DataFrame:
    """Validate and convert ``pairs`` = [(case, image_path, label_path), ...] (a fourth
    and fifth element, when given, are the raw sources recorded in ``cases.tsv`` in
    place of converted temporary files).

    ``label_map`` maps raw label values to canonical class names (``fsmis.labels``);
    raw 0 is background. ``modality``: "CT"/"MR", or ``{case: modality}``. ``claims``:
    ``{case: where the modality was read}`` for cases whose modality was claimed for the
    whole folder rather than for the case: such a case whose intensities say otherwise
    (:func:`intensity_modality`) is refused, naming the case and how to state it. Writes
    ``{out_dir}/{case}_image.nii.gz`` (pixel type kept) and ``{case}_label.nii.gz``
    (uint8 canonical ids), both in ``ORIENTATION``, and returns the ``cases.tsv`` table.
    """
    lut = _lookup(label_map)
    check_case_ids([p[0] for p in pairs])
    by_case = modality if isinstance(modality, dict) else {p[0]: modality for p in pairs}
    out, rows = Path(out_dir), []
    # Each case is read once, checked and written to temporary files that are renamed
    # into place only when every case has passed: one bad case leaves no output, and
    # memory holds one case at a time.
    created = not out.exists()
    try:
        with contextlib.ExitStack() as pending:
            for pair in pairs:
                row, image, label = _convert(pair, lut, by_case[pair[0]], (claims or {}).get(pair[0]))
                rows.append(row)
                for volume, kind in ((image, "image"), (label, "label")):
                    tmp = pending.enter_context(atomic_path(out / f"{row['case']}_{kind}.nii.gz"))
                    sitk.WriteImage(volume, str(tmp), useCompression=True)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # the folder this call made for the temporary files
        raise
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


def _convert(pair, lut, modality, claimed_by: str | None = None) -> tuple[dict, sitk.Image, sitk.Image]:
    """The ``cases.tsv`` row of a checked pair and its canonical image and label."""
    case, image_path, label_path = pair[:3]
    source_image, source_label = (pair[3], pair[4]) if len(pair) >= 5 else (image_path, label_path)
    image = read_image(image_path)
    label = read_image(label_path)
    for path, img in ((image_path, image), (label_path, label)):
        if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(path, f"expected a 3D single-channel image, got {img.GetDimension()}D "
                                   f"with {img.GetNumberOfComponentsPerPixel()} component(s)")
    _check_geometry(image, label, image_path, label_path)
    present = _check_values(sitk.GetArrayViewFromImage(label), label_path, lut)
    if claimed_by is not None:
        _check_modality(case, sitk.GetArrayViewFromImage(image), image_path, modality, claimed_by)
    source_code = orientation_of(image)
    oriented = reorient(image)  # the table describes the canonical volume
    sx, sy, sz = oriented.GetSpacing()
    nx, ny, nz = oriented.GetSize()
    names = [class_name(lut[v]) for v in sorted(present, key=lambda v: lut[v])]
    row = {"case": case, "source_image": str(source_image), "source_label": str(source_label),
           "modality": modality, "orientation_source": source_code, "orientation": ORIENTATION,
           "spacing_x": sx, "spacing_y": sy, "spacing_z": sz,
           "size_x": nx, "size_y": ny, "size_z": nz, "labels": ",".join(names)}
    return row, oriented, reorient(_to_canonical(label, lut))


def _check_modality(case, arr, image_path, modality, claimed_by) -> None:
    seen, evidence = intensity_modality(arr)
    if seen is None or seen == modality:
        return
    if claimed_by.startswith(("dataset.modality", "dataset.json")):  # a user's folder: it may mix
        hint = (f"If the folder mixes CT and MR, say so per case: in the config\n  dataset:\n    modality: "
                f"{{{case}: {seen}, ...}}\nor \"modality\": \"{seen}\" in the case's training entry of dataset.json")
    else:
        hint = "This is not a file that dataset holds: a wrong or damaged file?"
    raise InputError(image_path, f"case {case} is {modality} by {claimed_by}, but its intensities look like "
                                 f"{seen} ({evidence}). {hint}")


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
