"""A fault-injecting HTTP reverse proxy on 127.0.0.1, for tests against real servers.

It forwards every request (method, path, query, headers including ``Host``, body) to an upstream
server (a real STAC API, a COG server) and, by a seeded random draw per request, answers instead with
an HTTP error, drops the connection without an answer, delays, or, for STAC ``FeatureCollection``
pages, repeats the previous page's last feature at the top of the next page (an item seen on two
pages, as happens when an item is updated while a client pages through a sorted search).

It runs in a child process (its own process group), like ``tests/support/http_server.py``: rasterio holds
the GIL while GDAL opens a URL, so a server thread in the test process could deadlock. Faults are set
at run time through ``POST /__faults__`` (JSON) and counted at ``GET /__stats__``; both are answered
by the proxy itself, never forwarded. Because the ``Host`` header is forwarded unchanged, a STAC API
behind the proxy writes the proxy's address into its links, so paging goes through the proxy too.

    with fault_proxy(api.url, seed=1) as proxy:
        proxy.configure(fail_rate=0.3, statuses=[500, 502, 503], drop_rate=0.1)
        ... pystac_client.Client.open(proxy.url) ...
        proxy.stats()   # {"requests": 120, "forwarded": 80, "failed": 30, "dropped": 10, ...}
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import random
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

#: Fault settings and their defaults (no faults).
DEFAULT_FAULTS: dict[str, Any] = {
    "fail_rate": 0.0,        # probability of answering with one of `statuses` instead of forwarding
    "statuses": [503],       # HTTP statuses drawn from for failures
    "drop_rate": 0.0,        # probability of closing the connection without any answer
    "delay_rate": 0.0,       # probability of waiting `delay_seconds` before forwarding
    "delay_seconds": 0.0,
    "fail_next": 0,          # the next N requests fail (first status of `statuses`), then the rates apply
    "repeat_rate": 0.0,      # probability that a FeatureCollection page starts with the previous page's last feature
    "only_paths": None,      # if a list of path prefixes: faults apply only to requests whose path starts with one
    "loop_next": False,      # a FeatureCollection page's `next` link is made to request that same page again
}


class _State:
    def __init__(self, seed: int) -> None:
        self.lock = threading.Lock()
        self.random = random.Random(seed)
        self.faults = dict(DEFAULT_FAULTS)
        self.stats = {"requests": 0, "forwarded": 0, "failed": 0, "dropped": 0, "delayed": 0, "repeated": 0, "looped": 0}
        self.last_feature: dict | None = None

    def draw(self, path: str) -> str:
        """What to do with one request: forward, fail, drop, delay (then forward)."""
        with self.lock:
            self.stats["requests"] += 1
            faults = self.faults
            prefixes = faults.get("only_paths")
            if prefixes and not any(path.startswith(p) for p in prefixes):
                return "forward"
            if faults["fail_next"] > 0:
                faults["fail_next"] -= 1
                return "fail"
            roll = self.random.random()
            if roll < faults["fail_rate"]:
                return "fail"
            if roll < faults["fail_rate"] + faults["drop_rate"]:
                return "drop"
            if self.random.random() < faults["delay_rate"]:
                return "delay"
            return "forward"


def _handler(upstream: str, state: _State):  # noqa: C901 (mccabe counts the whole handler class, its methods are small)
    target = urlparse(upstream)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # keep test output quiet
            pass

        def _reply(self, status: int, body: bytes, content_type: str = "application/json", headers=()) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _control(self) -> bool:
            if self.path == "/__stats__":
                with state.lock:
                    body = json.dumps({**state.stats, "faults": state.faults}).encode()
                self._reply(200, body)
                return True
            if self.path == "/__faults__" and self.command == "POST":
                length = int(self.headers.get("Content-Length") or 0)
                values = json.loads(self.rfile.read(length) or b"{}")
                unknown = set(values) - set(DEFAULT_FAULTS)
                if unknown:
                    self._reply(400, json.dumps({"unknown": sorted(unknown)}).encode())
                    return True
                with state.lock:
                    state.faults = {**DEFAULT_FAULTS, **values}
                self._reply(200, json.dumps(state.faults).encode())
                return True
            return False

        def _forward(self) -> None:
            if self._control():
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            action = state.draw(self.path)
            if action == "drop":
                with state.lock:
                    state.stats["dropped"] += 1
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(2)
                return
            if action == "fail":
                with state.lock:
                    state.stats["failed"] += 1
                    status = state.random.choice(state.faults["statuses"])
                self._reply(status, json.dumps({"code": "InjectedFault", "description": f"injected HTTP {status}"}).encode(),
                            headers=[("Retry-After", "0")] if status in (429, 503) else ())
                return
            if action == "delay":
                with state.lock:
                    state.stats["delayed"] += 1
                    delay = float(state.faults["delay_seconds"])
                time.sleep(delay)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive", "accept-encoding")}
            connection = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=120)
            try:
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                status = response.status
                upstream_length = response.getheader("Content-Length")
                response_headers = [(k, v) for k, v in response.getheaders()
                                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "keep-alive")]
            except OSError as exc:
                self._reply(502, json.dumps({"code": "BadGateway", "description": str(exc)}).encode())
                return
            finally:
                connection.close()
            next_page = "token=" in self.path or (body is not None and b'"token"' in body)
            payload = self._maybe_repeat(payload, status, response_headers, next_page)
            payload = self._maybe_loop(payload, body)
            with state.lock:
                state.stats["forwarded"] += 1
            self.send_response(status)
            for name, value in response_headers:
                self.send_header(name, value)
            # a HEAD answer has no body: keep the length the upstream gave for the GET
            length = upstream_length if self.command == "HEAD" and upstream_length is not None else str(len(payload))
            self.send_header("Content-Length", length)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def _maybe_repeat(self, payload: bytes, status: int, headers, next_page: bool) -> bytes:
            """On a page after the first (the request carries a paging token), repeat the previous page's
            last feature at the top of this one, with probability repeat_rate."""
            content_type = next((v for k, v in headers if k.lower() == "content-type"), "")
            if status != 200 or "json" not in content_type:
                return payload
            try:
                page = json.loads(payload)
            except ValueError:
                return payload
            if not isinstance(page, dict) or page.get("type") != "FeatureCollection" or not page.get("features"):
                return payload
            with state.lock:
                previous = state.last_feature
                state.last_feature = page["features"][-1]
                repeat = next_page and previous is not None and state.random.random() < state.faults["repeat_rate"]
                if repeat:
                    state.stats["repeated"] += 1
            if not repeat:
                return payload
            page["features"] = [previous, *page["features"]]
            return json.dumps(page).encode()

        def _maybe_loop(self, payload: bytes, body: bytes | None) -> bytes:
            """With loop_next, point a page's next link (if it has one) at the request that produced this
            page: same method, URL and body (a STAC API that pages in a circle)."""
            with state.lock:
                loop = bool(state.faults["loop_next"])
            if not loop:
                return payload
            try:
                page = json.loads(payload)
            except ValueError:
                return payload
            if not isinstance(page, dict) or not any(isinstance(x, dict) and x.get("rel") == "next" for x in page.get("links") or []):
                return payload
            link = {"rel": "next", "type": "application/geo+json", "method": self.command,
                    "href": f"http://{self.headers.get('Host')}{self.path}"}
            if body:
                link["body"] = json.loads(body)
            page["links"] = [x for x in page["links"] if x.get("rel") != "next"] + [link]
            with state.lock:
                state.stats["looped"] += 1
            return json.dumps(page).encode()

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _forward

    return Handler


@dataclass
class FaultProxy:
    """A running proxy: ``url`` to point clients at, ``configure`` / ``stats`` to steer and count."""

    url: str
    upstream: str
    process: subprocess.Popen

    def _call(self, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}{path}", data=data, method="POST" if data is not None else "GET",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def configure(self, **faults: Any) -> dict:
        """Replace the fault settings (unset ones go back to no faults); see DEFAULT_FAULTS."""
        return self._call("/__faults__", faults)

    def clear(self) -> dict:
        return self._call("/__faults__", {})

    def stats(self) -> dict:
        return self._call("/__stats__")


@contextlib.contextmanager
def fault_proxy(upstream: str, *, seed: int = 0) -> Iterator[FaultProxy]:
    """Start a proxy to `upstream` (``http://host:port``) on a free port; no faults until configured."""
    from .http_server import child_server  # the parent only: the child runs this file as a script

    with child_server([sys.executable, __file__, upstream, "--seed", str(seed)]) as (process, port):
        yield FaultProxy(url=f"http://127.0.0.1:{port}", upstream=upstream, process=process)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("upstream")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server_class = type("Server", (http.server.ThreadingHTTPServer,), {"request_queue_size": 128})  # backlog: 5 by default
    server = server_class(("127.0.0.1", args.port), _handler(args.upstream.rstrip("/"), _State(args.seed)))
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()
