"""Files of a Zenodo record: the record API, and verified downloads of its files.

The Zenodo API provides, for ``GET {api_base}/records/{id}`` (JSON), each file of the
record with its name (``key``), ``size`` in bytes, ``checksum`` (``md5:<hex>``) and a
download link (``links.self`` today, ``links.content`` in InvenioRDM's form; without
one, the documented ``/records/{id}/files/{name}/content``). That is all this module
knows: the files themselves are fetched by :func:`fsmis.data.download.fetch_verified`
(resumed ``<name>.part``, checked against the record's size and md5, sidecar
``<name>.md5``; a rerun that finds the file, its sidecar and the same md5 in the record
downloads nothing).

What is retried: the record lookup, like every transfer, on transient failures
(network, timeouts, HTTP 408/429/5xx, a cut-off reply) ``retries`` times with
exponential back-off; a download whose md5 is wrong once more, from zero (see
:mod:`fsmis.data.download`). A 404 (unknown record or file) fails at once, and so does
a host that cannot be reached at all (name resolution, no route): "offline?", with the
link of each file and the path to put it at by hand (:func:`by_hand`). Offline, files
that an earlier run verified (file and a ``.md5`` sidecar not older than it) are
returned as they are, with a warning, since the record cannot be asked.

``api_base`` defaults to ``$FSMIS_ZENODO_API`` or https://zenodo.org/api, so tests and
mirrors can point elsewhere without touching the (science-only) config. Keywords
``retries``, ``backoff_s``, ``timeout_s``, ``progress_s`` and ``log`` are those of
:class:`fsmis.data.download.Transfer`.

Command line: ``python -m fsmis.data.zenodo RECORD NAME [NAME ...] --dest DIR``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from fsmis.data.download import ChecksumError, DownloadError, Transfer, fetch_verified, get_json, read_sidecar
from fsmis.envvars import FSMIS_ZENODO_API
from fsmis.errors import InputError

__all__ = ["DEFAULT_API", "ChecksumError", "RemoteFile", "ZenodoError", "api_base_url", "by_hand",
           "download", "download_file", "fetch_record_files", "main", "record_files"]

DEFAULT_API = "https://zenodo.org/api"

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int
    md5: str
    url: str


class ZenodoError(DownloadError):
    """A record or file could not be fetched (not found, or failed after the retries)."""


def api_base_url(api_base: str | None = None) -> str:
    return (api_base or os.environ.get(FSMIS_ZENODO_API) or DEFAULT_API).rstrip("/")


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
        algo, _, digest = str(entry.get("checksum", "")).rpartition(":")
        if algo not in ("", "md5"):
            raise ZenodoError(f"record {record_id}: file {name!r} has a {algo} checksum, expected md5")
        size = entry.get("size", entry.get("filesize"))
        files.append(RemoteFile(name=name, size=int(size), md5=digest.lower(), url=url))
    return files


def record_files(record_id, api_base: str | None = None, **transfer) -> list[RemoteFile]:
    """Name, size, md5 and download URL of every file of a Zenodo record."""
    api = api_base_url(api_base)
    url = f"{api}/records/{record_id}"

    def not_available(err):
        return ZenodoError(f"Zenodo record {record_id} not available at {url}: HTTP {err.code} {err.reason}")

    transfer = Transfer.of(transfer, _log)
    data = get_json(url, f"record {record_id} ({url})", not_available, transfer, ZenodoError)
    return _parse_record(record_id, data, api)


def _pick(files: list[RemoteFile], name: str, record_id) -> RemoteFile:
    for f in files:
        if f.name == name:
            return f
    listing = ", ".join(f.name for f in files) or "(none)"
    raise ZenodoError(f"Zenodo record {record_id} has no file {name!r}; its files: {listing}")


def download_file(remote: RemoteFile, dest_dir, **transfer) -> Path:
    """Download ``remote`` into ``dest_dir``, verified by the record's size and md5; return its path.

    Raises :class:`ChecksumError` (naming the file, the record's md5 and the md5
    received; nothing left on disk) if the fresh download's md5 is wrong too, and
    :class:`ZenodoError` when the transfer fails.
    """
    return fetch_verified(
        remote.url, dest_dir, remote.name, remote.md5, "md5", remote.size,
        transfer=Transfer.of(transfer, _log), error=ZenodoError,
    )


def by_hand(record_id, names, dest_dir, api_base: str | None = None) -> str:
    """How to put files of a record in place without network (the end of an offline error)."""
    api = api_base_url(api_base)
    links = " and ".join(f"{api}/records/{record_id}/files/{urllib.parse.quote(n)}/content" for n in names)
    places = " and ".join(str(Path(dest_dir) / n) for n in names)
    one = len(names) == 1
    return (f"Place {'it' if one else 'them'} by hand: fetch {links} on a machine with network and put "
            f"{'it' if one else 'them'} at {places}, which the workflow then unpacks without downloading or "
            f"checking {'its' if one else 'their'} md5 (docs/data.md, \"Offline: files placed by hand\").")


def _verified_earlier(names, dest_dir) -> list[Path] | None:
    """The files, if each has a ``.md5`` sidecar not older than it (a verified download)."""
    paths = [Path(dest_dir) / n for n in names]
    for path in paths:
        sidecar = path.with_name(f"{path.name}.md5")
        if not (path.is_file() and read_sidecar(sidecar)
                and sidecar.stat().st_mtime_ns >= path.stat().st_mtime_ns):
            return None
    return paths


def download(record_id, name: str, dest_dir, api_base: str | None = None, **transfer) -> Path:
    """Download file ``name`` of Zenodo record ``record_id`` into ``dest_dir``, verified."""
    return fetch_record_files(record_id, [name], dest_dir, api_base, **transfer)[0]


def fetch_record_files(record_id, names, dest_dir, api_base: str | None = None, **transfer) -> list[Path]:
    """Download several files of one record (one record lookup); return their paths."""
    transfer = {"by_hand": by_hand(record_id, names, dest_dir, api_base), **transfer}
    try:
        files = record_files(record_id, api_base, **transfer)
    except ZenodoError as err:
        kept = _verified_earlier(names, dest_dir) if err.offline else None
        if kept is None:
            raise
        (transfer.get("log") or _log).warning(
            "record %s cannot be reached (offline?); using the copies an earlier run verified against it: %s",
            record_id, ", ".join(map(str, kept)))
        return kept
    wanted = [_pick(files, name, record_id) for name in names]  # fail before any download
    return [download_file(f, dest_dir, **{**transfer, "by_hand": by_hand(record_id, [f.name], dest_dir, api_base)})
            for f in wanted]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Download verified files of a Zenodo record.")
    parser.add_argument("record_id")
    parser.add_argument("names", nargs="*", help="file names in the record (none: list them)")
    parser.add_argument("--dest", default=".", help="target folder (default: .)")
    parser.add_argument("--api", default=None, help=f"API base (default: ${FSMIS_ZENODO_API} or {DEFAULT_API})")
    parser.add_argument("--retries", type=int, default=5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        if not args.names:
            for f in record_files(args.record_id, args.api, retries=args.retries):
                print(f"{f.name}\t{f.size}\t{f.md5}\t{f.url}")
            return 0
        for path in fetch_record_files(args.record_id, args.names, args.dest, args.api, retries=args.retries):
            print(path)
    except (ZenodoError, InputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
