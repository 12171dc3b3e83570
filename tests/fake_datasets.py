"""Small fake raw datasets in the REAL layouts of their sources, for adapter tests and
for the fake-Zenodo end-to-end test.

Archive builders return a ``FakeSource`` whose ``records`` plug straight into
``FakeZenodo(records)`` (``{record id: {file name: bytes}}``); ``unpack`` extracts them
the way the workflow does (one folder per archive, ``adapters.unpack_dir``). Folder
builders (nnU-Net, Synapse, MS-CMRSeg) write files under a given root.

Fake CHAOS (``chaos``): per patient, ``n_slices`` DICOM files ``IMG-0002-0000k.dcm`` with
InstanceNumber k. Positions run *against* the file order (instance 1 is the highest
slice), so an adapter that stacks masks in file order instead of by slice identity puts
them on the wrong slices. Image pixel value = 100 * instance + column index. Masks:
liver (63) on every slice, and on instance ``MARKED`` only a spleen (252) block plus one
pixel of 68 (inside CHAOS's liver range, which snaps to 63).
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from fsmis.data.adapters import unpack_dir

CHAOS_RECORD = "3431873"
MARKED = 2  # the instance whose mask carries the spleen block
SPLEEN_BLOCK = (slice(1, 4), slice(5, 9))  # rows, columns
CHAOS_SPACING = (1.5, 1.25, 7.0)  # x (columns), y (rows), slice gap
CHAOS_TOP = (-20.0, 30.0, 50.0)  # ImagePositionPatient of instance 1


@dataclass
class FakeSource:
    records: dict[str, dict[str, bytes]]
    info: dict = field(default_factory=dict)


def unpack(records: dict[str, dict[str, bytes]], raw_dir) -> Path:
    """Extract every archive into ``raw_dir/<archive stem>/`` (zipfile / py7zr)."""
    raw_dir = Path(raw_dir)
    for files in records.values():
        for name, data in files.items():
            dest = unpack_dir(raw_dir, name)
            dest.mkdir(parents=True, exist_ok=True)
            if name.endswith(".zip"):
                with zipfile.ZipFile(io.BytesIO(data)) as zf:
                    zf.extractall(dest)
            elif name.endswith(".7z"):
                import py7zr

                with py7zr.SevenZipFile(io.BytesIO(data), "r") as sz:
                    sz.extractall(dest)
    return raw_dir


def _zip(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder).as_posix())
    return buf.getvalue()


def _7z(folder: Path) -> bytes:
    import py7zr

    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w") as sz:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                sz.write(p, p.relative_to(folder).as_posix())
    return buf.getvalue()


def write_nifti(path: Path, arr, spacing=(0.8, 0.8, 2.5), origin=(0.0, 0.0, 0.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    sitk.WriteImage(img, str(path))
    return path


def _pair_arrays(seed: int, values, shape=(3, 5, 6)):
    """A CT-like int16 image and a label with each of ``values`` on its own slice."""
    rng = np.random.default_rng(seed)
    image = rng.integers(-200, 300, shape).astype(np.int16)
    label = np.zeros(shape, np.uint8 if max(values) < 256 else np.uint16)
    for i, v in enumerate(values):
        label[i % shape[0], 1 + i // shape[0]:3 + i // shape[0], 1:4] = v
    return image, label


# -- CHAOS ---------------------------------------------------------------------------

def _write_dicom(path: Path, pixels: np.ndarray, ipp, instance: int, spacing, uid: str) -> None:
    img = sitk.GetImageFromArray(pixels[None].astype(np.uint16))
    img.SetSpacing((spacing[0], spacing[1], spacing[2]))
    img.SetOrigin(ipp)
    tags = {
        "0008|0060": "MR",
        "0008|0016": "1.2.840.10008.5.1.4.1.1.4",  # MR image storage
        "0008|0018": f"{uid}.{instance}",
        "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
        # the anonymised CHAOS files carry one SeriesInstanceUID per file
        "0020|000e": f"{uid}.9{instance}",
        "0020|0013": str(instance),
        "0020|0032": "\\".join(f"{v:g}" for v in ipp),
        "0020|0037": "1\\0\\0\\0\\1\\0",
        "0028|0030": f"{spacing[1]:g}\\{spacing[0]:g}",  # row spacing \ column spacing
        "0018|0050": f"{spacing[2]:g}",
    }
    for k, v in tags.items():
        img.SetMetaData(k, v)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(path))
    writer.Execute(img)


def _write_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(arr.astype(np.uint8)), str(path))


def _t2spir(folder: Path, pid: int, n: int, rows: int, cols: int, fault: str | None) -> None:
    dcm, ground = folder / "DICOM_anon", folder / "Ground"
    dcm.mkdir(parents=True)
    for k in range(1, n + 1):
        instance = k
        if fault == "flipped_names":  # file numbering runs against InstanceNumber
            instance = n + 1 - k
        elif fault == "shuffled_instances" and k in (1, 2):  # instances not monotone in position
            instance = 3 - k
        z = CHAOS_TOP[2] - CHAOS_SPACING[2] * (k - 1)  # file k sits below file k-1
        ipp = (CHAOS_TOP[0], CHAOS_TOP[1], z)
        pixels = 100 * instance + np.tile(np.arange(cols), (rows, 1))
        name = f"IMG-0002-{k:05d}"
        _write_dicom(dcm / f"{name}.dcm", pixels, ipp, instance, CHAOS_SPACING, f"1.2.826.0.1.{pid}")
        mask = np.zeros((rows, cols), np.uint8)
        mask[rows - 3:, :3] = 63
        if instance == MARKED:
            mask[SPLEEN_BLOCK] = 252
            mask[0, 0] = 68
        if fault == "transposed":
            mask = mask.T
        if fault == "short" and k == n:
            continue
        _write_png(ground / f"{name}.png", mask)


def chaos(patients=(1, 2), n_slices: int = 4, rows: int = 10, cols: int = 12, fault: str | None = None) -> FakeSource:
    """``CHAOS_Train_Sets.zip``: ``Train_Sets/MR/<pid>/T2SPIR/{DICOM_anon,Ground}`` plus a
    T1DUAL folder (which the T2-SPIR adapter must ignore). ``fault`` (applied to the first
    patient): ``short`` (last PNG missing), ``flipped_names`` (file numbers run against
    InstanceNumber), ``shuffled_instances``, ``transposed`` (PNGs columns x rows)."""
    with tempfile.TemporaryDirectory() as tmp:
        top = Path(tmp) / "Train_Sets" / "MR"
        for i, pid in enumerate(patients):
            _t2spir(top / str(pid) / "T2SPIR", pid, n_slices, rows, cols, fault if i == 0 else None)
            t1 = top / str(pid) / "T1DUAL"
            (t1 / "DICOM_anon" / "InPhase").mkdir(parents=True)
            _write_dicom(t1 / "DICOM_anon" / "InPhase" / "IMG-0004-00001.dcm", np.ones((rows, cols)), (0, 0, 0), 1,
                         CHAOS_SPACING, "1.2.3")
            _write_png(t1 / "Ground" / "IMG-0004-00001.png", np.zeros((rows, cols)))
        data = _zip(Path(tmp))
    info = {"patients": list(patients), "n_slices": n_slices, "rows": rows, "cols": cols}
    return FakeSource({CHAOS_RECORD: {"CHAOS_Train_Sets.zip": data}}, info)


# -- AbdomenCT-1K --------------------------------------------------------------------

def abdomenct1k_benchmark(subtask: int = 1, numbers=(1, 2, 3), maskless=()) -> FakeSource:
    """``Subtask<k>.zip`` of record 5903037: ``TrainImage/train_NNNN_0000.nii.gz`` and
    ``TrainMask/train_NNNN.nii.gz`` (labels 1-4)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for n in numbers:
            image, label = _pair_arrays(n, (1, 2, 3, 4))
            write_nifti(root / "TrainImage" / f"train_{n:04d}_0000.nii.gz", image)
            if n not in maskless:
                write_nifti(root / "TrainMask" / f"train_{n:04d}.nii.gz", label)
        data = _zip(root)
    return FakeSource({"5903037": {f"Subtask{subtask}.zip": data}}, {"numbers": list(numbers)})


def abdomenct1k_full(numbers=(1, 2, 401, 801), maskless=(2,)) -> FakeSource:
    """The full release: three image-part zips (each with its own top folder, as the
    real ones) and ``Mask.7z`` (``Mask/Case_NNNNN.nii.gz``)."""
    parts = {1: ("5903099", range(1, 401)), 2: ("5903846", range(401, 801)), 3: ("5903769", range(801, 1063))}
    records: dict[str, dict[str, bytes]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for part, (record, span) in parts.items():
            folder = tmp / f"part{part}"
            folder.mkdir()
            for n in numbers:
                if n in span:
                    image, _ = _pair_arrays(n, (1, 2, 3, 4))
                    write_nifti(folder / f"AbdomenCT-1K-ImagePart{part}" / f"Case_{n:05d}_0000.nii.gz", image)
            records.setdefault(record, {})[f"AbdomenCT-1K-ImagePart{part}.zip"] = _zip(folder)
        masks = tmp / "masks"
        for n in numbers:
            if n not in maskless:
                write_nifti(masks / "Mask" / f"Case_{n:05d}.nii.gz", _pair_arrays(n, (1, 2, 3, 4))[1])
        records["5903769"]["Mask.7z"] = _7z(masks)
    return FakeSource(records, {"numbers": list(numbers), "maskless": list(maskless)})


# -- local folders -------------------------------------------------------------------

def nnunet_folder(root, style: str = "v2") -> Path:
    """``v2``: nnU-Net v2 (``<case>_0000`` images, ``labels`` name -> value, no training
    list, stems ``liver_0``, ``liver-1``); ``msd``: MSD Task03-like (images without
    channel suffix, ``labels`` value -> name, a training list, macOS ``._`` junk)."""
    root = Path(root)
    stems = ["liver_0", "liver-1", "liver_2"]
    for i, stem in enumerate(stems):
        image, label = _pair_arrays(i, (1, 2))
        suffix = "_0000" if style == "v2" else ""
        write_nifti(root / "imagesTr" / f"{stem}{suffix}.nii.gz", image)
        write_nifti(root / "labelsTr" / f"{stem}.nii.gz", label)
    if style == "v2":
        meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumour": 2},
                "numTraining": len(stems), "file_ending": ".nii.gz"}
    else:
        (root / "imagesTr" / "._liver_0.nii.gz").write_bytes(b"\0junk")
        (root / "labelsTr" / "._liver_0.nii.gz").write_bytes(b"\0junk")
        meta = {"modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver", "2": "cancer"},
                "training": [{"image": f"./imagesTr/{s}.nii.gz", "label": f"./labelsTr/{s}.nii.gz"} for s in stems]}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def synapse_folder(root, numbers=(1, 2, 21)) -> Path:
    """``RawData/Training/{img,label}/`` as in RawData.zip; labels hold FSMIS organs
    (1, 2, 3, 6) and others (4 gallbladder, 11 pancreas) that become background."""
    base = Path(root) / "RawData" / "Training"
    for n in numbers:
        image, label = _pair_arrays(n, (1, 2, 3, 6, 4, 11), shape=(6, 5, 6))
        write_nifti(base / "img" / f"img{n:04d}.nii.gz", image)
        write_nifti(base / "label" / f"label{n:04d}.nii.gz", label)
    return Path(root)


def cmr_folder(root, numbers=(1, 2, 3)) -> Path:
    """MS-CMRSeg 2019 as released: ``c0t2lge/patient<N>_C0.nii.gz`` (T2 beside it),
    ``c0gt/patient<N>_C0_manual.nii.gz`` (200 LV-MYO, 500 LV-BP, 600 RV)."""
    root = Path(root)
    for n in numbers:
        image, label = _pair_arrays(n, (200, 500, 600))
        write_nifti(root / "c0t2lge" / f"patient{n}_C0.nii.gz", image.astype(np.uint16) + 300)
        write_nifti(root / "c0t2lge" / f"patient{n}_T2.nii.gz", image)
        write_nifti(root / "c0gt" / f"patient{n}_C0_manual.nii.gz", label)
    return root
