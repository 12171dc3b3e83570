"""The Zenodo downloader against a fake Zenodo on 127.0.0.1 (tests/fake_zenodo.py)."""

import hashlib
import logging
import os

import pytest
from fake_zenodo import FakeZenodo, fake_zenodo  # noqa: F401  (fixture)

from fsmis.data import zenodo
from fsmis.data.zenodo import ChecksumError, ZenodoError, download, fetch_record_files, record_files

PAYLOAD = os.urandom(300_000)
OTHER = b"second file\n" * 100
MD5 = hashlib.md5(PAYLOAD).hexdigest()
FAST = dict(backoff_s=0.001, timeout_s=5)


@pytest.fixture
def server(fake_zenodo):
    fake_zenodo.add_record(3431873, {"CHAOS_Train_Sets.zip": PAYLOAD, "readme.txt": OTHER})
    return fake_zenodo


def test_record_files_lists_size_md5_and_url(server):
    files = {f.name: f for f in record_files(3431873, api_base=server.api_base)}
    assert set(files) == {"CHAOS_Train_Sets.zip", "readme.txt"}
    f = files["CHAOS_Train_Sets.zip"]
    assert (f.size, f.md5) == (len(PAYLOAD), MD5)
    assert f.url.startswith(server.api_base) and f.url.endswith("/content")


def test_api_base_from_environment_and_links_content(monkeypatch):
    with FakeZenodo({7: {"a.bin": b"abc"}}, link_key="content") as server:
        monkeypatch.setenv("FSMIS_ZENODO_API", server.api_base)
        (f,) = record_files(7)
        assert f.md5 == hashlib.md5(b"abc").hexdigest()
        assert server.record_count(7) == 1


def test_download_verifies_and_writes_sidecar(server, tmp_path):
    path = download(3431873, "CHAOS_Train_Sets.zip", tmp_path / "raw", api_base=server.api_base, **FAST)
    assert path == tmp_path / "raw" / "CHAOS_Train_Sets.zip"
    assert path.read_bytes() == PAYLOAD
    assert (tmp_path / "raw" / "CHAOS_Train_Sets.zip.md5").read_text().split()[0] == MD5
    assert not (tmp_path / "raw" / "CHAOS_Train_Sets.zip.part").exists()
    assert server.ranges("CHAOS_Train_Sets.zip") == [None]


def test_rerun_does_not_download_again(server, tmp_path):
    for _ in range(2):
        download(3431873, "CHAOS_Train_Sets.zip", tmp_path, api_base=server.api_base, **FAST)
    assert server.count("CHAOS_Train_Sets.zip") == 1
    # without the sidecar the file is re-verified by its md5, still not downloaded
    (tmp_path / "CHAOS_Train_Sets.zip.md5").unlink()
    download(3431873, "CHAOS_Train_Sets.zip", tmp_path, api_base=server.api_base, **FAST)
    assert server.count("CHAOS_Train_Sets.zip") == 1
    assert (tmp_path / "CHAOS_Train_Sets.zip.md5").exists()


def test_file_of_wrong_size_is_downloaded_again(server, tmp_path):
    download(3431873, "CHAOS_Train_Sets.zip", tmp_path, api_base=server.api_base, **FAST)
    (tmp_path / "CHAOS_Train_Sets.zip").write_bytes(PAYLOAD[:1000])
    path = download(3431873, "CHAOS_Train_Sets.zip", tmp_path, api_base=server.api_base, **FAST)
    assert path.read_bytes() == PAYLOAD
    assert server.count("CHAOS_Train_Sets.zip") == 2


def test_truncated_transfer_is_resumed_with_range(server, tmp_path):
    server.truncate_next("CHAOS_Train_Sets.zip", after_bytes=100_000)
    path = download(3431873, "CHAOS_Train_Sets.zip", tmp_path, api_base=server.api_base, **FAST)
    assert server.ranges("CHAOS_Train_Sets.zip") == [None, "bytes=100000-"]
    assert server.requests[-1].status == 206
    assert server.requests[-1].bytes_sent == len(PAYLOAD) - 100_000
    assert path.read_bytes() == PAYLOAD


def test_partial_file_from_an_earlier_run_is_resumed(server, tmp_path):
    (tmp_path / "CHAOS_Train_Sets.zip.part").write_bytes(PAYLOAD[:12345])
    path = download(3431873, "CHAOS_Train_Sets.zip", tmp_path, api_base=server.api_base, **FAST)
    assert server.ranges("CHAOS_Train_Sets.zip") == ["bytes=12345-"]
    assert path.read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.truncate_next("CHAOS_Train_Sets.zip", after_bytes=100_000)
    server.ignore_range("CHAOS_Train_Sets.zip")
    path = download(3431873, "CHAOS_Train_Sets.zip", tmp_path, api_base=server.api_base, **FAST)
    assert server.ranges("CHAOS_Train_Sets.zip") == [None, "bytes=100000-"]
    assert server.requests[-1].status == 200
    assert path.read_bytes() == PAYLOAD


def test_server_error_is_retried(server, tmp_path):
    server.fail_next("CHAOS_Train_Sets.zip", n=2, status=503)
    path = download(3431873, "CHAOS_Train_Sets.zip", tmp_path, api_base=server.api_base, **FAST)
    assert [s.status for s in server.requests if s.name] == [503, 503, 200]
    assert path.read_bytes() == PAYLOAD


def test_permanent_server_error_fails_clearly(server, tmp_path):
    server.fail_next("CHAOS_Train_Sets.zip", n=100, status=503)
    with pytest.raises(ZenodoError, match=r"CHAOS_Train_Sets\.zip.*failed after 3 attempts.*HTTP 503"):
        download(3431873, "CHAOS_Train_Sets.zip", tmp_path, api_base=server.api_base, retries=2, **FAST)
    assert server.count("CHAOS_Train_Sets.zip") == 3
    assert not (tmp_path / "CHAOS_Train_Sets.zip").exists()


@pytest.fixture
def sleeps(monkeypatch):
    """Record the pauses the downloader asks for instead of sleeping them."""
    slept = []
    monkeypatch.setattr(zenodo.time, "sleep", slept.append)
    return slept


def test_checksum_mismatch_is_retried_once_then_fails_naming_file_and_both_md5s(server, tmp_path, sleeps):
    server.corrupt("CHAOS_Train_Sets.zip")  # always
    # default retries and back-off: the md5 rule must not fall back on the transient one
    with pytest.raises(ChecksumError) as info:
        download(3431873, "CHAOS_Train_Sets.zip", tmp_path, api_base=server.api_base, timeout_s=5)
    bad = hashlib.md5(bytes([PAYLOAD[0] ^ 0xFF]) + PAYLOAD[1:]).hexdigest()
    message = str(info.value)
    assert "CHAOS_Train_Sets.zip" in message and MD5 in message and bad in message
    assert "after 2 complete downloads" in message
    assert (info.value.expected, info.value.actual) == (MD5, bad)
    # both transfers complete and from zero: one retry, not the transient budget of 5
    assert server.ranges("CHAOS_Train_Sets.zip") == [None, None]
    assert all(s.bytes_sent == len(PAYLOAD) for s in server.requests if s.name)
    assert sleeps == []  # retried at once, no back-off
    assert sorted(os.listdir(tmp_path)) == []  # no final file, no .part, no sidecar


def test_checksum_mismatch_once_is_retried_from_zero(server, tmp_path, sleeps):
    server.corrupt("CHAOS_Train_Sets.zip", times=1)
    path = download(3431873, "CHAOS_Train_Sets.zip", tmp_path, api_base=server.api_base, timeout_s=5)
    assert server.ranges("CHAOS_Train_Sets.zip") == [None, None]
    assert path.read_bytes() == PAYLOAD
    assert zenodo.file_digest(path) == MD5
    assert (tmp_path / "CHAOS_Train_Sets.zip.md5").read_text().split()[0] == MD5
    assert sorted(os.listdir(tmp_path)) == ["CHAOS_Train_Sets.zip", "CHAOS_Train_Sets.zip.md5"]
    assert sleeps == []


def test_md5_retry_and_transient_retries_are_separate_budgets(server, tmp_path, sleeps):
    # The first transfer breaks after a corrupt prefix and is resumed (the one transient
    # retry allowed); the resumed file fails its md5, so the fresh download from zero
    # (the md5 retry) follows, which has its own transient budget and no pause.
    server.corrupt("CHAOS_Train_Sets.zip", times=1)
    server.truncate_next("CHAOS_Train_Sets.zip", after_bytes=100_000)
    path = download(3431873, "CHAOS_Train_Sets.zip", tmp_path, api_base=server.api_base,
                    retries=1, backoff_s=0.5, timeout_s=5)
    assert server.ranges("CHAOS_Train_Sets.zip") == [None, "bytes=100000-", None]
    assert path.read_bytes() == PAYLOAD
    assert sleeps == [0.5]  # the transient retry's back-off only


def test_transient_retries_are_unchanged(server, tmp_path, sleeps):
    server.fail_next("CHAOS_Train_Sets.zip", n=100, status=503)
    with pytest.raises(ZenodoError, match=r"failed after 6 attempts.*HTTP 503"):
        download(3431873, "CHAOS_Train_Sets.zip", tmp_path, api_base=server.api_base, timeout_s=5)
    assert server.count("CHAOS_Train_Sets.zip") == 6
    assert sleeps == [2.0, 4.0, 8.0, 16.0, 32.0]  # the default back-off, in full


def test_missing_file_name_lists_the_record(server, tmp_path):
    with pytest.raises(ZenodoError, match=r"3431873.*'Nope\.zip'.*CHAOS_Train_Sets\.zip, readme\.txt"):
        fetch_record_files(3431873, ["readme.txt", "Nope.zip"], tmp_path, api_base=server.api_base, **FAST)
    assert server.count("readme.txt") == 0  # checked before any download


def test_unknown_record_fails_without_retry(server, tmp_path):
    with pytest.raises(ZenodoError, match=r"record 999.*HTTP 404"):
        download(999, "x.zip", tmp_path, api_base=server.api_base, **FAST)
    assert server.record_count(999) == 1


def test_record_lookup_error_is_retried(server, tmp_path):
    server.fail_record_next(3431873, n=2, status=502)
    paths = fetch_record_files(3431873, ["readme.txt"], tmp_path, api_base=server.api_base, **FAST)
    assert paths[0].read_bytes() == OTHER
    assert server.record_count(3431873) == 3


def test_progress_is_logged(server, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="fsmis.data.zenodo")
    download(3431873, "CHAOS_Train_Sets.zip", tmp_path, api_base=server.api_base, progress_s=0, **FAST)
    lines = [r.getMessage() for r in caplog.records if "MB/s" in r.getMessage()]
    assert lines and "(100.0%)" in lines[-1] and "0.3 / 0.3 MB" in lines[-1]


def test_command_line(server, tmp_path, capsys):
    assert zenodo.main(["3431873", "--api", server.api_base]) == 0
    assert "readme.txt" in capsys.readouterr().out
    assert zenodo.main(["3431873", "readme.txt", "--api", server.api_base, "--dest", str(tmp_path)]) == 0
    assert (tmp_path / "readme.txt").read_bytes() == OTHER
    assert zenodo.main(["3431873", "missing.bin", "--api", server.api_base]) == 1


def test_file_name_that_would_escape_is_refused(tmp_path):
    bad = zenodo.RemoteFile(name="../evil", size=1, md5="0" * 32, url="http://127.0.0.1:9/x")
    with pytest.raises(ZenodoError, match="refusing file name"):
        zenodo.download_file(bad, tmp_path / "raw", **FAST)
    assert not (tmp_path / "evil").exists()
