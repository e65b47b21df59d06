"""A Range-capable static HTTP server on 127.0.0.1 for COG tests (GDAL needs byte ranges)."""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import subprocess
import sys
from functools import partial
from typing import Iterator


class RangeRequestHandler(http.server.SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler plus single `Range: bytes=a-b` requests (206 Partial Content)."""

    def log_message(self, format, *args):  # keep test output quiet
        pass

    def send_head(self):
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
def serve_directory(directory: str) -> Iterator[str]:
    """Serve `directory` on a free port from a child process; yields the base URL.

    A child process, not a thread: rasterio holds the GIL while GDAL opens a URL, so a server
    thread in the test process could never answer.
    """
    process = subprocess.Popen(
        [sys.executable, __file__, directory], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        port = int(process.stdout.readline())
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


if __name__ == "__main__":
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeRequestHandler, directory=sys.argv[1]))
    print(server.server_address[1], flush=True)
    server.serve_forever()
