"""Atomic file writing and checked reading shared by all stages.

Outputs are written to a temporary file in the target folder and renamed into place,
so an interrupted job never leaves a file that looks finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import SimpleITK as sitk

from fsmis.errors import InputError
from fsmis.nifti_check import check_complete


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # keep the full suffix (e.g. .nii.gz) so writers pick the right format
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        # mkstemp makes 0600 files; outputs get the usual permissions (0666 & ~umask)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read a medical image; a missing, truncated or corrupt file raises ``InputError``.

    NIfTI files are first checked to hold every byte their header promises (the whole
    gzip stream is inflated and its CRC checked): ITK zero-fills a short read instead of
    failing, which would turn a truncated download into an image with a black tail.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file does not exist")
    try:
        check_complete(path, thorough=True)
    except InputError as err:  # same lead-in as an ITK read failure: callers match one phrase
        raise InputError(path, f"not a readable image: {err.problem}") from None
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as err:  # SimpleITK reports corrupt files as RuntimeError
        first = str(err).strip().splitlines()
        detail = first[-1] if first else "unreadable"
        raise InputError(path, f"not a readable image (corrupt or truncated?): {detail}") from None


def write_image(image: sitk.Image, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)


def write_json(obj, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike):
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "file does not exist") from None
    except json.JSONDecodeError as err:
        raise InputError(path, f"invalid JSON: {err}") from None


def write_tsv(df, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False)
