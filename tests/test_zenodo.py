"""The Zenodo downloader against a fake Zenodo on 127.0.0.1 (tests/fake_zenodo.py).

The record API and what this module hands the download core; resume, retries and the
digest rule themselves are tested in test_download.py.
"""

import hashlib
import logging
import os
import time

import pytest
from fake_zenodo import FakeZenodo

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


def test_download_verifies_by_the_records_size_and_md5(server, tmp_path):
    def fetch():
        return download(3431873, "CHAOS_Train_Sets.zip", tmp_path / "raw", api_base=server.api_base, **FAST)

    path = fetch()
    assert path == tmp_path / "raw" / "CHAOS_Train_Sets.zip" and path.read_bytes() == PAYLOAD
    sidecar = tmp_path / "raw" / "CHAOS_Train_Sets.zip.md5"
    assert sidecar.read_text(encoding="utf-8") == f"{MD5}  CHAOS_Train_Sets.zip\n"
    assert sorted(os.listdir(tmp_path / "raw")) == ["CHAOS_Train_Sets.zip", "CHAOS_Train_Sets.zip.md5"]
    fetch()
    assert server.count("CHAOS_Train_Sets.zip") == 1  # the rerun found file, sidecar and md5
    path.write_bytes(PAYLOAD[:1000])  # not the record's size: fetched again despite the sidecar
    assert fetch().read_bytes() == PAYLOAD
    assert server.count("CHAOS_Train_Sets.zip") == 2


def test_permanent_server_error_fails_clearly(server, tmp_path):
    server.fail_next("CHAOS_Train_Sets.zip", n=100, status=503)
    with pytest.raises(ZenodoError, match=r"CHAOS_Train_Sets\.zip.*failed after 3 attempts.*HTTP 503"):
        download(3431873, "CHAOS_Train_Sets.zip", tmp_path, api_base=server.api_base, retries=2, **FAST)
    assert server.count("CHAOS_Train_Sets.zip") == 3
    assert not (tmp_path / "CHAOS_Train_Sets.zip").exists()


def test_checksum_mismatch_fails_naming_file_and_both_md5s(server, tmp_path):
    server.corrupt("CHAOS_Train_Sets.zip")  # always
    with pytest.raises(ChecksumError) as info:
        download(3431873, "CHAOS_Train_Sets.zip", tmp_path, api_base=server.api_base, **FAST)
    bad = hashlib.md5(bytes([PAYLOAD[0] ^ 0xFF]) + PAYLOAD[1:]).hexdigest()
    final = tmp_path / "CHAOS_Train_Sets.zip"
    assert str(info.value).startswith(f"{final}: md5 mismatch: expected {MD5}, got {bad}")
    assert "after 2 complete downloads" in str(info.value)  # the one fresh retry
    assert (info.value.expected, info.value.actual) == (MD5, bad)
    assert os.listdir(tmp_path) == []  # no final file, no .part, no sidecar


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


OFFLINE_API = "http://fsmis-offline.invalid/api"  # a reserved TLD: never resolves


def test_offline_fails_at_once_naming_where_to_put_the_file(tmp_path):
    dest = tmp_path / "resources" / "chaos_mr" / "downloads"
    start = time.perf_counter()
    with pytest.raises(ZenodoError) as info:  # default retries and back-off
        download(3431873, "CHAOS_Train_Sets.zip", dest, api_base=OFFLINE_API)
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert message.startswith(f"record 3431873 ({OFFLINE_API}/records/3431873): cannot reach fsmis-offline.invalid")
    assert "offline?" in message and "\n" not in message
    assert f"{OFFLINE_API}/records/3431873/files/CHAOS_Train_Sets.zip/content" in message  # where from
    assert f"put it at {dest / 'CHAOS_Train_Sets.zip'}, which the workflow then unpacks" in message


def test_offline_uses_a_copy_verified_earlier(server, tmp_path, caplog):
    path = download(3431873, "CHAOS_Train_Sets.zip", tmp_path, api_base=server.api_base, **FAST)
    caplog.set_level(logging.WARNING, logger="fsmis.data.zenodo")
    assert download(3431873, "CHAOS_Train_Sets.zip", tmp_path, api_base=OFFLINE_API) == path
    assert "cannot be reached (offline?); using the copies an earlier run verified" in caplog.text
    # without its sidecar the file is not known to be the record's: no guess
    (tmp_path / "CHAOS_Train_Sets.zip.md5").unlink()
    with pytest.raises(ZenodoError, match="offline"):
        download(3431873, "CHAOS_Train_Sets.zip", tmp_path, api_base=OFFLINE_API)
    assert path.read_bytes() == PAYLOAD
