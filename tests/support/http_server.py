"""A Range-capable static HTTP server on 127.0.0.1 for COG tests (GDAL needs byte ranges).

Optionally it demands a query token (``?token=...``, like a signed Azure/Planetary Computer URL:
403 without it) and logs every request, so tests can see that GDAL read ranges and that hrefs were
signed. :func:`sign_with_test_token` is the matching href signer (``tests.support.http_server:sign_with_test_token``).
"""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial

#: The token the server demands with `token=` and the test signer appends.
TEST_TOKEN = "st=2030-01-01&sig=stacchip-test-token"


def sign_with_test_token(href: str) -> str:
    """A local href signer (what planetary_computer.sign does with a SAS token)."""
    return f"{href}{'&' if '?' in href else '?'}{TEST_TOKEN}"


class RangeRequestHandler(http.server.SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler plus single `Range: bytes=a-b` requests (206 Partial Content)."""

    require_token: str | None = None
    request_log: str | None = None

    def log_message(self, format, *args):  # keep test output quiet
        pass

    def _record(self, status: int) -> None:
        if self.request_log:
            with open(self.request_log, "a") as handle:
                handle.write(f"{self.command} {getattr(self, 'raw_path', self.path)} {self.headers.get('Range', '-')} {status}\n")

    def send_response(self, code, message=None):
        self._record(code)
        super().send_response(code, message)

    #: Requests under /slow/ are answered after this many seconds (to test client timeouts).
    slow_seconds = 5.0

    def send_head(self):
        self.raw_path = self.path
        if self.path.startswith("/slow/"):
            time.sleep(self.slow_seconds)
            self.path = self.path[len("/slow"):]
        if self.require_token is not None:
            path, _, query = self.path.partition("?")
            if query != self.require_token:
                self.send_error(403, "Forbidden: missing or wrong signature")
                return None
            self.path = path
        match = re.match(r"bytes=(\d*)-(\d*)$", self.headers.get("Range", ""))
        path = self.translate_path(self.path)
        if not match or not os.path.isfile(path):
            return super().send_head()
        size = os.path.getsize(path)
        start = int(match.group(1)) if match.group(1) else max(size - int(match.group(2)), 0)
        end = min(int(match.group(2)), size - 1) if match.group(1) and match.group(2) else size - 1
        if start >= size:
            self.send_error(416, "Requested Range Not Satisfiable")
            return None
        handle = open(path, "rb")
        handle.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "image/tiff")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        self._remaining = end - start + 1
        return handle

    def copyfile(self, source, outputfile):
        remaining = getattr(self, "_remaining", None)
        if remaining is None:
            return super().copyfile(source, outputfile)
        outputfile.write(source.read(remaining))
        self._remaining = None

    def end_headers(self):
        if not any(h.startswith(b"Accept-Ranges") for h in getattr(self, "_headers_buffer", [])):
            self.send_header("Accept-Ranges", "bytes")
        super().end_headers()


@contextlib.contextmanager
def child_server(command: list[str]) -> Iterator[tuple[subprocess.Popen, int]]:
    """Run a server script in a child process (its own process group) that prints its port first;
    yields (process, port) and stops the whole group afterwards.

    A child process, not a thread: rasterio holds the GIL while GDAL opens a URL, so a server
    thread in the test process could never answer.
    """
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        yield process, int(process.stdout.readline())
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        process.stdout.close()


@contextlib.contextmanager
def serve_directory(directory: str, *, require_token: str | None = None, request_log: str | None = None) -> Iterator[str]:
    """Serve `directory` on a free port from a child process (:func:`child_server`); yields the base URL.

    With `require_token`, every request must carry exactly that query string (else 403);
    `request_log` receives one line per request.
    """
    command = [sys.executable, __file__, str(directory)]
    if require_token is not None:
        command += ["--token", require_token]
    if request_log is not None:
        command += ["--log", str(request_log)]
    with child_server(command) as (_, port):
        yield f"http://127.0.0.1:{port}"


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("--token")
    parser.add_argument("--log")
    args = parser.parse_args()
    handler = type("Handler", (RangeRequestHandler,), {"require_token": args.token, "request_log": args.log})
    # The backlog is fixed when the socket listens (socketserver: 5): the range reader opens up to 32
    # connections at once, and SYNs beyond the backlog wait a second to be retried.
    server_class = type("Server", (http.server.ThreadingHTTPServer,), {"request_queue_size": 128})
    server = server_class(("127.0.0.1", 0), partial(handler, directory=args.directory))
    print(server.server_address[1], flush=True)
    server.serve_forever()
