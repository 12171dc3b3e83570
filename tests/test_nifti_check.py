"""Truncated NIfTI files: ITK zero-fills a short read, so fsmis checks sizes first."""

import gzip
import math
import re
import struct
import zipfile
import zlib

import numpy as np
import py7zr
import pytest
import SimpleITK as sitk

from fsmis import io, nifti_check
from fsmis.data.archives import extract
from fsmis.errors import InputError
from fsmis.nifti_check import check_complete, check_files, expected_size, parse_header

SIZE = (40, 30, 20)  # x, y, z as ITK counts them
# Independent of the module: NIfTI-1 voxels start at byte 352 (348-byte header + 4-byte
# extension flag), int16 is 2 bytes a voxel.
FULL = 352 + 40 * 30 * 20 * 2


@pytest.fixture(scope="module")
def volume():
    z, y, x = np.mgrid[0:SIZE[2], 0:SIZE[1], 0:SIZE[0]]
    noise = np.random.default_rng(0).integers(0, 50, x.shape)
    return (x * 7 + y * 3 - z * 50 + noise).astype(np.int16)  # no run of zeros to hide a cut


@pytest.fixture
def files(tmp_path, volume):
    """The volume as ``vol.nii.gz`` and ``vol.nii``, written by SimpleITK."""
    image = sitk.GetImageFromArray(volume)
    out = {}
    for name in ("vol.nii.gz", "vol.nii"):
        sitk.WriteImage(image, str(tmp_path / name), useCompression=True)
        out[name] = tmp_path / name
    return out


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _inflated(data: bytes) -> int:
    """Bytes that zlib gets out of (a prefix of) one gzip member."""
    return len(zlib.decompressobj(wbits=31).decompress(data))


def test_itk_writes_what_the_constants_assume(files):
    raw = files["vol.nii"].read_bytes()
    assert struct.unpack_from("<i", raw)[0] == 348 and raw[344:348] == b"n+1\0"
    assert struct.unpack_from("<f", raw, 108)[0] == 352.0
    assert len(raw) == FULL
    assert gzip.decompress(files["vol.nii.gz"].read_bytes()) == raw
    assert expected_size(raw) == FULL


# -- read_image ----------------------------------------------------------------------

def test_intact_files_read_back_equal(files, volume):
    for path in files.values():
        check_complete(path)
        check_complete(path, thorough=False)
        assert np.array_equal(sitk.GetArrayFromImage(io.read_image(path)), volume)


@pytest.mark.parametrize("keep", [0.99, 0.5, 0.01, 200])
def test_truncated_gz_is_refused(files, tmp_path, keep):
    data = files["vol.nii.gz"].read_bytes()
    cut = data[: keep if isinstance(keep, int) else int(len(data) * keep)]
    path = _write(tmp_path / "cut.nii.gz", cut)
    present = _inflated(cut)
    assert 348 <= present < FULL  # each of these cuts still holds the header
    with pytest.raises(InputError, match="truncated") as info:
        io.read_image(path)
    assert info.value.path == str(path)
    assert str(info.value).startswith(f"{path}: not a readable image: truncated: {present} of {FULL} bytes")


@pytest.mark.parametrize("keep", [FULL - 1, FULL // 2, 400])
def test_truncated_plain_nii_is_refused(files, tmp_path, keep):
    path = _write(tmp_path / "cut.nii", files["vol.nii"].read_bytes()[:keep])
    with pytest.raises(InputError, match=re.escape(f"{path}: not a readable image: truncated: {keep} of {FULL} bytes")):
        io.read_image(path)


@pytest.mark.parametrize("name, keep", [("cut.nii.gz", 12), ("cut.nii", 100), ("empty.nii", 0)])
def test_cut_inside_the_header(files, tmp_path, name, keep):
    source = files["vol.nii.gz" if name.endswith(".gz") else "vol.nii"].read_bytes()
    path = _write(tmp_path / name, source[:keep])
    with pytest.raises(InputError, match=r"truncated: \d+ bytes, shorter than the (348-byte )?NIfTI header"):
        io.read_image(path)


def test_read_image_keeps_its_other_errors(tmp_path):
    with pytest.raises(InputError, match="file does not exist"):
        io.read_image(tmp_path / "missing.nii.gz")
    # not NIfTI by name: left to ITK, whose RuntimeError still becomes InputError
    with pytest.raises(InputError, match=r"bad\.mha: not a readable image"):
        io.read_image(_write(tmp_path / "bad.mha", b"not an image"))


# -- gzip streams --------------------------------------------------------------------

def test_multi_member_gzip_passes(files, tmp_path, volume):
    raw = files["vol.nii"].read_bytes()
    path = _write(tmp_path / "multi.nii.gz", gzip.compress(raw[:20000]) + gzip.compress(raw[20000:]))
    check_complete(path)
    check_complete(path, thorough=False)  # last ISIZE disagrees: falls back to inflating
    assert np.array_equal(sitk.GetArrayFromImage(io.read_image(path)), volume)


def test_multi_member_gzip_missing_a_member_fails(files, tmp_path):
    raw = files["vol.nii"].read_bytes()
    path = _write(tmp_path / "multi.nii.gz", gzip.compress(raw[:20000]))
    with pytest.raises(InputError, match=f"truncated: 20000 of {FULL} bytes"):
        check_complete(path, thorough=False)


def test_corrupt_crc_fails(files, tmp_path):
    data = bytearray(files["vol.nii.gz"].read_bytes())
    data[-8] ^= 0xFF  # first byte of the CRC-32 in the trailer
    path = _write(tmp_path / "crc.nii.gz", bytes(data))
    with pytest.raises(InputError, match=r"crc\.nii\.gz: corrupt gzip"):
        check_complete(path)
    check_complete(path, thorough=False)  # by design: the cheap check is about completeness only


def test_trailing_zero_padding_passes(files, tmp_path):
    path = _write(tmp_path / "pad.nii.gz", files["vol.nii.gz"].read_bytes() + b"\0" * 1000)
    check_complete(path)
    check_complete(path, thorough=False)


def test_trailing_garbage_fails(files, tmp_path):
    path = _write(tmp_path / "junk.nii.gz", files["vol.nii.gz"].read_bytes() + b"junk")
    with pytest.raises(InputError, match="corrupt gzip"):
        check_complete(path)


@pytest.mark.parametrize("cut", [8, 1])
def test_missing_trailer_fails(files, tmp_path, cut):
    path = _write(tmp_path / "tail.nii.gz", files["vol.nii.gz"].read_bytes()[:-cut])
    for thorough in (True, False):
        with pytest.raises(InputError, match=f"truncated: the gzip stream ends after {FULL} bytes, before its trailer"):
            check_complete(path, thorough=thorough)


def test_plain_file_longer_than_promised_fails(files, tmp_path):
    path = _write(tmp_path / "long.nii", files["vol.nii"].read_bytes() + b"\0\0")
    with pytest.raises(InputError, match=f"size mismatch: {FULL + 2} bytes, more than the {FULL} bytes"):
        check_complete(path)


def test_content_not_suffix_decides_gzip(files, tmp_path, volume):
    # ITK reads gzip content named .nii (and plain content named .nii.gz): so must the check
    gz_as_nii = _write(tmp_path / "gz.nii", files["vol.nii.gz"].read_bytes())
    check_complete(gz_as_nii)
    cut = _write(tmp_path / "cutgz.nii", files["vol.nii.gz"].read_bytes()[:5000])
    with pytest.raises(InputError, match="truncated"):
        check_complete(cut)
    plain_as_gz = _write(tmp_path / "plain.nii.gz", files["vol.nii"].read_bytes()[:9000])
    with pytest.raises(InputError, match=f"truncated: 9000 of {FULL} bytes"):
        check_complete(plain_as_gz)


# -- cheap check ---------------------------------------------------------------------

def test_cheap_check_does_not_inflate_an_intact_file(files, monkeypatch):
    def inflate(path):
        raise AssertionError("the cheap check inflated the whole file")

    monkeypatch.setattr(nifti_check, "_check_gzip_thorough", inflate)
    check_complete(files["vol.nii.gz"], thorough=False)


def test_cheap_check_catches_truncation(files, tmp_path):
    data = files["vol.nii.gz"].read_bytes()
    path = _write(tmp_path / "cut.nii.gz", data[: len(data) // 2])
    with pytest.raises(InputError, match=f"truncated: {_inflated(data[: len(data) // 2])} of {FULL} bytes"):
        check_complete(path, thorough=False)


def test_only_nifti_names_are_checked(tmp_path):
    for name in ("x.mha", "x.nrrd", "x.hdr", "x.nii.gz.part", "x.txt"):
        check_complete(_write(tmp_path / name, b"\x1f\x8bnot nifti at all"))
    check_complete(tmp_path / "missing.mha")
    for name in ("X.NII.GZ", "Y.Nii"):
        with pytest.raises(InputError):
            check_complete(_write(tmp_path / name, b"\x1f\x8bnot nifti at all"))
    with pytest.raises(InputError, match="file does not exist"):
        check_complete(tmp_path / "missing.nii.gz")


# -- headers -------------------------------------------------------------------------

def _nifti1(order: str, dim, bitpix: int, vox_offset: float, datatype: int = 4) -> bytes:
    h = bytearray(348)
    struct.pack_into(order + "i", h, 0, 348)
    struct.pack_into(order + "8h", h, 40, *dim)
    struct.pack_into(order + "hh", h, 70, datatype, bitpix)
    struct.pack_into(order + "f", h, 108, vox_offset)
    h[344:348] = b"n+1\0"
    return bytes(h)


def _nifti2(order: str, dim, bitpix: int, vox_offset: int, datatype: int = 4) -> bytes:
    h = bytearray(540)
    struct.pack_into(order + "i", h, 0, 540)
    h[4:12] = b"n+2\0\r\n\x1a\n"
    struct.pack_into(order + "hh", h, 12, datatype, bitpix)
    struct.pack_into(order + "8q", h, 16, *dim)
    struct.pack_into(order + "q", h, 168, vox_offset)
    return bytes(h)


@pytest.mark.parametrize("order", ["<", ">"])
def test_nifti1_header_both_byte_orders(order):
    h = _nifti1(order, (3, 40, 30, 20, 1, 1, 1, 1), 16, 352.0)
    header = parse_header(h)
    assert (header.version, header.shape, header.bitpix, header.vox_offset) == ("NIfTI-1", (40, 30, 20), 16, 352)
    assert expected_size(h) == FULL
    assert expected_size(h + b"extra bytes are ignored") == FULL
    # an extension moves the voxels; dim beyond dim[0] is ignored
    assert expected_size(_nifti1(order, (2, 5, 7, 9, 9, 9, 9, 9), 32, 1024.0)) == 1024 + 5 * 7 * 4
    # vox_offset 0 (seen in the wild) still means the voxels follow header and flag
    assert expected_size(_nifti1(order, (1, 10, 0, 0, 0, 0, 0, 0), 8, 0.0)) == 352 + 10
    # RGB24, an odd voxel count of 1-bit voxels: whole bytes
    assert expected_size(_nifti1(order, (4, 3, 3, 3, 2, 1, 1, 1), 24, 352.0, 128)) == 352 + 54 * 3
    assert expected_size(_nifti1(order, (1, 9, 1, 1, 1, 1, 1, 1), 1, 352.0, 1)) == 352 + 2


@pytest.mark.parametrize("order", ["<", ">"])
def test_nifti2_header_both_byte_orders(order):
    dim = (5, 64, 48, 3, 1, 2, 1, 1)
    h = _nifti2(order, dim, 64, 544, datatype=64)
    header = parse_header(h)
    assert (header.version, header.shape, header.bitpix) == ("NIfTI-2", (64, 48, 3, 1, 2), 64)
    assert expected_size(h) == 544 + math.prod(dim[1:6]) * 8
    assert expected_size(_nifti2(order, dim, 64, 4096)) == 4096 + math.prod(dim[1:6]) * 8
    # sizes past int16 and past 4 GiB, which only NIfTI-2 can hold
    big = (3, 100_000, 100_000, 1, 1, 1, 1, 1)
    assert expected_size(_nifti2(order, big, 8, 544)) == 544 + 10**10


@pytest.mark.parametrize("order", ["<", ">"])
def test_nifti2_file_truncated(tmp_path, order):
    data = _nifti2(order, (3, 10, 10, 10, 1, 1, 1, 1), 16, 544) + b"\0" * 4 + bytes(range(200)) * 10
    assert len(data) == 544 + 2000
    check_complete(_write(tmp_path / "ok.nii", data))
    check_complete(_write(tmp_path / "ok.nii.gz", gzip.compress(data)), thorough=False)
    with pytest.raises(InputError, match="truncated: 1500 of 2544 bytes"):
        check_complete(_write(tmp_path / "cut.nii", data[:1500]))


@pytest.mark.parametrize("header, problem", [
    (b"\x7b\0\0\0" + bytes(400), "not a NIfTI-1 or NIfTI-2 header"),
    (b"\x5c\x01", "too short"),
    (struct.pack("<i", 348) + bytes(100), "needs 348 bytes"),
    (_nifti1("<", (0, 1, 1, 1, 1, 1, 1, 1), 16, 352.0), "dim\\[0\\] is 0"),
    (_nifti1("<", (2, 4, -4, 1, 1, 1, 1, 1), 16, 352.0), "negative size"),
    (_nifti1("<", (2, 4, 4, 1, 1, 1, 1, 1), 0, 352.0), "bitpix is 0"),
    (_nifti1("<", (2, 4, 4, 1, 1, 1, 1, 1), 16, float("nan")), "vox_offset is nan"),
])
def test_bad_headers(header, problem):
    with pytest.raises(ValueError, match=problem):
        parse_header(header)


def test_bad_header_in_a_file_names_it(tmp_path):
    path = _write(tmp_path / "odd.nii", b"\x7b\0\0\0" + bytes(400))
    with pytest.raises(InputError, match=r"odd\.nii: not a NIfTI-1 or NIfTI-2 header"):
        check_complete(path)


# -- check_files ---------------------------------------------------------------------

def test_check_files_all_good(files, tmp_path):
    other = _write(tmp_path / "notes.txt", b"anything")
    assert check_files([*files.values(), other]) == 2
    assert check_files([]) == 0


def test_check_files_skips_macos_metadata(files, tmp_path):
    junk = _write(tmp_path / "._vol.nii.gz", b"\0junk")  # as in MSD folders
    assert check_files([files["vol.nii.gz"], junk]) == 1
    with pytest.raises(InputError):
        check_complete(junk)  # asked directly, it is still checked


def test_check_files_one_bad_raises_its_own_error(files, tmp_path):
    bad = _write(tmp_path / "bad.nii", files["vol.nii"].read_bytes()[:1000])
    with pytest.raises(InputError) as info:
        check_files([files["vol.nii.gz"], bad, files["vol.nii"]])
    assert info.value.path == str(bad) and info.value.problem.startswith(f"truncated: 1000 of {FULL} bytes")


def test_check_files_collects_all_bad_ones(files, tmp_path):
    data = files["vol.nii.gz"].read_bytes()
    sub = tmp_path / "raw"
    sub.mkdir()
    bad = [_write(sub / f"case{i:02d}.nii.gz", data[: 100 * (i + 3)]) for i in range(12)]
    with pytest.raises(InputError) as info:
        check_files([files["vol.nii.gz"], *bad, files["vol.nii"]])
    message = str(info.value)
    assert message.startswith(f"{sub}: 12 of 14 NIfTI files are incomplete or unreadable:\n")
    for path in bad[:10]:
        assert f"  {path}: truncated" in message
    assert str(bad[10]) not in message and message.endswith("... and 2 more")


# -- archives ------------------------------------------------------------------------

def _zip(path, members: dict):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _7z(path, members: dict):
    with py7zr.SevenZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(data, name)
    return path


@pytest.mark.parametrize("make", [_zip, _7z], ids=["zip", "7z"])
def test_archive_with_truncated_nifti_is_not_unpacked(files, tmp_path, make):
    data = files["vol.nii.gz"].read_bytes()
    archive = make(tmp_path / ("a.zip" if make is _zip else "a.7z"), {
        "imagesTr/good.nii.gz": data,
        "labelsTr/cut.nii.gz": data[: len(data) // 2],
        "readme.txt": b"hi",
    })
    with pytest.raises(InputError) as info:
        extract(archive, tmp_path / "out")
    assert info.value.path == str(archive)
    assert re.match(f"member 'labelsTr/cut.nii.gz': truncated: \\d+ of {FULL} bytes", info.value.problem)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([archive.name, "vol.nii", "vol.nii.gz"])


def test_archive_with_intact_nifti_unpacks(files, tmp_path, volume):
    archive = _zip(tmp_path / "a.zip", {"img/a.nii.gz": files["vol.nii.gz"].read_bytes(),
                                         "img/a.nii": files["vol.nii"].read_bytes()})
    out = extract(archive, tmp_path / "out")
    assert [p.relative_to(tmp_path / "out").as_posix() for p in out] == ["img/a.nii.gz", "img/a.nii"]
    assert np.array_equal(sitk.GetArrayFromImage(io.read_image(out[0])), volume)


def test_archive_filter_checks_only_what_it_unpacks(files, tmp_path):
    data = files["vol.nii.gz"].read_bytes()
    archive = _zip(tmp_path / "a.zip", {"good/a.nii.gz": data, "other/cut.nii.gz": data[:300]})
    assert len(extract(archive, tmp_path / "out", members="good/*")) == 1


def test_archive_macos_metadata_is_not_checked(files, tmp_path):
    archive = _zip(tmp_path / "a.zip", {"img/a.nii.gz": files["vol.nii.gz"].read_bytes(),
                                         "img/._a.nii.gz": b"\0junk", "__MACOSX/img/._a.nii.gz": b"\0junk"})
    assert len(extract(archive, tmp_path / "out")) == 3
