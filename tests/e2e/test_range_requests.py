"""How the range reader talks HTTP (stacchip_assets.io.range_reader): it retries a 503, follows a
redirect, reconnects when the server dropped an idle kept-alive connection, and signs S3 GETs as
GDAL does (SigV4 in the query) without a boto3 client.

A real server in a child process (HTTP/1.1, keep-alive) logs every request, so each test sees what
went over the wire; pixels are compared with rasterio's read of the same file.
"""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window

from stacchip_assets import AssetReadError, Chipper, NoStatsChipIndexer
from stacchip_assets.io import range_reader
from stacchip_assets.io.range_reader import RangeError, presign_s3_get, remote_config

from tests.support.cogs import make_item, write_cog

X0, Y0 = 399960.0, 5500020.0

#: /flaky/<file>: the first request of each range is a 503 (Retry-After: 0); /moved/<file>: 302 to
#: /<file>; /drop/<file>: the connection is closed after each answer without saying so (an idle
#: timeout of the server), so the next request on it finds it dead. Every request is logged.
SERVER = r'''
import http.server, os, re, sys, threading
root, log = sys.argv[1], sys.argv[2]
seen, lock = set(), threading.Lock()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def answer(self, status, body=b"", headers=()):
        with lock, open(log, "a") as f:
            f.write(f"{self.path} {self.headers.get('Range')} {status}\n")
        self.send_response(status)
        for k, v in headers: self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        prefix, _, name = self.path.lstrip("/").partition("/")
        if prefix == "moved":
            return self.answer(302, headers=[("Location", "/plain/" + name)])
        if prefix == "flaky":
            with lock:
                first = (name, self.headers.get("Range")) not in seen
                seen.add((name, self.headers.get("Range")))
            if first:
                return self.answer(503, b"busy", [("Retry-After", "0")])
        data = open(os.path.join(root, name), "rb").read()
        a, b = map(int, re.match(r"bytes=(\d+)-(\d+)", self.headers["Range"]).groups())
        body = data[a:b + 1]
        self.answer(206, body, [("Content-Range", f"bytes {a}-{a + len(body) - 1}/{len(data)}")])
        if prefix == "drop":
            self.close_connection = True
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H); s.daemon_threads = True
print(s.server_address[1], flush=True); s.serve_forever()
'''


@pytest.fixture()
def scene(tmp_path):
    from tests.support.http_server import child_server

    data = np.random.default_rng(7).integers(1, 60000, size=(1, 256, 384), dtype=np.uint16)
    write_cog(tmp_path / "b.tif", data, Affine(10, 0, X0, 0, -10, Y0), blocksize=64)
    script, log = tmp_path / "server.py", tmp_path / "requests.log"
    script.write_text(SERVER)
    log.touch()
    with child_server([sys.executable, str(script), str(tmp_path), str(log)]) as (_, port):
        yield tmp_path, f"http://127.0.0.1:{port}", log


def _chips(base: str, prefix: str, folder: Path) -> dict:
    href = f"{base}/{prefix}/b.tif"
    item = make_item("range-1", {"b": (href, (256, 384), Affine(10, 0, X0, 0, -10, Y0))})
    return Chipper(NoStatsChipIndexer(item, chip_size=64), assets=["b"]).chips([0, 5, 2], [0, 3, 1])


def _expected(folder: Path) -> np.ndarray:
    with rasterio.open(folder / "b.tif") as src:
        return np.stack([src.read(window=Window(x * 64, y * 64, 64, 64)) for x, y in ((0, 0), (5, 3), (2, 1))])


def _log(log: Path) -> list[list[str]]:
    return [line.split(" ") for line in log.read_text().splitlines()]


def test_a_503_is_retried_and_the_pixels_arrive(scene):
    folder, base, log = scene
    np.testing.assert_array_equal(_chips(base, "flaky", folder)["b"], _expected(folder))
    lines = _log(log)
    busy = sorted((path, rng) for path, rng, status in lines if status == "503")
    assert busy, lines  # the server did refuse each range first ...
    assert sorted((path, rng) for path, rng, status in lines if status == "206") == busy  # ... then answered it


def test_with_no_retries_the_503_is_an_asset_read_error(scene):
    folder, base, _ = scene
    with remote_config(retries=0), pytest.raises(AssetReadError, match=r"asset 'b': cannot open .*/flaky/b\.tif: HTTP 503"):
        _chips(base, "flaky", folder)


def test_a_redirect_is_followed(scene):
    folder, base, log = scene
    np.testing.assert_array_equal(_chips(base, "moved", folder)["b"], _expected(folder))
    statuses = [line[-1] for line in _log(log)]
    assert statuses.count("302") == statuses.count("206") > 0


def test_a_connection_the_server_dropped_is_reopened(scene):
    folder, base, log = scene
    with remote_config(retries=0):  # no retry budget: only the reconnection of a dead idle connection
        first = _chips(base, "drop", folder)["b"]
        second = _chips(base, "drop", folder)["b"]  # same threads, their connections closed by the server
    np.testing.assert_array_equal(first, _expected(folder))
    np.testing.assert_array_equal(second, _expected(folder))
    assert all(line[-1] == "206" for line in _log(log))


# -- S3 URLs ---------------------------------------------------------------------------------------
KEYS = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"}


def test_s3_urls_are_signed_with_sigv4_for_the_endpoint_and_region():
    custom = urlsplit(presign_s3_get("bucket", "dir/a b.tif", dict(KEYS, AWS_S3_ENDPOINT="127.0.0.1:9000",
                                                                    AWS_HTTPS="NO", AWS_REGION="eu-west-1")))
    assert (custom.scheme, custom.netloc, custom.path) == ("http", "127.0.0.1:9000", "/bucket/dir/a%20b.tif")
    query = parse_qs(custom.query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Credential"][0].startswith("AKIDEXAMPLE/") and "/eu-west-1/s3/aws4_request" in query["X-Amz-Credential"][0]
    assert len(query["X-Amz-Signature"][0]) == 64
    aws = urlsplit(presign_s3_get("bucket", "k.tif", dict(KEYS, AWS_REGION="us-west-2", AWS_SESSION_TOKEN="tok")))
    assert (aws.scheme, aws.netloc, aws.path) == ("https", "bucket.s3.us-west-2.amazonaws.com", "/k.tif")
    assert parse_qs(aws.query)["X-Amz-Security-Token"] == ["tok"]
    dotted = urlsplit(presign_s3_get("my.bucket", "k.tif", KEYS))  # a dotted name breaks the TLS wildcard
    assert (dotted.netloc, dotted.path) == ("s3.us-east-1.amazonaws.com", "/my.bucket/k.tif")
    assert presign_s3_get("bucket", "k.tif", {"AWS_NO_SIGN_REQUEST": "YES", "AWS_REGION": "us-west-2"}) == (
        "https://bucket.s3.us-west-2.amazonaws.com/k.tif")


def test_s3_without_credentials_says_what_to_set(monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr(range_reader, "_credentials", {})  # nothing resolved earlier in this process
    with pytest.raises(RangeError, match="no AWS credentials: set AWS_ACCESS_KEY_ID"):
        presign_s3_get("bucket", "k.tif", {"AWS_S3_ENDPOINT": "127.0.0.1:9000"})
