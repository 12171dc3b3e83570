"""One verified download: a URL into a file, resumed, retried, checked by digest, with a sidecar.

:func:`fetch_verified` is the core under :mod:`fsmis.data.zenodo` (md5 from the record
API) and :mod:`fsmis.data.weights` (sha256 prefix from torchvision's file names):

1. ``<dest>/<name>`` exists: if a sidecar ``<name>.<hash>`` (``md5sum`` format) not
   older than the file records the expected digest (and the size is right, where
   known), nothing is read or downloaded; else the file is hashed, and a match only
   writes the sidecar, a mismatch deletes the file.
2. The URL is streamed into ``<name>.part`` and hashed on the way; a .part left by an
   earlier run is resumed with an HTTP ``Range`` request.
3. Digest checked, then the caller's optional ``check``; the .part is renamed to
   ``<name>`` and only then the sidecar written, so a sidecar stands for verified bytes.

What is retried, under two separate budgets (each download has its own transient one):

* Transient failures (network errors, timeouts, HTTP 408/429/5xx, a short read):
  ``retries`` times after ``backoff_s * 2**k`` s (k = 0, 1, ...; at most MAX_BACKOFF_S,
  more if a 429 sends Retry-After), resuming; then ``error``, the .part kept for a rerun.
* A complete transfer with the wrong digest: the .part is deleted and fetched once more
  from zero (DIGEST_RETRIES), at once; waiting does not make wrong bytes right, and one
  fresh download tells a one-off corruption (or a stale .part) from bytes wrong at the
  source. Then ``checksum_error`` (a :class:`ChecksumError`), nothing left on disk.

A permanent HTTP error (404, 403, ...) raises ``error`` at once. So does a network
failure that says this machine cannot reach the network at all, which waiting would
not mend within the retry budget: the name of the host did not resolve
(``socket.gaierror``, also a DNS server that does not answer), or there is no route
(``ENETUNREACH``, ``EHOSTUNREACH``, ``ENETDOWN``). Its one-line message names the
host, asks "offline?" and adds ``Transfer.by_hand``, where the fetcher says how to put
the file in place by hand. A refused connection stays transient: the network reached a
host that answered, and a server restarting behind its address refuses for a moment.
Standard library only (urllib), so the fetch stage needs no extra package.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import logging
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fsmis.errors import InputError

DIGEST_RETRIES = 1
CHUNK = 1 << 20
MAX_BACKOFF_S = 120.0
USER_AGENT = "fsmis-downloader (+https://zenodo.org)"

_log = logging.getLogger(__name__)


# errno values that mean no route to the network at all (no retry; module docstring)
_NO_ROUTE = {
    errno.ENETUNREACH: "network unreachable",
    errno.EHOSTUNREACH: "no route to host",
    errno.ENETDOWN: "network is down",
}


class DownloadError(RuntimeError):
    """A file could not be fetched (not found, or failed after the retries).

    ``offline`` is True on an error raised because the host could not be reached at all
    (name resolution, no route): then the message ends with how to place the file by hand.
    """

    offline = False


class ChecksumError(InputError):
    """Complete downloads whose bytes do not have the expected digest."""

    def __init__(self, path, expected: str, actual: str, detail: str = "", hash_name: str = "md5"):
        self.expected, self.actual = expected, actual
        super().__init__(path, f"{hash_name} mismatch: expected {expected}, got {actual}{detail}")


@dataclass(frozen=True)
class Transfer:
    """How one call fetches: the keywords the fetchers pass through to here."""

    retries: int = 5  # transient retries of each download
    backoff_s: float = 2.0  # first pause; doubles per retry up to MAX_BACKOFF_S
    timeout_s: float = 60.0  # per connect / read
    progress_s: float = 5.0  # seconds between progress lines
    digest_retries: int = DIGEST_RETRIES
    log: logging.Logger = _log
    # how to put the file in place without network, appended to an "offline?" error
    by_hand: str = ""

    @classmethod
    def of(cls, options: dict, log: logging.Logger) -> Transfer:
        """``options`` over the defaults, logging to the caller's ``log`` unless one is given."""
        return cls(**{**options, "log": options.get("log") or log})


class _Transient(Exception):
    """A failure worth retrying (network, timeout, 408/429/5xx, short read)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _DigestMismatch(Exception):
    """A complete transfer with wrong bytes, .part deleted; args: (what came, downloads checked)."""


def _accepts(expected: str, digest: str | None) -> bool:
    """A digest matches the expected one, or the expected prefix of one ("" matches nothing)."""
    return bool(digest and expected and digest.startswith(expected))


def plain_name(name: str) -> bool:
    """Whether ``name`` is a file name that stays inside the folder it is joined to."""
    return name not in ("", ".", "..") and "/" not in name and "\\" not in name


def file_digest(path, hash_name: str = "md5") -> str:
    """Hex digest of a file's bytes with any ``hashlib`` algorithm."""
    return _hash_file(Path(path), hashlib.new(hash_name)).hexdigest()


def _hash_file(path: Path, h):
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h


def _open(url: str, timeout_s: float, headers: dict | None = None):
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **(headers or {})})
    return urllib.request.urlopen(req, timeout=timeout_s)


def _http_failure(err: urllib.error.HTTPError, permanent: Exception) -> Exception:
    """A _Transient for HTTP 408/429/5xx (worth retrying), else ``permanent``: a 404 stays a 404."""
    if err.code in (408, 429) or err.code >= 500:
        try:
            retry_after = float(err.headers.get("Retry-After", ""))
        except (TypeError, ValueError):
            retry_after = None
        return _Transient(f"HTTP {err.code}", retry_after)
    return permanent


def offline_reason(err: BaseException) -> str | None:
    """Why ``err`` says the network cannot be reached at all (name resolution, no route),
    or None for a failure worth retrying. Looks through urllib's ``URLError.reason`` and
    the exception chain, where urllib wraps the socket's error."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, socket.gaierror):
            return f"name resolution failed: {err.strerror or err}"
        if isinstance(err, OSError) and err.errno in _NO_ROUTE:
            return _NO_ROUTE[err.errno]
        reason = err.reason if isinstance(err, urllib.error.URLError) else None
        err = reason if isinstance(reason, BaseException) else (err.__cause__ or err.__context__)
    return None


def _network_failure(err: Exception, what: str, url: str, transfer: Transfer, error) -> Exception:
    """A _Transient to retry, or for an unreachable network ``error`` at once (offline?)."""
    reason = offline_reason(err)
    if reason is None:
        return _Transient(f"{type(err).__name__}: {err}")
    host = urllib.parse.urlsplit(url).hostname or url
    failure = error(f"{what}: cannot reach {host} ({reason}): offline? {transfer.by_hand}".rstrip())
    failure.offline = True
    return failure


def _with_retries(what: str, attempt_fn, transfer: Transfer, error):
    """Call ``attempt_fn()`` until it succeeds, pausing exponentially after each _Transient.

    After ``transfer.retries`` retries the _Transient becomes an ``error``; any other
    exception (a permanent HTTP error, a _DigestMismatch) propagates at once.
    """
    retries = transfer.retries
    for attempt in range(retries + 1):
        try:
            return attempt_fn()
        except _Transient as err:
            if attempt == retries:
                raise error(f"{what}: failed after {retries + 1} attempts; last error: {err}") from None
            delay = min(transfer.backoff_s * 2**attempt, MAX_BACKOFF_S)
            if err.retry_after is not None:  # the server asked for a pause (429)
                delay = max(delay, min(err.retry_after, MAX_BACKOFF_S))
            transfer.log.warning("%s: %s; retry %d/%d in %.1f s", what, err, attempt + 1, retries, delay)
            time.sleep(delay)


def get_json(url: str, what: str, permanent: Callable[[urllib.error.HTTPError], Exception], transfer: Transfer,
             error: type[Exception] = DownloadError):
    """GET ``url`` as JSON, retried like a download; ``permanent(HTTPError)`` builds the error for a 4xx."""

    def attempt():
        try:
            with _open(url, transfer.timeout_s, {"Accept": "application/json"}) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as err:
            raise _http_failure(err, permanent(err)) from None
        except (OSError, http.client.HTTPException, json.JSONDecodeError) as err:
            # a cut-off body is not valid JSON: retried
            raise _network_failure(err, what, url, transfer, error) from None

    return _with_retries(what, attempt, transfer, error)


class _Progress:
    """Logs bytes done (/ total and percent, where known) and rate every progress_s and at the end."""

    def __init__(self, name: str, total: int | None, done: int, transfer: Transfer):
        self.name, self.total, self.done, self.start, self.transfer = name, total, done, done, transfer
        self.t0 = self.last = time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        if time.monotonic() - self.last >= self.transfer.progress_s:
            self.emit()

    def emit(self) -> None:
        self.last = now = time.monotonic()
        rate = (self.done - self.start) / max(now - self.t0, 1e-6) / 1e6
        done = f"{self.done / 1e6:.1f} MB"
        if self.total is not None:  # None: the server sent no Content-Length
            pct = 100.0 * self.done / self.total if self.total else 100.0
            done = f"{self.done / 1e6:.1f} / {self.total / 1e6:.1f} MB ({pct:.1f}%)"
        self.transfer.log.info("%s: %s, %.2f MB/s", self.name, done, rate)


def _range_total(headers) -> int | None:
    """Total size from a ``Content-Range: bytes a-b/TOTAL`` (or ``bytes */TOTAL``) header."""
    unit, _, total = ((headers.get("Content-Range") if headers else None) or "").strip().rpartition("/")
    return int(total) if unit.startswith("bytes ") and total.isdigit() else None


def _total_from(resp, start: int) -> int | None:
    """Full size of the file as the response states it (None: it does not say)."""
    if resp.status == 206 and (total := _range_total(resp.headers)) is not None:
        return total
    try:
        length = int(resp.headers.get("Content-Length", ""))
    except (TypeError, ValueError):
        return None
    return start + length if resp.status == 206 else length


def _transfer(url, name, part: Path, size, hash_name, transfer: Transfer, error) -> tuple[str, int | None]:
    """Bring ``part`` to the full file (resuming it); return (hex digest, expected size).

    ``size`` None: as the response states it, if it does. The digest is "" when the bytes
    are not of the expected size. Raises _Transient (what arrived is kept) or ``error``.
    """
    log = transfer.log
    start = part.stat().st_size if part.exists() else 0
    if size is not None and start > size:  # cannot be a prefix of the file: start over
        part.unlink()
        start = 0
    # The digest covers the kept prefix plus what is streamed, so the file is read once.
    h = _hash_file(part, hashlib.new(hash_name)) if start else hashlib.new(hash_name)
    total = size
    if size is None or start < size:
        try:
            with _open(url, transfer.timeout_s, {"Range": f"bytes={start}-"} if start else None) as resp:
                if start and resp.status != 206:
                    log.info("%s: server ignored the Range request; restarting from zero", name)
                    start, h = 0, hashlib.new(hash_name)
                elif start and not (resp.headers.get("Content-Range") or "").startswith(f"bytes {start}-"):
                    part.unlink()
                    raise _Transient(f"unexpected Content-Range {resp.headers.get('Content-Range')!r}")
                if total is None:
                    total = _total_from(resp, start)
                if start:
                    log.info("%s: resuming at byte %d of %s", name, start, "?" if total is None else total)
                progress = _Progress(name, total, start, transfer)
                with open(part, "ab" if start else "wb") as out:
                    while block := resp.read(CHUNK):
                        out.write(block)
                        h.update(block)
                        progress.update(len(block))
                progress.emit()
        except urllib.error.HTTPError as err:
            if err.code == 416 and size is None and start and _range_total(err.headers) == start:
                total = start  # size unknown and the .part from an earlier run is already whole
            elif err.code == 416:  # our offset is past the server's end: the .part is stale
                part.unlink(missing_ok=True)
                raise _Transient("HTTP 416 (range not satisfiable); restarting from zero") from None
            else:
                raise _http_failure(err, error(f"{name}: HTTP {err.code} {err.reason} from {url}")) from None
        except (OSError, http.client.HTTPException) as err:
            raise _network_failure(err, f"{name} ({url})", url, transfer, error) from None
    got = part.stat().st_size
    if total is not None and got < total:  # http.client returns a short body silently on a drop
        raise _Transient(f"short read: {got} of {total} bytes")
    return (h.hexdigest() if total is None or got == total else ""), total


def _fetch_part(url, name, part: Path, expected, shown, size, hash_name, transfer: Transfer, error) -> str:
    """Download into ``part`` under both retry rules (module docstring); return the digest."""
    what = f"{name} ({url})"

    def attempt():
        digest, total = _transfer(url, name, part, size, hash_name, transfer, error)
        if not _accepts(expected, digest):
            got = part.stat().st_size
            part.unlink()  # wrong bytes are never resumed from
            actual = digest or f"(size {got}, expected {total})"
            raise _DigestMismatch(actual, 1)
        return digest

    for download_no in range(1, max(transfer.digest_retries, 0) + 2):
        try:
            # a _DigestMismatch passes _with_retries at once, so each pass is one
            # download with the whole transient budget of its own
            return _with_retries(what, attempt, transfer, error)
        except _DigestMismatch as err:
            if download_no > transfer.digest_retries:
                raise _DigestMismatch(err.args[0], download_no) from None
            transfer.log.warning(
                "%s: %s mismatch: expected %s, got %s; downloading it again from zero (digest retry %d/%d)",
                what, hash_name, shown, err.args[0], download_no, transfer.digest_retries,
            )


def read_sidecar(sidecar: Path) -> str | None:
    """The digest a sidecar records, or None (no sidecar, or an empty one)."""
    try:
        return sidecar.read_text(encoding="utf-8").split()[0].lower()
    except (OSError, IndexError):
        return None


def _write_sidecar(sidecar: Path, digest: str, name: str) -> None:
    tmp = sidecar.with_name(sidecar.name + ".tmp")
    tmp.write_text(f"{digest}  {name}\n", encoding="utf-8")
    os.replace(tmp, sidecar)  # never a half-written sidecar


def fetch_verified(
    url: str, dest_dir, name: str, expected: str, hash_name: str = "md5", size: int | None = None,
    check: Callable[[Path, Path], None] | None = None, transfer: Transfer | None = None,
    error: type[Exception] = DownloadError, checksum_error: type[ChecksumError] = ChecksumError,
) -> Path:
    """Download ``url`` to ``dest_dir/name``, verified (module docstring); return the path.

    ``expected``: the hex digest, or a prefix of it (torchvision's file names carry 8
    digits); ``size`` in bytes, or None to take it from the response. ``check(path,
    final)`` may refuse verified bytes with an InputError (a .part is then deleted).
    Raises ``error`` (refused name, permanent HTTP error, transient retries spent) or
    ``checksum_error`` naming the file and both digests.
    """
    transfer = transfer or Transfer()
    log = transfer.log
    if not plain_name(name):
        raise error(f"refusing file name {name!r}: it would not stay inside {dest_dir}")
    expected = expected.lower()
    full = len(expected) >= hashlib.new(hash_name).digest_size * 2
    shown = expected if full or not expected else f"{expected}..."
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    final, part = dest_dir / name, dest_dir / f"{name}.part"
    sidecar = dest_dir / f"{name}.{hash_name}"

    if final.exists():
        size_ok = size is None or final.stat().st_size == size
        recorded = read_sidecar(sidecar)
        # a file rewritten after its sidecar was written is verified again
        fresh = _accepts(expected, recorded) and sidecar.stat().st_mtime_ns >= final.stat().st_mtime_ns
        if size_ok and fresh:
            log.info("%s: already downloaded and verified (%s %s)", final, hash_name, recorded)
            return final
        # no/old sidecar (e.g. a run died between rename and sidecar): verify the bytes
        digest = file_digest(final, hash_name) if size_ok else None
        if _accepts(expected, digest):
            if check:
                check(final, final)
            _write_sidecar(sidecar, digest, name)
            log.info("%s: present and verified (%s %s)", final, hash_name, digest)
            return final
        found = f"{hash_name} {digest}" if size_ok else f"size {final.stat().st_size}"
        log.warning("%s: %s, expected %s; downloading it again", final, found, shown if size_ok else size)
        final.unlink()
        sidecar.unlink(missing_ok=True)

    log.info("%s: downloading%s from %s", name, f" {size / 1e6:.1f} MB" if size is not None else "", url)
    try:
        digest = _fetch_part(url, name, part, expected, shown, size, hash_name, transfer, error)
    except _DigestMismatch as err:
        actual, attempts = err.args
        detail = f" after {attempts} complete downloads (from {url}); deleted the partial file"
        raise checksum_error(final, shown, actual, detail, hash_name=hash_name) from None
    if check:
        try:
            check(part, final)
        except InputError:
            part.unlink(missing_ok=True)  # verified bytes, but unusable: never resumed from
            raise
    os.replace(part, final)
    _write_sidecar(sidecar, digest, name)
    log.info("%s: verified (%s %s)", final, hash_name, digest)
    return final
