"""Safe unpacking of downloaded .zip and .7z archives.

Guarantees of ``extract``:

* Every member name is checked before anything is written: absolute paths, drive
  letters, ``..`` components (with ``/`` or ``\\`` as separator), symlinks and other
  special files, and duplicate names are refused with an error naming archive and member.
* Members are unpacked into a temporary folder beside ``dest_dir`` and only then moved
  into place, so an interrupted or failed extraction (corrupt data, CRC error) leaves
  no partial content in ``dest_dir``. When ``dest_dir`` does not exist yet it appears in
  one atomic rename.
* An existing file in ``dest_dir`` is never overwritten: if its bytes equal the
  member's (compared byte by byte) it is kept; otherwise extraction stops, before any
  file is moved, with an error naming both.
* Unpacked .nii / .nii.gz members (other than macOS ``._`` / ``__MACOSX`` metadata)
  must hold every byte their header promises (see ``fsmis.nifti_check``), since ITK would
  read a truncated one with zeros for the rest; otherwise extraction stops, before any
  file is moved, naming archive and member.
"""

from __future__ import annotations

import filecmp
import fnmatch
import lzma
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fsmis.errors import InputError
from fsmis.nifti_check import check_complete, is_macos_metadata, is_nifti_name

_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class _Member:
    name: str  # as stored in the archive
    rel: PurePosixPath  # where it goes below dest_dir
    is_dir: bool


def _safe_rel(archive: Path, name: str) -> PurePosixPath:
    """The member's path below the target folder, or InputError if it could escape."""

    def refuse(why: str):
        return InputError(archive, f"member {name!r} {why}; refusing to extract this archive")

    # Archives made on Windows may use backslashes: treat them as separators too.
    posix = name.replace("\\", "/")
    if "\x00" in name:
        raise refuse("contains a NUL byte")
    if posix.startswith("/") or _DRIVE.match(posix):
        raise refuse("is an absolute path")
    parts = [p for p in posix.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise refuse("contains '..' and could land outside the target folder")
    if not parts:
        raise refuse("has an empty name")
    return PurePosixPath(*parts)


def _zip_members(archive: Path, zf: zipfile.ZipFile) -> list[_Member]:
    members = []
    for info in zf.infolist():
        kind = stat.S_IFMT(info.external_attr >> 16)  # unix mode bits, 0 if not recorded
        if kind == stat.S_IFLNK:
            raise InputError(archive, f"member {info.filename!r} is a symlink; refusing to extract this archive")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise InputError(archive, f"member {info.filename!r} is a special file; refusing to extract this archive")
        if info.flag_bits & 0x1:
            raise InputError(archive, f"member {info.filename!r} is encrypted")
        members.append(_Member(info.filename, _safe_rel(archive, info.filename), info.is_dir()))
    return members


def _7z_members(archive: Path, szf) -> list[_Member]:
    members = []
    for f in szf.files:
        if f.is_symlink or f.is_junction or f.is_socket:
            raise InputError(
                archive, f"member {f.filename!r} is a link or special file; refusing to extract this archive"
            )
        members.append(_Member(f.filename, _safe_rel(archive, f.filename), f.is_directory))
    return members


def _select(archive: Path, members: list[_Member], patterns) -> list[_Member]:
    seen: dict[PurePosixPath, str] = {}
    for m in members:
        if m.rel in seen and not m.is_dir:  # which copy wins would be arbitrary
            raise InputError(archive, f"members {seen[m.rel]!r} and {m.name!r} have the same path")
        seen[m.rel] = m.name
    if patterns is None:
        return members
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    chosen = [m for m in members if any(fnmatch.fnmatchcase(str(m.rel), p) for p in patterns)]
    for p in patterns:  # a pattern that matches nothing is a config mistake: say so
        if not any(fnmatch.fnmatchcase(str(m.rel), p) for m in members):
            examples = ", ".join(str(m.rel) for m in members[:5])
            raise InputError(archive, f"no member matches {p!r} (members look like: {examples})")
    return chosen


def _unpack_zip(archive: Path, zf: zipfile.ZipFile, chosen: list[_Member], tmp: Path) -> None:
    for m in chosen:
        out = tmp / m.rel
        if m.is_dir:
            out.mkdir(parents=True, exist_ok=True)
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            with zf.open(m.name) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)  # zipfile checks the CRC at the end
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as err:
            raise InputError(archive, f"corrupt member {m.name!r}: {err}") from None


def _unpack_7z(archive: Path, szf, chosen: list[_Member], tmp: Path) -> None:
    import py7zr

    try:
        szf.extract(path=tmp, targets=[m.name for m in chosen])
    except (py7zr.exceptions.ArchiveError, lzma.LZMAError, EOFError, zlib.error) as err:
        raise InputError(archive, f"corrupt data: {type(err).__name__}: {err}") from None
    except py7zr.exceptions.PasswordRequired:
        raise InputError(archive, "is encrypted") from None
    missing = [m.name for m in chosen if not (tmp / m.rel).exists()]
    if missing:  # e.g. a backslash name py7zr wrote elsewhere: do not guess
        raise InputError(archive, f"members not extracted where expected: {missing[:5]}")


def _check_nifti(archive: Path, chosen: list[_Member], tmp: Path) -> None:
    """Refuse a truncated NIfTI member: the archive's CRC only covers the bytes it was given."""
    for m in chosen:
        if m.is_dir or not is_nifti_name(m.name) or is_macos_metadata(m.rel):  # zips made on macOS
            continue
        try:
            check_complete(tmp / m.rel, thorough=True)
        except InputError as err:  # name the member, not the temporary copy about to vanish
            raise InputError(archive, f"member {m.name!r}: {err.problem}") from None


def _move_into(archive: Path, chosen: list[_Member], tmp: Path, dest: Path) -> None:
    """Move extracted files from ``tmp`` into the existing ``dest``; all checks come first."""
    real_dest = dest.resolve()
    for m in chosen:
        target = dest / m.rel
        # a symlinked subfolder of dest must not carry files elsewhere (resolve() follows
        # the existing part of the path)
        if not target.parent.resolve().is_relative_to(real_dest):
            raise InputError(target, f"lies outside {dest} through a symlink; refusing to extract {archive}")
        for parent in list(m.rel.parents)[:-1]:
            if (dest / parent).exists() and not (dest / parent).is_dir():
                raise InputError(dest / parent, f"is a file but {archive} has a folder there")
        if m.is_dir or (not target.exists() and not target.is_symlink()):
            continue
        if target.is_symlink() or not target.is_file() or not filecmp.cmp(tmp / m.rel, target, shallow=False):
            raise InputError(
                target, f"already exists with different content than member {m.name!r} of {archive}; "
                "refusing to overwrite it (move it away to extract again)"
            )
    for m in chosen:
        target = dest / m.rel
        if m.is_dir:
            target.mkdir(parents=True, exist_ok=True)
        elif not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / m.rel, target)


def _open(archive: Path):
    suffix = archive.suffix.lower()
    try:
        if suffix == ".zip":
            return zipfile.ZipFile(archive), _zip_members, _unpack_zip
        if suffix == ".7z":
            import py7zr  # only needed for 7z archives

            try:
                return py7zr.SevenZipFile(archive, mode="r"), _7z_members, _unpack_7z
            except (py7zr.exceptions.ArchiveError, lzma.LZMAError, EOFError) as err:
                raise InputError(archive, f"not a readable 7z archive: {type(err).__name__}: {err}") from None
    except zipfile.BadZipFile as err:
        raise InputError(archive, f"not a readable zip archive: {err}") from None
    raise InputError(archive, f"unsupported archive type {suffix!r} (expected .zip or .7z)")


def extract(archive, dest_dir, members=None) -> list[Path]:
    """Unpack ``archive`` (.zip or .7z) into ``dest_dir``; return the files, in archive order.

    ``members``: optional glob pattern(s) (``fnmatch``, matched against the member's path;
    ``*`` also matches ``/``) selecting what to unpack, e.g. ``["TrainMask/*"]``; each
    pattern must match at least one member. Files already in ``dest_dir`` with identical
    bytes are kept and listed.
    """
    archive, dest = Path(archive), Path(dest_dir)
    if not archive.is_file():
        raise InputError(archive, "archive not found")
    if dest.exists() and not dest.is_dir():
        raise InputError(dest, f"is not a folder; cannot extract {archive} into it")
    handle, list_members, unpack = _open(archive)
    with handle:
        chosen = _select(archive, list_members(archive, handle), members)
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Beside dest (same filesystem) so that moving into place is a rename.
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extracting-", dir=dest.parent))
        try:
            unpack(archive, handle, chosen, tmp)
            _check_nifti(archive, chosen, tmp)
            if not dest.exists():
                os.rename(tmp, dest)  # atomic: dest appears complete or not at all
            else:
                _move_into(archive, chosen, tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return [dest / m.rel for m in chosen if not m.is_dir]
