"""Safe unpacking of .zip and .7z archives."""

import os
import stat
import zipfile

import py7zr
import pytest

from fsmis.data.archives import extract
from fsmis.errors import InputError

FILES = {
    "Train/1/T2SPIR/DICOM_anon/IMG-0001.dcm": b"dicom-1" * 50,
    "Train/1/T2SPIR/Ground/IMG-0001.png": b"png-1" * 50,
    "Train/2/T2SPIR/DICOM_anon/IMG-0001.dcm": b"dicom-2" * 50,
    "readme.txt": b"hello\n",
}


def make_zip(path, files, compression=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in files.items():
            zf.writestr(zipfile.ZipInfo(name) if isinstance(name, str) else name, data)
    return path


def make_7z(path, files):
    with py7zr.SevenZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(data, name)
    return path


def tree(folder):
    """Every path below ``folder`` (files and folders), relative."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def assert_nothing_written(tmp_path, archive):
    assert tree(tmp_path) == [archive.name]  # no dest, no leftover temp folder, no escapee
    assert not (tmp_path.parent / "evil").exists()


@pytest.mark.parametrize("make", [make_zip, make_7z], ids=["zip", "7z"])
def test_extracts_all_files(tmp_path, make):
    archive = make(tmp_path / ("a.zip" if make is make_zip else "a.7z"), FILES)
    out = extract(archive, tmp_path / "out")
    assert [p.relative_to(tmp_path / "out").as_posix() for p in out] == list(FILES)
    for name, data in FILES.items():
        assert (tmp_path / "out" / name).read_bytes() == data
    assert not [p for p in os.listdir(tmp_path) if ".extracting-" in p]


@pytest.mark.parametrize("make", [make_zip, make_7z], ids=["zip", "7z"])
def test_members_filter(tmp_path, make):
    archive = make(tmp_path / ("a.zip" if make is make_zip else "a.7z"), FILES)
    out = extract(archive, tmp_path / "out", members=["Train/*/T2SPIR/Ground/*", "readme.txt"])
    assert [p.relative_to(tmp_path / "out").as_posix() for p in out] == [
        "Train/1/T2SPIR/Ground/IMG-0001.png",
        "readme.txt",
    ]
    assert not (tmp_path / "out" / "Train" / "2").exists()
    with pytest.raises(InputError, match=r"no member matches 'Masks/\*'"):
        extract(archive, tmp_path / "out2", members="Masks/*")


@pytest.mark.parametrize(
    "name, problem",
    [
        ("../evil", "'..'"),
        ("sub/../../evil", "'..'"),
        ("..\\evil", "'..'"),
        ("/tmp/evil", "absolute"),
        ("C:/evil", "absolute"),
    ],
)
def test_escaping_zip_member_is_refused_before_writing(tmp_path, name, problem):
    archive = make_zip(tmp_path / "evil.zip", {"good.txt": b"ok", name: b"pwned"})
    with pytest.raises(InputError, match=problem) as info:
        extract(archive, tmp_path / "out")
    assert str(archive) in str(info.value) and repr(name) in str(info.value)
    assert_nothing_written(tmp_path, archive)


def test_zip_symlink_member_is_refused(tmp_path):
    link = zipfile.ZipInfo("innocent")
    link.create_system = 3  # unix
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = make_zip(tmp_path / "link.zip", {"good.txt": b"ok", link: b"/etc/passwd"})
    with pytest.raises(InputError, match=r"'innocent' is a symlink"):
        extract(archive, tmp_path / "out")
    assert_nothing_written(tmp_path, archive)


def test_7z_symlink_member_is_refused(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "good.txt").write_bytes(b"ok")
    os.symlink("/etc/passwd", src / "innocent")
    archive = tmp_path / "link.7z"
    with py7zr.SevenZipFile(archive, "w") as zf:
        zf.write(src / "good.txt", "good.txt")
        zf.write(src / "innocent", "innocent")  # stored as a link, not followed
    with pytest.raises(InputError, match=r"'innocent' is a link"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_existing_different_file_is_not_overwritten(tmp_path):
    archive = make_zip(tmp_path / "a.zip", FILES)
    out = tmp_path / "out"
    out.mkdir()
    (out / "readme.txt").write_bytes(b"my notes\n")
    with pytest.raises(InputError, match=r"readme\.txt: already exists with different content"):
        extract(archive, out)
    assert tree(out) == ["readme.txt"]  # nothing moved in, the file kept
    assert (out / "readme.txt").read_bytes() == b"my notes\n"


def test_existing_identical_file_is_kept(tmp_path):
    archive = make_zip(tmp_path / "a.zip", FILES)
    out = tmp_path / "out"
    out.mkdir()
    (out / "readme.txt").write_bytes(FILES["readme.txt"])
    (out / "other.txt").write_bytes(b"unrelated")
    assert len(extract(archive, out)) == len(FILES)
    assert (out / "other.txt").read_bytes() == b"unrelated"
    assert len(extract(archive, out)) == len(FILES)  # idempotent rerun


@pytest.mark.parametrize("dest_exists", [False, True])
def test_corrupt_member_leaves_no_partial_content(tmp_path, dest_exists):
    files = {"a.bin": b"A" * 5000, "b.bin": b"B" * 5000, "c.bin": b"C" * 5000}
    archive = make_zip(tmp_path / "a.zip", files, zipfile.ZIP_STORED)
    raw = archive.read_bytes()
    archive.write_bytes(raw.replace(b"B" * 5000, b"X" * 5000))  # CRC of the middle member fails
    out = tmp_path / "out"
    if dest_exists:
        out.mkdir()
    with pytest.raises(InputError, match=r"a\.zip: corrupt member 'b\.bin'"):
        extract(archive, out)
    assert tree(tmp_path) == (["a.zip", "out"] if dest_exists else ["a.zip"])


@pytest.mark.parametrize("suffix", [".zip", ".7z"])
def test_corrupt_archive_names_the_file(tmp_path, suffix):
    archive = tmp_path / f"broken{suffix}"
    archive.write_bytes(b"this is not an archive" * 10)
    with pytest.raises(InputError, match=rf"broken\{suffix}: not a readable"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_truncated_7z_names_the_file(tmp_path):
    archive = make_7z(tmp_path / "a.7z", {"x.bin": os.urandom(20_000)})
    archive.write_bytes(archive.read_bytes()[:5000])
    with pytest.raises(InputError, match=r"a\.7z"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unsupported_type_and_duplicates(tmp_path):
    tar = tmp_path / "a.tar"
    tar.write_bytes(b"")
    with pytest.raises(InputError, match="unsupported archive type"):
        extract(tar, tmp_path / "out")
    archive = tmp_path / "dup.zip"
    with pytest.warns(UserWarning):  # zipfile warns about the duplicate name
        make_zip(archive, {"x.txt": b"1", zipfile.ZipInfo("x.txt"): b"2"})
    with pytest.raises(InputError, match="same path"):
        extract(archive, tmp_path / "out")


def test_7z_crc_error_leaves_no_partial_content(tmp_path):
    archive = make_7z(tmp_path / "a.7z", {"a.bin": os.urandom(20_000), "b.bin": os.urandom(20_000)})
    raw = bytearray(archive.read_bytes())
    raw[100] ^= 0x01  # inside the compressed stream, past the 32-byte signature header
    archive.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"a\.7z: corrupt data"):
        extract(archive, tmp_path / "out")
    assert tree(tmp_path) == ["a.7z"]


def test_escaping_7z_member_is_refused(tmp_path):
    archive = tmp_path / "evil.7z"
    with py7zr.SevenZipFile(archive, "w") as zf:
        zf.writestr(b"ok", "good.txt")
        zf._writestr(b"pwned", "../evil")  # the public writer refuses such names itself
    with pytest.raises(InputError, match=r"'\.\./evil' contains '\.\.'"):
        extract(archive, tmp_path / "out")
    assert_nothing_written(tmp_path, archive)
