"""CHAOS MR T2-SPIR (Zenodo 3431873, ``CHAOS_Train_Sets.zip``).

Layout: ``Train_Sets/MR/<pid>/T2SPIR/DICOM_anon/IMG-SSSS-NNNNN.dcm`` with one mask per
slice, ``T2SPIR/Ground/IMG-SSSS-NNNNN.png`` (same file name, PNG in the DICOM's own
row/column order). Case id = ``chaos_<pid>``.

Each series is read in the order of ImagePositionPatient along the slice normal; each
PNG is placed on the slice of its same-named DICOM file, never by position in a sorted
list. The mask stack is refused (InputError naming the folder) unless it covers every
slice exactly once with the slice's in-plane size, and the DICOM headers tell one
consistent order: InstanceNumber must be monotone along the slice normal and the file
numbering must follow InstanceNumber. The anonymised files carry different
SeriesInstanceUIDs, so the series is never grouped by UID.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from fsmis.data.adapters import Facts, select_cases
from fsmis.errors import InputError

log = logging.getLogger(__name__)

RECORD = "3431873"
ARCHIVE = "CHAOS_Train_Sets.zip"
FACTS = Facts(
    modality="MR",
    # PNG grey values of the official CHAOS evaluation code (each read as a range
    # there; RANGES below snaps the ranges onto these values)
    label_map={63: "liver", 126: "right_kidney", 189: "left_kidney", 252: "spleen"},
    classes=["left_kidney", "right_kidney", "spleen", "liver"],
    # upper vs lower abdomen, as SSL-ALPNet's CHAOST2 LABEL_GROUP
    label_groups=[["left_kidney", "right_kidney"], ["liver", "spleen"]],
    source={
        "kind": "zenodo",
        "records": {RECORD: [ARCHIVE]},  # CHAOS v1.03, CC BY-NC-SA 4.0
        # third-party-confirmed checksum (docs/datasets.md); the Zenodo API is authoritative
        "md5": {ARCHIVE: "df21053002a1cc86df918a87da3b2c19"},
    },
)
# the 20 MR training subjects of the CHAOS release (check_source verifies them)
PATIENTS = (1, 2, 3, 5, 8, 10, 13, 15, 19, 20, 21, 22, 31, 32, 33, 34, 36, 37, 38, 39)
# the CHAOS evaluation code reads each organ as a grey-value range: (low, high] -> value
RANGES = ((55, 70, 63), (110, 135, 126), (175, 200, 189), (240, 255, 252))
POS_TOL = 1e-3  # mm
_FILE_NO = re.compile(r"(\d+)$")


def _id(pid: int) -> str:
    return f"chaos_{pid}"


def _pid(case: str) -> int:
    m = re.fullmatch(r"chaos_(\d+)", case)
    if not m:
        raise ValueError(f"not a CHAOS case id: {case!r} (expected chaos_<patient id>)")
    return int(m.group(1))


def case_ids(dataset_cfg: dict) -> list[str]:
    return select_cases([_id(p) for p in PATIENTS], dataset_cfg, _id)


def _mr_dir(raw_dir) -> Path:
    """``.../Train_Sets/MR`` below the unpacked archive."""
    raw_dir = Path(raw_dir)
    hits = sorted(p / "MR" for p in raw_dir.rglob("Train_Sets") if (p / "MR").is_dir())
    if len(hits) != 1:
        found = "none" if not hits else ", ".join(map(str, hits))
        raise InputError(raw_dir, f"expected one Train_Sets/MR folder from {ARCHIVE} below it, found {found}")
    return hits[0]


def check_source(dataset_cfg: dict, root) -> None:
    mr = _mr_dir(root)
    for case in case_ids(dataset_cfg):
        t2 = mr / str(_pid(case)) / "T2SPIR"
        for sub, pattern in (("DICOM_anon", "*.dcm"), ("Ground", "*.png")):
            if not any((t2 / sub).glob(pattern)):
                raise InputError(t2 / sub, f"no {pattern} files for case {case}: the archive is incomplete")
    extra = sorted({p.name for p in mr.iterdir() if p.is_dir()} - {str(p) for p in PATIENTS})
    if extra:
        log.warning("CHAOS MR folders not among the 20 known training subjects (ignored): %s", extra)


def pairs(dataset_cfg: dict, raw_dir, work_dir, cases) -> list[tuple[str, ...]]:
    from fsmis.io import write_image

    mr, out = _mr_dir(raw_dir), Path(work_dir)
    result = []
    for case in cases:
        t2 = mr / str(_pid(case)) / "T2SPIR"
        image, label = convert_t2spir(t2)
        img_path, lab_path = out / f"{case}_image.nii.gz", out / f"{case}_label.nii.gz"
        write_image(image, img_path)
        write_image(label, lab_path)
        log.info("%s: T2-SPIR %s voxels, spacing %s", case, image.GetSize(),
                 tuple(round(s, 3) for s in image.GetSpacing()))
        # cases.tsv names the DICOM series and PNG masks, not the work copies
        result.append((case, str(img_path), str(lab_path), str(t2 / "DICOM_anon"), str(t2 / "Ground")))
    return result


# -- conversion --------------------------------------------------------------------

def convert_t2spir(t2_dir) -> tuple:
    """``(image, label)`` SimpleITK volumes of one ``T2SPIR`` folder; label has the
    image's geometry and the PNG grey values (ranges snapped as CHAOS reads them)."""
    import numpy as np
    import SimpleITK as sitk

    t2_dir = Path(t2_dir)
    dcm_dir, png_dir = t2_dir / "DICOM_anon", t2_dir / "Ground"
    slices = _ordered_slices(dcm_dir)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(s["path"]) for s in slices])
    image = reader.Execute()
    _check_geometry(image, slices, dcm_dir)

    masks = {p.stem: p for p in png_dir.glob("*.png")} if png_dir.is_dir() else {}
    stems = [s["path"].stem for s in slices]
    missing = [s for s in stems if s not in masks]
    extra = sorted(set(masks) - set(stems))
    if missing or extra:
        raise InputError(png_dir, f"mask stack does not match the {len(stems)} DICOM slices of {dcm_dir}: "
                                  f"{len(masks)} PNGs; slices without a mask {missing[:5]}, masks without a "
                                  f"slice {extra[:5]}")
    cols, rows = image.GetSize()[:2]
    stack = np.zeros((len(slices), rows, cols), np.uint8)
    for z, stem in enumerate(stems):
        stack[z] = _read_png(masks[stem], (rows, cols))
    for low, high, value in RANGES:
        stack[(stack > low) & (stack <= high)] = value
    label = sitk.GetImageFromArray(stack)
    label.CopyInformation(image)
    return image, label


def _ordered_slices(dcm_dir: Path) -> list[dict]:
    """DICOM headers sorted along the slice normal, with the order checks."""
    import numpy as np
    import SimpleITK as sitk

    files = sorted(p for p in dcm_dir.glob("*") if p.suffix.lower() == ".dcm") if dcm_dir.is_dir() else []
    if len(files) < 2:
        raise InputError(dcm_dir, f"expected a DICOM series (*.dcm), found {len(files)} file(s)")
    slices = []
    for path in files:
        r = sitk.ImageFileReader()
        r.SetFileName(str(path))
        try:
            r.ReadImageInformation()
        except RuntimeError:
            raise InputError(path, "not a readable DICOM file") from None
        iop = _floats(r, "0020|0037", "ImageOrientationPatient", path, 6)
        slices.append({"path": path, "ipp": np.array(_floats(r, "0020|0032", "ImagePositionPatient", path, 3)),
                       "iop": np.array(iop), "instance": int(float(_tag(r, "0020|0013", "InstanceNumber", path))),
                       "size": r.GetSize()[:2]})
    first = slices[0]
    for s in slices:
        if not np.allclose(s["iop"], first["iop"], atol=1e-4) or s["size"] != first["size"]:
            raise InputError(s["path"], f"orientation or size differs from {first['path'].name}: not one series")
    normal = np.cross(first["iop"][:3], first["iop"][3:])
    for s in slices:
        s["pos"] = float(s["ipp"] @ normal)
    slices.sort(key=lambda s: s["pos"])
    gaps = np.diff([s["pos"] for s in slices])
    if gaps.min() < POS_TOL:
        raise InputError(dcm_dir, "two DICOM slices share one position: more than one series in the folder?")
    if gaps.max() - gaps.min() > max(POS_TOL, 0.01 * gaps.mean()):
        raise InputError(dcm_dir, f"uneven slice spacing {gaps.min():.3f}..{gaps.max():.3f} mm along the normal")
    inst = np.array([s["instance"] for s in slices])
    if not (np.all(np.diff(inst) > 0) or np.all(np.diff(inst) < 0)):
        raise InputError(dcm_dir, f"InstanceNumber order disagrees with ImagePositionPatient order: along the "
                                  f"slice normal the instances run {inst.tolist()}; the mask-to-slice order "
                                  "is ambiguous")
    # CHAOS names files (and their PNGs) by instance: a numbering that runs against the
    # headers means names and slices were shuffled, so the PNG names cannot be trusted
    numbers = [_file_number(s["path"]) for s in slices]
    if None not in numbers and np.argsort(numbers).tolist() != np.argsort(inst).tolist():
        raise InputError(dcm_dir, f"file numbering disagrees with InstanceNumber: along the slice normal the "
                                  f"files are {[s['path'].name for s in slices]} with instances {inst.tolist()}")
    return slices


def _check_geometry(image, slices, dcm_dir) -> None:
    """The series reader's geometry must be what the headers say."""
    import numpy as np

    direction = np.array(image.GetDirection()).reshape(3, 3)
    gaps = np.diff([s["pos"] for s in slices])
    want_normal = np.cross(slices[0]["iop"][:3], slices[0]["iop"][3:])
    if (image.GetSize()[2] != len(slices) or not np.allclose(image.GetOrigin(), slices[0]["ipp"], atol=1e-3)
            or not np.allclose(direction[:, 2], want_normal, atol=1e-4)
            or not np.isclose(image.GetSpacing()[2], gaps.mean(), atol=1e-3)):
        raise InputError(dcm_dir, f"series geometry (origin {image.GetOrigin()}, spacing {image.GetSpacing()}) "
                                  f"does not match the DICOM headers (first position {slices[0]['ipp'].tolist()}, "
                                  f"slice gap {gaps.mean():.4f})")


def _read_png(path: Path, shape):
    import numpy as np
    import SimpleITK as sitk

    try:
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError:
        raise InputError(path, "not a readable PNG") from None
    if arr.ndim == 3:  # grey stored as RGB(A): accept only if the colour channels agree
        if not all(np.array_equal(arr[..., 0], arr[..., c]) for c in range(1, min(arr.shape[-1], 3))):
            raise InputError(path, "colour mask: expected grey values")
        arr = arr[..., 0]
    if arr.shape != tuple(shape):
        raise InputError(path, f"mask is {arr.shape[1]}x{arr.shape[0]} (columns x rows) but its DICOM slice is "
                               f"{shape[1]}x{shape[0]}: transposed or from another series")
    if arr.max() > 255 or arr.min() < 0:
        raise InputError(path, f"mask values {arr.min()}..{arr.max()} outside 0..255")
    return arr.astype(np.uint8)


def _tag(reader, key: str, name: str, path) -> str:
    if not reader.HasMetaDataKey(key):
        raise InputError(path, f"DICOM tag {name} ({key.replace('|', ',')}) is missing")
    return reader.GetMetaData(key).strip()


def _floats(reader, key, name, path, n) -> list[float]:
    try:
        values = [float(v) for v in _tag(reader, key, name, path).split("\\")]
    except ValueError:
        values = []
    if len(values) != n:
        raise InputError(path, f"DICOM tag {name} ({key.replace('|', ',')}) is not {n} numbers")
    return values


def _file_number(path: Path):
    m = _FILE_NO.search(path.stem)
    return int(m.group(1)) if m else None
