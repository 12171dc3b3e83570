"""Download files of a Zenodo record: resumable, retried, verified by size and md5.

Only the standard library is used (urllib), so the fetch stage needs no extra package.
The record API (``GET {api_base}/records/{id}``) gives each file's size, md5 and
download link. A file is streamed to ``<name>.part`` (resumed with an HTTP ``Range``
request after an interruption), verified, renamed to ``<name>``, and then a sidecar
``<name>.md5`` (``md5sum`` format) is written: a rerun that finds the file, the sidecar
and the same md5 in the record downloads nothing.

Two separate retry rules apply (see :func:`fetch_url`): transient failures (network,
timeouts, 408/429/5xx, short reads) are retried ``retries`` times with exponential
back-off; a wrong md5 after a complete transfer is retried once, at once, by one fresh
download from zero, and then fails with both digests.

``api_base`` defaults to ``$FSMIS_ZENODO_API`` or https://zenodo.org/api, so tests and
mirrors can point elsewhere without touching the (science-only) config.

The transfer itself (:func:`fetch_url`: resume, retries with backoff, progress, a
digest of any ``hashlib`` algorithm, a size known in advance or taken from the
response) is not Zenodo-specific; :mod:`fsmis.data.weights` uses it for plain URLs.

Command line: ``python -m fsmis.data.zenodo RECORD NAME [NAME ...] --dest DIR``.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fsmis.errors import InputError

DEFAULT_API = "https://zenodo.org/api"
# Fresh downloads after a complete transfer with the wrong digest. One is enough to tell
# a one-off corruption (or a stale .part resumed from) from bytes that are wrong at the
# source (a changed file, a wrong checksum in the record); more only repeat the latter.
DIGEST_RETRIES = 1
API_ENV = "FSMIS_ZENODO_API"
CHUNK = 1 << 20
MAX_BACKOFF_S = 120.0
USER_AGENT = "fsmis-downloader (+https://zenodo.org)"

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int
    md5: str
    url: str


class DownloadError(RuntimeError):
    """A file could not be fetched (not found, or failed after the retries)."""


class ZenodoError(DownloadError):
    """A record or file could not be fetched (not found, or failed after the retries)."""


class ChecksumError(InputError):
    """The downloaded bytes do not have the md5 the record states."""

    def __init__(self, path, expected: str, actual: str, detail: str = ""):
        self.expected, self.actual = expected, actual
        super().__init__(path, f"md5 mismatch: expected {expected}, got {actual}{detail}")


class _Transient(Exception):
    """A failure worth retrying (network, timeout, 429/5xx, short read)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class DigestMismatch(DownloadError):
    """The transfer completed but the bytes are wrong; the .part was deleted.

    Not a _Transient: waiting does not make wrong bytes right, so :func:`fetch_url`
    handles it with its own rule (one fresh download, no back-off) rather than with the
    transient retries. Raised once that rule is spent; ``actual`` is the digest of the
    bytes received (or a note on their size when the size was wrong) and ``attempts``
    the number of complete downloads that were checked (1 + ``digest_retries``).
    """

    def __init__(self, actual: str, message: str, attempts: int = 1):
        super().__init__(message)
        self.actual = actual
        self.attempts = attempts

    @property
    def actual_md5(self) -> str:  # the name zenodo's callers used
        return self.actual


def api_base_url(api_base: str | None = None) -> str:
    return (api_base or os.environ.get(API_ENV) or DEFAULT_API).rstrip("/")


def _is_transient_status(code: int) -> bool:
    return code in (408, 429) or code >= 500


def _retry_after(err: urllib.error.HTTPError) -> float | None:
    try:
        return float(err.headers.get("Retry-After", ""))
    except (TypeError, ValueError):
        return None


def _open(url: str, timeout_s: float, headers: dict | None = None):
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **(headers or {})})
    return urllib.request.urlopen(req, timeout=timeout_s)


def _with_retries(
    what: str, attempt_fn, retries: int, backoff_s: float, log: logging.Logger, error=ZenodoError
):
    """Call ``attempt_fn()`` until it succeeds; sleep exponentially between transient failures.

    Returns its result. After ``retries`` retries a _Transient becomes an ``error``
    (ZenodoError by default); other exceptions (a 404 ZenodoError, a DigestMismatch,
    ...) propagate at once.
    """
    for attempt in range(retries + 1):
        try:
            return attempt_fn()
        except _Transient as err:
            if attempt == retries:
                raise error(f"{what}: failed after {retries + 1} attempts; last error: {err}") from None
            delay = min(backoff_s * 2**attempt, MAX_BACKOFF_S)
            if err.retry_after is not None:  # the server asked for a pause (429)
                delay = max(delay, min(err.retry_after, MAX_BACKOFF_S))
            log.warning("%s: %s; retry %d/%d in %.1f s", what, err, attempt + 1, retries, delay)
            time.sleep(delay)


def _parse_record(record_id, data: dict, api: str) -> list[RemoteFile]:
    entries = data.get("files") or []
    if isinstance(entries, dict):  # InvenioRDM's native form: {"entries": {key: {...}}}
        entries = list((entries.get("entries") or {}).values())
    files = []
    for entry in entries:
        name = entry.get("key") or entry.get("filename")
        links = entry.get("links") or {}
        url = links.get("content") or links.get("self") or links.get("download")
        if not url:  # fall back to the documented content path
            url = f"{api}/records/{record_id}/files/{urllib.parse.quote(name)}/content"
        checksum = str(entry.get("checksum", ""))
        algo, _, digest = checksum.rpartition(":")
        if algo not in ("", "md5"):
            raise ZenodoError(f"record {record_id}: file {name!r} has a {algo} checksum, expected md5")
        size = entry.get("size", entry.get("filesize"))
        files.append(RemoteFile(name=name, size=int(size), md5=digest.lower(), url=url))
    return files


def record_files(
    record_id,
    api_base: str | None = None,
    retries: int = 5,
    backoff_s: float = 2.0,
    timeout_s: float = 60.0,
    log: logging.Logger | None = None,
) -> list[RemoteFile]:
    """Name, size, md5 and download URL of every file of a Zenodo record."""
    log = log or _log
    api = api_base_url(api_base)
    url = f"{api}/records/{record_id}"

    def attempt():
        try:
            with _open(url, timeout_s, {"Accept": "application/json"}) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as err:
            if _is_transient_status(err.code):
                raise _Transient(f"HTTP {err.code}", _retry_after(err)) from None
            raise ZenodoError(
                f"Zenodo record {record_id} not available at {url}: HTTP {err.code} {err.reason}"
            ) from None
        except (OSError, http.client.HTTPException, json.JSONDecodeError) as err:
            raise _Transient(f"{type(err).__name__}: {err}") from None

    data = _with_retries(f"record {record_id} ({url})", attempt, retries, backoff_s, log)
    return _parse_record(record_id, data, api)


def _pick(files: list[RemoteFile], name: str, record_id) -> RemoteFile:
    for f in files:
        if f.name == name:
            return f
    listing = ", ".join(f.name for f in files) or "(none)"
    raise ZenodoError(f"Zenodo record {record_id} has no file {name!r}; its files: {listing}")


class _Progress:
    """Periodic log lines: bytes done / total, percent and rate of this transfer."""

    def __init__(self, name: str, total: int | None, done: int, every_s: float, log: logging.Logger):
        self.name, self.total, self.done, self.every_s, self.log = name, total, done, every_s, log
        self.start_done = done
        self.t0 = self.last = time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self._emit(now)

    def finish(self) -> None:
        self._emit(time.monotonic())

    def _emit(self, now: float) -> None:
        rate = (self.done - self.start_done) / max(now - self.t0, 1e-6) / 1e6
        if self.total is None:  # size not known (no Content-Length)
            self.log.info("%s: %.1f MB, %.2f MB/s", self.name, self.done / 1e6, rate)
            return
        pct = 100.0 * self.done / self.total if self.total else 100.0
        self.log.info(
            "%s: %.1f / %.1f MB (%.1f%%), %.2f MB/s", self.name, self.done / 1e6, self.total / 1e6, pct, rate
        )


def _md5_of(path: Path, h=None):
    h = h or hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h


def file_digest(path, hash_name: str = "md5") -> str:
    """Hex digest of a file's bytes with any ``hashlib`` algorithm."""
    return _md5_of(Path(path), hashlib.new(hash_name)).hexdigest()


_CONTENT_RANGE = re.compile(r"^bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)$")


def _range_total(headers) -> int | None:
    """Total size from a ``Content-Range: bytes a-b/TOTAL`` (or ``bytes */TOTAL``) header."""
    m = _CONTENT_RANGE.match((headers.get("Content-Range") or "").strip()) if headers else None
    return int(m.group(3)) if m and m.group(3) != "*" else None


def _total_from(resp, start: int) -> int | None:
    """Full size of the file as the response states it (None: it does not say)."""
    if resp.status == 206:
        total = _range_total(resp.headers)
        if total is not None:
            return total
    try:
        length = int(resp.headers.get("Content-Length", ""))
    except (TypeError, ValueError):
        return None
    return start + length if resp.status == 206 else length


def _transfer(
    url: str,
    name: str,
    part: Path,
    size: int | None,
    timeout_s: float,
    progress_s: float,
    log,
    hash_name: str = "md5",
    error=ZenodoError,
) -> tuple[str, int | None]:
    """Bring ``part`` to the full file (resuming it); return (hex digest, expected size).

    ``size`` is the expected size, or None to take it from the response
    (Content-Range / Content-Length; it stays None if the server states neither).
    The digest is "" when the bytes on disk are not of the expected size.
    Raises _Transient for retryable failures (keeping what arrived for the next resume)
    and ``error`` for permanent HTTP errors.
    """
    start = part.stat().st_size if part.exists() else 0
    if size is not None and start > size:  # cannot be a prefix of the file: start over
        part.unlink()
        start = 0
    # The digest covers the kept prefix plus what is streamed, so the file is read once.
    h = _md5_of(part, hashlib.new(hash_name)) if start else hashlib.new(hash_name)
    total = size
    if size is None or start < size:
        headers = {"Range": f"bytes={start}-"} if start else {}
        try:
            with _open(url, timeout_s, headers) as resp:
                if start and resp.status != 206:
                    # The server ignored Range and sends the whole file: start from zero.
                    log.info("%s: server ignored the Range request; restarting from zero", name)
                    start, h = 0, hashlib.new(hash_name)
                elif start and not (resp.headers.get("Content-Range") or "").startswith(f"bytes {start}-"):
                    part.unlink()
                    raise _Transient(f"unexpected Content-Range {resp.headers.get('Content-Range')!r}")
                if total is None:
                    total = _total_from(resp, start)
                if start:
                    log.info("%s: resuming at byte %d of %s", name, start, total if total is not None else "?")
                progress = _Progress(name, total, start, progress_s, log)
                with open(part, "ab" if start else "wb") as out:
                    while block := resp.read(CHUNK):
                        out.write(block)
                        h.update(block)
                        progress.update(len(block))
                progress.finish()
        except urllib.error.HTTPError as err:
            if err.code == 416 and size is None and start and _range_total(err.headers) == start:
                # size unknown and the .part already holds the whole file (an earlier
                # run stopped before verifying it): nothing more to fetch
                total = start
            elif err.code == 416:  # our offset is past the server's end: the .part is stale
                part.unlink(missing_ok=True)
                raise _Transient("HTTP 416 (range not satisfiable); restarting from zero") from None
            elif _is_transient_status(err.code):
                raise _Transient(f"HTTP {err.code}", _retry_after(err)) from None
            else:
                raise error(f"{name}: HTTP {err.code} {err.reason} from {url}") from None
        except (OSError, http.client.HTTPException) as err:
            raise _Transient(f"{type(err).__name__}: {err}") from None
    got = part.stat().st_size
    if total is not None and got < total:
        # http.client returns a short body silently when the connection drops
        raise _Transient(f"short read: {got} of {total} bytes")
    return (h.hexdigest() if total is None or got == total else ""), total


def fetch_url(
    url: str,
    part,
    accept: Callable[[str], bool],
    expected: str,
    name: str | None = None,
    size: int | None = None,
    hash_name: str = "md5",
    retries: int = 5,
    backoff_s: float = 2.0,
    timeout_s: float = 60.0,
    progress_s: float = 5.0,
    log: logging.Logger | None = None,
    error=ZenodoError,
    digest_retries: int = DIGEST_RETRIES,
) -> str:
    """Download ``url`` into the file ``part`` (resuming what is there); return its digest.

    The bytes are hashed with ``hash_name`` while they arrive; ``accept(hexdigest)``
    decides whether they are right (``expected`` describes the wanted digest in
    messages). ``size`` is the expected size in bytes, or None to take it from the
    response. The caller moves ``part`` to its final name. Failures fall under two
    separate rules:

    * Transient failures (network errors, timeouts, HTTP 408/429/5xx, a short read:
      fewer bytes than the expected size) are retried up to ``retries`` times, after
      ``backoff_s * 2**k`` seconds (k = 0, 1, ...; at most MAX_BACKOFF_S, longer if a
      429 sends Retry-After), resuming from the bytes kept with an HTTP Range request.
      When they are spent, ``error`` is raised (the .part is kept for a later run).
    * A wrong digest after a complete transfer (every expected byte arrived; or more
      bytes than expected) deletes the .part and starts a fresh download from zero at
      once, without a pause, up to ``digest_retries`` times (default 1). If the last
      one is wrong too, :class:`DigestMismatch` is raised with the
      digest received and ``attempts`` = complete downloads checked; nothing is left
      on disk. The first download may have resumed an earlier run's .part; the fresh
      one never does, so a stale prefix cannot fail it.

    Each download (the first and each fresh one) has the full transient budget of its
    own: a digest retry uses none of ``retries`` and restarts the back-off at
    ``backoff_s``, and transient retries never use a digest retry. So with the defaults
    a file whose bytes stay wrong is transferred twice (plus any resumptions after
    transient failures), and one that stays unreachable fails after 1 + ``retries``
    requests. A permanent HTTP error (404, ...) raises ``error`` at once.
    """
    log = log or _log
    part = Path(part)
    name = name or part.name
    what = f"{name} ({url})"

    def attempt():
        digest, total = _transfer(url, name, part, size, timeout_s, progress_s, log, hash_name, error)
        if not digest or not accept(digest):
            got = part.stat().st_size
            part.unlink()  # wrong bytes are never resumed from
            actual = digest or f"(size {got}, expected {total})"
            raise DigestMismatch(
                actual, f"{hash_name} mismatch: expected {expected}, got {actual}; deleted the partial file"
            )
        return digest

    for download_no in range(1, max(digest_retries, 0) + 2):
        try:
            # _with_retries lets DigestMismatch through at once (it is no _Transient), so
            # each pass is one download with the whole transient budget
            return _with_retries(what, attempt, retries, backoff_s, log, error)
        except DigestMismatch as err:
            if download_no > digest_retries:
                err.attempts = download_no
                raise
            log.warning(
                "%s: %s; downloading it again from zero (digest retry %d/%d)",
                what, err, download_no, digest_retries,
            )


def _write_sidecar(sidecar: Path, md5: str, name: str) -> None:
    tmp = sidecar.with_name(sidecar.name + ".tmp")
    tmp.write_text(f"{md5}  {name}\n")
    os.replace(tmp, sidecar)


def _read_sidecar(sidecar: Path) -> str | None:
    try:
        return sidecar.read_text(encoding="utf-8").split()[0].lower()
    except (OSError, IndexError):
        return None


def download_file(
    remote: RemoteFile,
    dest_dir,
    retries: int = 5,
    backoff_s: float = 2.0,
    timeout_s: float = 60.0,
    progress_s: float = 5.0,
    log: logging.Logger | None = None,
) -> Path:
    """Download ``remote`` into ``dest_dir`` (see the module docstring); return its path.

    Retries as :func:`fetch_url` describes: ``retries`` transient retries with back-off
    per download, and one fresh download when the md5 is wrong. Raises
    :class:`ChecksumError` (naming the file, the record's md5 and the md5 received;
    nothing left on disk) if the fresh download's md5 is wrong too, and
    :class:`ZenodoError` when the transfer fails.
    """
    log = log or _log
    if remote.name in ("", ".", "..") or "/" in remote.name or "\\" in remote.name:
        raise ZenodoError(f"refusing file name {remote.name!r}: it would not stay inside {dest_dir}")
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / remote.name
    part = dest_dir / f"{remote.name}.part"
    sidecar = dest_dir / f"{remote.name}.md5"

    if final.exists():
        size_ok = final.stat().st_size == remote.size
        if size_ok and _read_sidecar(sidecar) == remote.md5:
            log.info("%s: already downloaded and verified (md5 %s)", final, remote.md5)
            return final
        # No/old sidecar (e.g. a run died between rename and sidecar): verify the bytes.
        if size_ok and _md5_of(final).hexdigest() == remote.md5:
            _write_sidecar(sidecar, remote.md5, remote.name)
            log.info("%s: present and verified (md5 %s)", final, remote.md5)
            return final
        log.warning("%s: does not match the record (size or md5); downloading it again", final)
        final.unlink()
        sidecar.unlink(missing_ok=True)

    log.info("%s: downloading %.1f MB from %s", remote.name, remote.size / 1e6, remote.url)

    try:
        fetch_url(
            remote.url, part, lambda digest: digest == remote.md5, remote.md5, name=remote.name,
            size=remote.size, hash_name="md5", retries=retries, backoff_s=backoff_s,
            timeout_s=timeout_s, progress_s=progress_s, log=log,
        )
    except DigestMismatch as err:
        raise ChecksumError(
            final, remote.md5, err.actual, f" after {err.attempts} complete downloads (from {remote.url})"
        ) from None

    os.replace(part, final)
    _write_sidecar(sidecar, remote.md5, remote.name)
    log.info("%s: verified (md5 %s)", final, remote.md5)
    return final


def download(
    record_id,
    name: str,
    dest_dir,
    api_base: str | None = None,
    retries: int = 5,
    backoff_s: float = 2.0,
    timeout_s: float = 60.0,
    progress_s: float = 5.0,
    log: logging.Logger | None = None,
) -> Path:
    """Download file ``name`` of Zenodo record ``record_id`` into ``dest_dir``, verified."""
    return fetch_record_files(
        record_id, [name], dest_dir, api_base, retries, backoff_s, timeout_s, progress_s, log
    )[0]


def fetch_record_files(
    record_id,
    names,
    dest_dir,
    api_base: str | None = None,
    retries: int = 5,
    backoff_s: float = 2.0,
    timeout_s: float = 60.0,
    progress_s: float = 5.0,
    log: logging.Logger | None = None,
) -> list[Path]:
    """Download several files of one record (one record lookup); return their paths."""
    files = record_files(record_id, api_base, retries, backoff_s, timeout_s, log)
    wanted = [_pick(files, name, record_id) for name in names]  # fail before any download
    return [download_file(f, dest_dir, retries, backoff_s, timeout_s, progress_s, log) for f in wanted]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Download verified files of a Zenodo record.")
    parser.add_argument("record_id")
    parser.add_argument("names", nargs="*", help="file names in the record (none: list them)")
    parser.add_argument("--dest", default=".", help="target folder (default: .)")
    parser.add_argument("--api", default=None, help=f"API base (default: ${API_ENV} or {DEFAULT_API})")
    parser.add_argument("--retries", type=int, default=5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        if not args.names:
            for f in record_files(args.record_id, args.api, args.retries):
                print(f"{f.name}\t{f.size}\t{f.md5}\t{f.url}")
            return 0
        for path in fetch_record_files(args.record_id, args.names, args.dest, args.api, args.retries):
            print(path)
    except (ZenodoError, InputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
