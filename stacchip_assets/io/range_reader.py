"""Byte ranges of remote files over HTTP(S) and S3, many requests in flight, memory bounded.

One configuration for both (:class:`RemoteReadConfig`): in-flight requests, the in-flight budget of
compressed bytes, timeouts, and -- taken from the GDAL environment the caller set up with
:func:`stacchip_assets.io.raster.gdal_env` -- the S3 endpoint, region and credentials, so the storage
resource configures GDAL and this reader alike. A server that stops answering raises after the read
timeout; 4xx/5xx answers and short bodies raise :class:`RangeError` (the caller names item/asset).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from urllib.parse import unquote, urlparse

import urllib3

from stacchip_assets.io.raster import RedactCredentials


class _RedactRequestLines(RedactCredentials):
    """urllib3 logs request lines (``"GET /path?sig=... HTTP/1.1"``, signed URLs) at DEBUG: drop
    their query strings, then redact as rio does for rasterio's loggers."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        clean = re.sub(r'("[A-Z]+ [^\s?"]*)\?[^\s"]*', r"\1", message)
        if clean != message:
            record.msg, record.args = clean, None
        return super().filter(record)


#: Filters are not inherited: each urllib3 logger gets it.
_REDACT = _RedactRequestLines()
for _name in ("urllib3", "urllib3.connectionpool", "urllib3.poolmanager", "urllib3.connection", "urllib3.util.retry",
              "urllib3.response"):
    logging.getLogger(_name).addFilter(_REDACT)

#: Range requests served by each thread pool (process-wide, recreated after fork).
_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


#: Lifetime of a presigned S3 URL (renewed at 80 %).
PRESIGN_SECONDS = 3600


class RangeError(Exception):
    """A range could not be fetched (HTTP status, timeout, connection error, short body)."""


@dataclass(frozen=True)
class RemoteReadConfig:
    """Settings of the remote range reader.

    `max_in_flight`: range requests at once (process-wide pool). `max_inflight_bytes`: compressed
    bytes requested but not yet decoded, per read (the memory bound besides the output arrays).
    `merge_gap`: ranges closer than this are fetched with one request. `max_request_bytes`: a merged
    request is not grown beyond this. Timeouts in seconds: `connect_timeout`, `read_timeout` (no byte
    for this long: the request fails), `retries` on connection errors and 5xx/429. `tile_cache_bytes`:
    decoded tiles kept per open raster (neighbouring chips read by separate calls share tiles).
    `enabled=False` sends every read to GDAL. S3 endpoint/credentials come from `gdal_options`
    (``AWS_S3_ENDPOINT``, ``AWS_HTTPS``, ``AWS_VIRTUAL_HOSTING``, ``AWS_REGION``, ``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_NO_SIGN_REQUEST``), by default the current
    rasterio/GDAL environment.
    """

    enabled: bool = True
    max_in_flight: int = 32
    max_inflight_bytes: int = 64 * 1024 * 1024
    merge_gap: int = 16 * 1024
    max_request_bytes: int = 8 * 1024 * 1024
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    retries: int = 2
    tile_cache_bytes: int = 16 * 1024 * 1024
    gdal_options: Mapping[str, str] = field(default_factory=dict, repr=False)

    def with_gdal_environment(self) -> RemoteReadConfig:
        """This config with the S3/HTTP options of the current GDAL environment (read in this thread:
        rasterio environments are thread-local) and of the process environment."""
        import rasterio.env

        options = {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "GDAL_HTTP"))}
        if rasterio.env.hasenv():
            options.update({k: str(v) for k, v in rasterio.env.getenv().items()})
        options.update(self.gdal_options)
        timeout = options.get("GDAL_HTTP_TIMEOUT")
        cfg = replace(self, gdal_options=options)
        if timeout and "read_timeout" not in _explicit.get():
            with contextlib.suppress(ValueError):
                cfg = replace(cfg, read_timeout=min(cfg.read_timeout, float(timeout)))
        return cfg


_config: contextvars.ContextVar[RemoteReadConfig] = contextvars.ContextVar("stacchip_remote_config",
                                                                           default=RemoteReadConfig())  # noqa: B039 (frozen)
_explicit: contextvars.ContextVar[frozenset] = contextvars.ContextVar("stacchip_remote_explicit", default=frozenset())


def current_config() -> RemoteReadConfig:
    return _config.get()


@contextlib.contextmanager
def remote_config(**settings) -> Iterator[RemoteReadConfig]:
    """Use these :class:`RemoteReadConfig` settings for remote assets opened inside the block."""
    cfg = replace(_config.get(), **settings)
    token, explicit = _config.set(cfg), _explicit.set(_explicit.get() | frozenset(settings))
    try:
        yield cfg
    finally:
        _config.reset(token)
        _explicit.reset(explicit)


def fetch_pool(max_in_flight: int) -> ThreadPoolExecutor:
    """The process-wide pool of `max_in_flight` request threads (a new one in a forked child)."""
    key = (os.getpid(), max_in_flight)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = ThreadPoolExecutor(max_workers=max_in_flight,
                                                          thread_name_prefix="stacchip-range")
        return pool


class ByteBudget:
    """At most `limit` bytes held at once (one request larger than the limit runs alone); keeps the peak."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, int(limit))
        self.held = 0
        self.peak = 0
        self._cond = threading.Condition()

    def acquire(self, n: int) -> None:
        with self._cond:
            while self.held and self.held + n > self.limit:
                self._cond.wait()
            self.held += n
            self.peak = max(self.peak, self.held)

    def release(self, n: int) -> None:
        with self._cond:
            self.held -= n
            self._cond.notify_all()


class RangeSource:
    """Fetches byte ranges of one URL (http, https or s3)."""

    def __init__(self, url: str, config: RemoteReadConfig) -> None:
        self.url = url
        self.config = config
        self.requests = 0
        self.bytes = 0
        self._lock = threading.Lock()
        parsed = urlparse(url)
        self.scheme = parsed.scheme.lower()
        if self.scheme not in ("http", "https", "s3"):
            raise ValueError(f"not an http(s) or s3 URL: {parsed.scheme}")
        self._http = _http_pool(config)
        self._target = url
        if self.scheme == "s3":
            self._bucket, self._key = parsed.netloc, unquote(parsed.path.lstrip("/"))
            self._client = _s3_client(config)
            self._presigned_at: float = -PRESIGN_SECONDS
            self._presign()

    def _presign(self) -> None:
        """S3 objects are read with plain range GETs on a presigned URL (SigV4 in the query, signed
        once per object and again before it expires): botocore's per-request machinery costs
        milliseconds of CPU under the GIL per range, the presigned GET does not."""
        if time.monotonic() - self._presigned_at < PRESIGN_SECONDS * 0.8:
            return
        with self._lock:
            self._target = self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self._bucket, "Key": self._key}, ExpiresIn=PRESIGN_SECONDS)
            self._presigned_at = time.monotonic()

    def get(self, offset: int, length: int, *, allow_short: bool = False) -> bytes:
        """Bytes [offset, offset + length); RangeError unless all arrive (or `allow_short`: up to EOF)."""
        if self.scheme == "s3":
            self._presign()
        data = self._get_http(offset, length)
        with self._lock:
            self.requests += 1
            self.bytes += len(data)
        if len(data) > length:
            data = data[:length]
        if len(data) < length and not allow_short:
            raise RangeError(f"truncated: bytes {offset}-{offset + length - 1} requested, {len(data)} received")
        return data

    def _get_http(self, offset: int, length: int) -> bytes:
        headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
        try:
            response = self._http.request("GET", self._target, headers=headers, preload_content=False)
            try:
                if response.status == 200:  # the server ignored Range: read up to our end, drop the rest
                    return response.read(offset + length)[offset:]
                if response.status == 416:
                    return b""
                if response.status != 206:
                    raise RangeError(self._status_error(response))
                data = response.read()
            finally:
                if response.status == 200:
                    response.close()  # the unread remainder: not worth downloading
                else:
                    response.release_conn()
        except urllib3.exceptions.HTTPError as exc:
            raise RangeError(_describe_urllib3(exc, self.config)) from exc
        return data

    def _status_error(self, response) -> str:
        """`HTTP 404 Not Found`, or for S3 `S3 404 NoSuchKey: <message>` (from the XML error body)."""
        if self.scheme != "s3":
            return f"HTTP {response.status} {response.reason or ''}".strip()
        body = response.read(64 * 1024).decode("utf-8", "replace")
        code = re.search(r"<Code>([^<]*)</Code>", body)
        message = re.search(r"<Message>([^<]*)</Message>", body)
        return (f"S3 {response.status} {code.group(1) if code else response.reason or ''}"
                + (f": {message.group(1)}" if message else "")).strip()


def _describe_urllib3(exc: Exception, config: RemoteReadConfig) -> str:
    reason = getattr(exc, "reason", None) or exc
    text = f"{type(reason).__name__}: {reason}"
    if "timed out" in text.lower() or "Timeout" in type(reason).__name__:
        text = f"timeout (no answer for {config.read_timeout:g} s): {text}"
    return text


_http_pools: dict[tuple, urllib3.PoolManager] = {}
_s3_clients: dict[tuple, object] = {}
_cache_lock = threading.Lock()


def _http_pool(config: RemoteReadConfig) -> urllib3.PoolManager:
    key = (os.getpid(), config.max_in_flight, config.connect_timeout, config.read_timeout, config.retries)
    with _cache_lock:
        pool = _http_pools.get(key)
        if pool is None:
            retries = urllib3.Retry(total=config.retries, connect=config.retries, read=0, redirect=3,
                                    status_forcelist=(429, 500, 502, 503, 504), backoff_factor=0.2,
                                    allowed_methods=frozenset({"GET"}), raise_on_status=False)
            pool = _http_pools[key] = urllib3.PoolManager(
                num_pools=64, maxsize=config.max_in_flight, block=False, retries=retries,
                timeout=urllib3.Timeout(connect=config.connect_timeout, read=config.read_timeout))
        return pool


def _s3_client(config: RemoteReadConfig):
    """A boto3 S3 client for the endpoint/credentials of `config` (one per distinct setting)."""
    o = config.gdal_options
    endpoint = o.get("AWS_S3_ENDPOINT")
    https = str(o.get("AWS_HTTPS", "YES")).upper() not in ("NO", "FALSE", "OFF", "0")
    url = None
    if endpoint and endpoint != "s3.amazonaws.com":
        url = endpoint if "://" in endpoint else f"{'https' if https else 'http'}://{endpoint}"
    virtual = str(o.get("AWS_VIRTUAL_HOSTING", "TRUE")).upper() not in ("NO", "FALSE", "OFF", "0")
    unsigned = str(o.get("AWS_NO_SIGN_REQUEST", "NO")).upper() in ("YES", "TRUE", "ON", "1")
    creds = (o.get("AWS_ACCESS_KEY_ID"), o.get("AWS_SECRET_ACCESS_KEY"), o.get("AWS_SESSION_TOKEN"))
    region = o.get("AWS_REGION") or o.get("AWS_DEFAULT_REGION")
    key = (os.getpid(), url, virtual, unsigned, creds, region, config.max_in_flight, config.connect_timeout,
           config.read_timeout, config.retries)
    with _cache_lock:
        client = _s3_clients.get(key)
        if client is None:
            import boto3
            import botocore
            from botocore.config import Config

            settings = Config(
                max_pool_connections=config.max_in_flight, connect_timeout=config.connect_timeout,
                read_timeout=config.read_timeout, retries={"max_attempts": config.retries + 1, "mode": "standard"},
                s3={"addressing_style": "virtual" if virtual and url is None else "path"},
                signature_version=botocore.UNSIGNED if unsigned else None,
            )
            session = boto3.session.Session(
                aws_access_key_id=creds[0] if creds[0] and creds[1] else None,
                aws_secret_access_key=creds[1] if creds[0] and creds[1] else None,
                aws_session_token=creds[2] if creds[0] and creds[1] else None,
                region_name=region or "us-east-1")
            client = _s3_clients[key] = session.client("s3", endpoint_url=url, config=settings)
        return client


def merge_ranges(starts, lengths, gap: int, max_bytes: int) -> list[tuple[int, int, list[int]]]:
    """Group ranges (sorted by start) into requests: (offset, length, member indices); ranges closer
    than `gap` bytes share a request up to `max_bytes`."""
    order = sorted(range(len(starts)), key=lambda i: starts[i])
    groups: list[tuple[int, int, list[int]]] = []
    for i in order:
        s, n = int(starts[i]), int(lengths[i])
        if groups:
            g0, glen, members = groups[-1]
            if s - (g0 + glen) <= gap and max(g0 + glen, s + n) - g0 <= max_bytes:
                groups[-1] = (g0, max(g0 + glen, s + n) - g0, members + [i])
                continue
        groups.append((s, n, [i]))
    return groups
