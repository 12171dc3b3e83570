"""A fake Zenodo on 127.0.0.1 for tests: the record API and file downloads with Range.

Usage::

    with FakeZenodo({123: {"data.zip": payload}}) as zenodo:
        download(123, "data.zip", tmp_path, api_base=zenodo.api_base)
        assert zenodo.count("data.zip") == 1

or the ``fake_zenodo`` fixture (tests/conftest.py): a started, empty server (add
records with ``add_record``).

Plain files (no record, as on download.pytorch.org) are served at
``{files_base}/{name}`` after ``add_file(name, data)``; their requests are recorded
with ``record_id=""`` and the fault knobs below work on them too.

Fault knobs are keyed by file name (keep names unique across records in one test):
``fail_next(name, n, status)``, ``truncate_next(name, after_bytes, times)``,
``corrupt(name, times=None)`` (None: always), ``ignore_range(name)``;
``fail_record_next(record_id, n, status)`` for the record API. Every request is
recorded in ``requests`` (see ``count`` / ``ranges``).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Seen:
    """One request the server answered."""

    record_id: str
    name: str | None  # None for a record API request
    range: str | None  # the Range header as sent, or None
    status: int
    bytes_sent: int


class FakeZenodo:
    def __init__(self, records: dict | None = None, link_key: str = "self"):
        self.records: dict[str, dict[str, bytes]] = {}
        self.plain: dict[str, bytes] = {}  # name -> bytes, served at /files/<name>
        self.link_key = link_key  # "self" (Zenodo today) or "content"
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        self._fail: dict[str, list] = {}  # name -> [remaining, status]
        self._fail_record: dict[str, list] = {}
        self._truncate: dict[str, list] = {}  # name -> [remaining, after_bytes]
        self._corrupt: dict[str, int | None] = {}  # name -> remaining (None: always)
        self._ignore_range: set[str] = set()
        self._server: ThreadingHTTPServer | None = None
        for record_id, files in (records or {}).items():
            self.add_record(record_id, files)

    # --- setup -----------------------------------------------------------------
    def add_record(self, record_id, files: dict[str, bytes]) -> None:
        with self._lock:
            self.records[str(record_id)] = dict(files)

    def add_file(self, name: str, data: bytes) -> None:
        """Serve ``data`` at ``{files_base}/{name}`` (a plain URL, no record)."""
        with self._lock:
            self.plain[name] = bytes(data)

    def fail_next(self, name: str, n: int = 1, status: int = 503) -> None:
        self._fail[name] = [n, status]

    def fail_record_next(self, record_id, n: int = 1, status: int = 503) -> None:
        self._fail_record[str(record_id)] = [n, status]

    def truncate_next(self, name: str, after_bytes: int, times: int = 1) -> None:
        self._truncate[name] = [times, after_bytes]

    def corrupt(self, name: str, times: int | None = None) -> None:
        self._corrupt[name] = times

    def ignore_range(self, name: str, on: bool = True) -> None:
        (self._ignore_range.add if on else self._ignore_range.discard)(name)

    # --- inspection ------------------------------------------------------------
    def count(self, name: str) -> int:
        """Download requests for file ``name`` (failed ones included)."""
        return sum(1 for s in self.requests if s.name == name)

    def ranges(self, name: str) -> list[str | None]:
        """Range header of each download request for ``name``, in order."""
        return [s.range for s in self.requests if s.name == name]

    def record_count(self, record_id) -> int:
        return sum(1 for s in self.requests if s.name is None and s.record_id == str(record_id))

    @staticmethod
    def md5(data: bytes) -> str:
        return hashlib.md5(data).hexdigest()

    # --- lifecycle -------------------------------------------------------------
    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/api"

    @property
    def files_base(self) -> str:
        """Folder URL of the plain files (``add_file``)."""
        return f"{self.base_url}/files"

    def start(self) -> FakeZenodo:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        # a short poll interval makes shutdown() quick (it waits for the next poll)
        threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeZenodo:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- fault bookkeeping (called by the handler under the lock) ---------------
    @staticmethod
    def _take(knobs: dict, key: str):
        """Consume one use of a counted knob; return its parameter or None."""
        knob = knobs.get(key)
        if not knob or knob[0] <= 0:
            return None
        knob[0] -= 1
        return knob[1]

    def _take_corrupt(self, name: str) -> bool:
        if name not in self._corrupt:
            return False
        left = self._corrupt[name]
        if left is None:
            return True
        if left <= 0:
            return False
        self._corrupt[name] = left - 1
        return True

    def _record_json(self, record_id: str) -> dict:
        files = []
        for name, data in self.records[record_id].items():
            url = f"{self.api_base}/records/{record_id}/files/{urllib.parse.quote(name)}/content"
            files.append(
                {
                    "id": hashlib.md5(name.encode()).hexdigest(),
                    "key": name,
                    "size": len(data),
                    "checksum": f"md5:{self.md5(data)}",
                    "links": {self.link_key: url},
                }
            )
        return {"id": int(record_id) if record_id.isdigit() else record_id, "files": files}


_RECORD = re.compile(r"^/api/records/([^/]+)$")
_FILE = re.compile(r"^/api/records/([^/]+)/files/(.+)/content$")
_PLAIN = re.compile(r"^/files/([^/]+)$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


def _make_handler(zen: FakeZenodo):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection: a truncation is an EOF

        def log_message(self, *args):  # keep pytest output clean
            pass

        def _send(self, status: int, body: bytes, headers: dict | None = None, limit: int | None = None,
                  seen: Seen | None = None):
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            sent = body if limit is None else body[:limit]
            if seen is not None:
                # recorded before writing: the client may finish (and the test inspect
                # ``requests``) before this thread returns from the write
                seen.bytes_sent = len(sent)
            self.wfile.write(sent)
            self.wfile.flush()
            return len(sent)

        def _error(self, status: int) -> None:
            self._send(status, json.dumps({"status": status, "message": "fake error"}).encode())

        def do_GET(self):
            rng = self.headers.get("Range")
            if m := _RECORD.match(self.path):
                record_id = m.group(1)
                with zen._lock:
                    status = zen._take(zen._fail_record, record_id)
                    if status is None:
                        status = 200 if record_id in zen.records else 404
                    body = json.dumps(zen._record_json(record_id)).encode() if status == 200 else None
                    zen.requests.append(Seen(record_id, None, rng, status, 0))
                if body is None:
                    return self._error(status)
                self._send(200, body, {"Content-Type": "application/json"})
                return
            if m := _FILE.match(self.path):
                record_id, name = m.group(1), urllib.parse.unquote(m.group(2))
            elif m := _PLAIN.match(self.path):
                record_id, name = "", urllib.parse.unquote(m.group(1))
            else:
                return self._error(404)
            with zen._lock:
                if record_id:
                    data = zen.records.get(record_id, {}).get(name)
                else:
                    data = zen.plain.get(name)
                seen = Seen(record_id, name, rng, 0, 0)
                zen.requests.append(seen)
                if data is None:
                    seen.status = 404
                elif (status := zen._take(zen._fail, name)) is not None:
                    seen.status = status
                else:
                    if zen._take_corrupt(name):  # same size, one byte flipped
                        data = bytes([data[0] ^ 0xFF]) + data[1:] if data else b"x"
                    limit = zen._take(zen._truncate, name)
                    use_range = rng is not None and name not in zen._ignore_range
            if seen.status:
                return self._error(seen.status)
            total = len(data)
            if use_range:
                r = _RANGE.match(rng)
                if not r:
                    seen.status = 400
                    return self._error(400)
                start = int(r.group(1))
                end = int(r.group(2)) if r.group(2) else total - 1
                if start >= total:
                    seen.status = 416
                    return self._send(416, b"", {"Content-Range": f"bytes */{total}"})
                end = min(end, total - 1)
                seen.status = 206
                self._send(
                    206, data[start : end + 1], {"Content-Range": f"bytes {start}-{end}/{total}"}, limit, seen
                )
            else:
                seen.status = 200
                self._send(200, data, {"Content-Type": "application/octet-stream"}, limit, seen)

    return Handler
