"""A real HTTP server on 127.0.0.1 serving a directory, with Range support and failure switches.

The download tests use it through the ``file_server`` fixture (tests/data/conftest.py); the pipeline's
end-to-end test serves a dataset with it to ``dvc repro`` in a subprocess.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import threading
from pathlib import Path


@dataclasses.dataclass
class FileServer:
    """Serves ``root`` at ``base_url``. Switches, keyed by file name (query strings are ignored):

    * ``status[name] = 404`` (or any code): answer with that error;
    * ``truncate[name] = n``: send the full Content-Length but only the first n body bytes, then close;
    * ``ignore_range``: names for which Range headers are ignored (full 200 answer);
    ``requests`` logs (path with query, Range header or None) of every GET.
    """

    root: Path
    base_url: str = ""
    status: dict[str, int] = dataclasses.field(default_factory=dict)
    truncate: dict[str, int] = dataclasses.field(default_factory=dict)
    ignore_range: set[str] = dataclasses.field(default_factory=set)
    requests: list[tuple[str, str | None]] = dataclasses.field(default_factory=list)

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def add(self, name: str, data: bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path


def _handler(server: FileServer):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def do_GET(self):  # noqa: N802
            rng = self.headers.get("Range")
            server.requests.append((self.path, rng))
            name = self.path.split("?", 1)[0].lstrip("/")
            if name in server.status:
                self.send_error(server.status[name])
                return
            path = server.root / name
            if not name or not path.is_file():
                self.send_error(404)
                return
            data = path.read_bytes()
            start, code = 0, 200
            if rng and name not in server.ignore_range and rng.startswith("bytes=") and rng.endswith("-"):
                start = int(rng[6:-1])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                code = 206
            body = data[start:]
            self.send_response(code)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            if code == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if name in server.truncate:
                body = body[: server.truncate[name]]
                self.close_connection = True
            self.wfile.write(body)
            self.wfile.flush()

    return Handler


@contextlib.contextmanager
def serve(root: Path):
    """A FileServer for ``root`` on an ephemeral port of 127.0.0.1, shut down on exit."""
    state = FileServer(root=root)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
