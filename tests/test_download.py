"""The verified-download core against a fake server on 127.0.0.1 (tests/fake_zenodo.py).

Plain files (``add_file``), fetched with :func:`fetch_verified` directly; what the Zenodo
and weights fetchers add on top is tested in test_zenodo.py and test_weights.py.
"""

import errno
import hashlib
import logging
import os
import socket
import time
import urllib.error

import pytest

from fsmis.data import download as core
from fsmis.data import weights
from fsmis.data.download import ChecksumError, DownloadError, Transfer, fetch_verified
from fsmis.errors import InputError

PAYLOAD = os.urandom(300_000)
NAME = "data.bin"
SIZE = len(PAYLOAD)
MD5 = hashlib.md5(PAYLOAD).hexdigest()
SHA = hashlib.sha256(PAYLOAD).hexdigest()
BAD_MD5 = hashlib.md5(bytes([PAYLOAD[0] ^ 0xFF]) + PAYLOAD[1:]).hexdigest()  # what corrupt() serves
FAST = Transfer(backoff_s=0.001, timeout_s=5)
# a reserved top-level domain (RFC 2606): resolution fails at once, network or not
OFFLINE_URL = f"http://fsmis-offline.invalid/files/{NAME}"


@pytest.fixture
def server(fake_zenodo):
    fake_zenodo.add_file(NAME, PAYLOAD)
    return fake_zenodo


# Zenodo states the size in advance; torchvision's files get theirs from the response.
@pytest.fixture(params=[SIZE, None], ids=["size-known", "size-from-response"])
def size(request):
    return request.param


@pytest.fixture
def sleeps(monkeypatch):
    """Record the pauses the downloader asks for instead of sleeping them."""
    slept = []
    monkeypatch.setattr(core.time, "sleep", slept.append)
    return slept


def get(server, dest, size=SIZE, expected=MD5, transfer=FAST, **kw):
    url = f"{server.files_base}/{NAME}"
    return fetch_verified(url, dest, NAME, expected, size=size, transfer=transfer, **kw)


def test_download_is_verified_and_the_sidecar_written(server, tmp_path, size):
    path = get(server, tmp_path / "raw", size)
    assert path == tmp_path / "raw" / NAME and path.read_bytes() == PAYLOAD
    assert (tmp_path / "raw" / f"{NAME}.md5").read_text(encoding="utf-8") == f"{MD5}  {NAME}\n"  # md5sum format
    assert sorted(os.listdir(tmp_path / "raw")) == [NAME, f"{NAME}.md5"]  # no .part, no .tmp
    assert server.ranges(NAME) == [None]


def test_rerun_downloads_nothing(server, tmp_path, size):
    for _ in range(2):
        get(server, tmp_path, size)
    assert server.count(NAME) == 1
    # without the sidecar the file is verified by its bytes, still not downloaded
    (tmp_path / f"{NAME}.md5").unlink()
    get(server, tmp_path, size)
    assert server.count(NAME) == 1
    assert (tmp_path / f"{NAME}.md5").read_text(encoding="utf-8") == f"{MD5}  {NAME}\n"


def test_file_of_wrong_size_is_downloaded_again(server, tmp_path):
    get(server, tmp_path)
    (tmp_path / NAME).write_bytes(PAYLOAD[:1000])  # the sidecar still says MD5
    assert get(server, tmp_path).read_bytes() == PAYLOAD
    assert server.count(NAME) == 2


def test_file_rewritten_after_its_sidecar_is_verified_again(server, tmp_path):
    get(server, tmp_path, None)
    (tmp_path / NAME).write_bytes(b"something else")
    later = (tmp_path / f"{NAME}.md5").stat().st_mtime_ns + 10**9
    os.utime(tmp_path / NAME, ns=(later, later))  # newer than the sidecar (timestamps are coarse)
    assert get(server, tmp_path, None).read_bytes() == PAYLOAD
    assert server.count(NAME) == 2


def test_truncated_transfer_is_resumed_with_range(server, tmp_path, size, caplog):
    caplog.set_level(logging.INFO, logger="fsmis.data.download")
    server.truncate_next(NAME, after_bytes=100_000)
    path = get(server, tmp_path, size, transfer=Transfer(backoff_s=0.001, timeout_s=5, progress_s=0))
    assert server.ranges(NAME) == [None, "bytes=100000-"]
    assert server.requests[-1].status == 206
    assert server.requests[-1].bytes_sent == len(PAYLOAD) - 100_000
    assert path.read_bytes() == PAYLOAD
    # an unknown size is taken from the response, so progress shows the total either way
    lines = [r.getMessage() for r in caplog.records if "MB/s" in r.getMessage()]
    assert lines and "0.3 / 0.3 MB (100.0%)" in lines[-1]


def test_partial_file_from_an_earlier_run_is_resumed(server, tmp_path, size):
    (tmp_path / f"{NAME}.part").write_bytes(PAYLOAD[:12345])
    assert get(server, tmp_path, size).read_bytes() == PAYLOAD
    assert server.ranges(NAME) == ["bytes=12345-"]


def test_complete_partial_file_is_not_fetched_again(server, tmp_path, size):
    # an earlier run stopped after the transfer, before the rename; with an unknown size
    # the server's 416 with the total shows the .part is whole
    (tmp_path / f"{NAME}.part").write_bytes(PAYLOAD)
    assert get(server, tmp_path, size).read_bytes() == PAYLOAD
    assert [s.status for s in server.requests] == ([] if size else [416])


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.truncate_next(NAME, after_bytes=100_000)
    server.ignore_range(NAME)
    assert get(server, tmp_path).read_bytes() == PAYLOAD
    assert server.ranges(NAME) == [None, "bytes=100000-"]
    assert server.requests[-1].status == 200


def test_server_error_is_retried_then_fails_clearly(server, tmp_path):
    server.fail_next(NAME, n=2, status=503)
    assert get(server, tmp_path / "a").read_bytes() == PAYLOAD
    assert [s.status for s in server.requests] == [503, 503, 200]
    server.fail_next(NAME, n=100, status=503)
    with pytest.raises(DownloadError, match=rf"{NAME}.*failed after 3 attempts.*HTTP 503"):
        get(server, tmp_path / "b", transfer=Transfer(retries=2, backoff_s=0.001, timeout_s=5))
    assert server.count(NAME) == 3 + 3
    assert not (tmp_path / "b" / NAME).exists()


def test_default_transient_back_off(server, tmp_path, sleeps):
    server.fail_next(NAME, n=100, status=503)
    with pytest.raises(DownloadError, match=r"failed after 6 attempts.*HTTP 503"):
        get(server, tmp_path, transfer=Transfer(timeout_s=5))
    assert server.count(NAME) == 6
    assert sleeps == [2.0, 4.0, 8.0, 16.0, 32.0]


def test_missing_file_fails_without_retry(server, tmp_path):
    with pytest.raises(DownloadError, match="absent.bin: HTTP 404"):
        fetch_verified(f"{server.files_base}/absent.bin", tmp_path, "absent.bin", MD5, transfer=FAST)
    assert len(server.requests) == 1


def test_wrong_digest_is_retried_once_then_fails_naming_file_and_both_digests(server, tmp_path, sleeps):
    server.corrupt(NAME)  # always
    # default retries and back-off: the digest rule must not fall back on the transient one
    with pytest.raises(ChecksumError) as info:
        get(server, tmp_path, transfer=Transfer(timeout_s=5))
    message = str(info.value)
    assert NAME in message and f"md5 mismatch: expected {MD5}, got {BAD_MD5}" in message
    assert "after 2 complete downloads" in message
    assert (info.value.expected, info.value.actual) == (MD5, BAD_MD5)
    assert server.ranges(NAME) == [None, None]  # both complete and from zero
    assert all(s.bytes_sent == len(PAYLOAD) for s in server.requests)
    assert sleeps == []  # retried at once, no back-off
    assert os.listdir(tmp_path) == []  # no final file, no .part, no sidecar


def test_wrong_digest_once_is_retried_from_zero(server, tmp_path, sleeps):
    server.corrupt(NAME, times=1)
    path = get(server, tmp_path, transfer=Transfer(timeout_s=5))
    assert server.ranges(NAME) == [None, None]
    assert core.file_digest(path) == MD5
    assert sorted(os.listdir(tmp_path)) == [NAME, f"{NAME}.md5"]
    assert sleeps == []


def test_digest_retry_and_transient_retries_are_separate_budgets(server, tmp_path, sleeps):
    # The first transfer breaks after a corrupt prefix and is resumed (the one transient
    # retry allowed); the resumed file fails its md5, so the fresh download from zero
    # (the digest retry) follows, which has its own transient budget and no pause.
    server.corrupt(NAME, times=1)
    server.truncate_next(NAME, after_bytes=100_000)
    path = get(server, tmp_path, transfer=Transfer(retries=1, backoff_s=0.5, timeout_s=5))
    assert server.ranges(NAME) == [None, "bytes=100000-", None]
    assert path.read_bytes() == PAYLOAD
    assert sleeps == [0.5]  # the transient retry's back-off only


def test_a_prefix_of_the_digest_is_enough(server, tmp_path):
    path = get(server, tmp_path, None, expected=SHA[:8].upper(), hash_name="sha256")
    assert (tmp_path / f"{NAME}.sha256").read_text(encoding="utf-8") == f"{SHA}  {NAME}\n"  # the full digest
    get(server, tmp_path, None, expected=SHA[:8], hash_name="sha256")
    assert server.count(NAME) == 1 and path.read_bytes() == PAYLOAD
    wrong = "00000000" if not SHA.startswith("00000000") else "11111111"
    with pytest.raises(ChecksumError, match=rf"sha256 mismatch: expected {wrong}\.\.\., got {SHA}"):
        get(server, tmp_path / "b", None, expected=wrong, hash_name="sha256")


def test_unusable_contents_are_not_kept(server, tmp_path):
    seen = []

    def check(path, final):
        seen.append((path.name, final.name))
        raise InputError(final, "not what we wanted")

    with pytest.raises(InputError, match="not what we wanted"):
        get(server, tmp_path, check=check)
    assert seen == [(f"{NAME}.part", NAME)]
    assert os.listdir(tmp_path) == []  # verified but unusable bytes are not resumed from


@pytest.mark.parametrize("name", ["../evil", "a/b", "a\\b", "..", ""])
def test_file_name_that_would_escape_is_refused(tmp_path, name):
    with pytest.raises(DownloadError, match="refusing file name"):
        fetch_verified("http://127.0.0.1:9/x", tmp_path / "raw", name, MD5, transfer=FAST)
    assert not (tmp_path / "raw").exists()


# -- a network that cannot be reached: no retries, "offline?" and how to place it by hand

def test_unresolvable_host_fails_at_once_saying_offline(tmp_path):
    start = time.perf_counter()
    with pytest.raises(DownloadError) as info:  # default retries: 62 s of back-off if retried
        fetch_verified(OFFLINE_URL, tmp_path, NAME, MD5, transfer=Transfer(by_hand=f"Put it at {tmp_path / NAME}."))
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert message.startswith(f"{NAME} ({OFFLINE_URL}): cannot reach fsmis-offline.invalid (name resolution failed")
    assert "offline? Put it at" in message and str(tmp_path / NAME) in message and "\n" not in message
    assert info.value.offline and os.listdir(tmp_path) == []


@pytest.mark.parametrize("failure", [
    OSError(errno.ENETUNREACH, "Network is unreachable"),
    urllib.error.URLError(OSError(errno.EHOSTUNREACH, "No route to host")),  # urllib wraps connect errors
    urllib.error.URLError(socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")),
], ids=["ENETUNREACH", "EHOSTUNREACH", "EAI_AGAIN"])
def test_no_route_fails_at_once(tmp_path, monkeypatch, sleeps, failure):
    calls = []

    def unreachable(url, timeout_s, headers=None):
        calls.append(url)
        raise failure

    monkeypatch.setattr(core, "_open", unreachable)
    url = "https://zenodo.org/api/records/1/files/a.zip/content"
    with pytest.raises(DownloadError, match=r"cannot reach zenodo\.org \(.*\): offline\? By hand\.$"):
        fetch_verified(url, tmp_path, NAME, MD5, transfer=Transfer(by_hand="By hand."))
    with pytest.raises(DownloadError, match=r"^record 1: cannot reach zenodo\.org .*offline\?$"):
        core.get_json("https://zenodo.org/api/records/1", "record 1", DownloadError, Transfer())
    assert len(calls) == 2 and sleeps == []  # one attempt each, no back-off


def test_refused_connection_is_still_retried(tmp_path, sleeps):
    # a host that answers "nothing listens here" is reachable: a server restarting
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: connections are refused
    with pytest.raises(DownloadError, match=r"failed after 3 attempts.*(Connection refused|ConnectionRefused)") as info:
        fetch_verified(f"http://127.0.0.1:{port}/{NAME}", tmp_path, NAME, MD5,
                       transfer=Transfer(retries=2, timeout_s=5))
    assert sleeps == [2.0, 4.0] and not info.value.offline


def test_weights_offline_name_the_workflows_path(tmp_path):
    dest = tmp_path / "resources" / "weights"
    with pytest.raises(weights.WeightsError) as info:
        weights.fetch("deeplabv3_resnet101_coco", dest, base_url="http://fsmis-offline.invalid/models")
    message = str(info.value)
    assert "cannot reach fsmis-offline.invalid" in message and "offline?" in message
    # the workflow's model.pretrained file (fsmis.paths "weights"), not the URL's name
    assert f"put it at {dest / 'deeplabv3_resnet101_coco.pth'} (its sha256 starts with 586e9e4e)" in message
    assert "http://fsmis-offline.invalid/models/deeplabv3_resnet101_coco-586e9e4e.pth" in message
