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
import http.client
import os
import re
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from urllib.parse import unquote, urljoin, urlparse, urlsplit

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
        self._target = url
        if self.scheme == "s3":
            self._bucket, self._key = parsed.netloc, unquote(parsed.path.lstrip("/"))
            self._presigned_at: float = -PRESIGN_SECONDS
            self._presign()

    def _presign(self) -> None:
        """S3 objects are read with plain range GETs on a presigned URL (SigV4 in the query, signed
        once per object and again before it expires): a boto3 request costs milliseconds of CPU
        under the GIL per range, the presigned GET does not."""
        if time.monotonic() - self._presigned_at < PRESIGN_SECONDS * 0.8:
            return
        with self._lock:
            self._target = presign_s3_get(self._bucket, self._key, self.config.gdal_options)
            self._presigned_at = time.monotonic()

    def get(self, offset: int, length: int, *, allow_short: bool = False) -> bytes | bytearray:
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

    def _get_http(self, offset: int, length: int) -> bytes | bytearray:
        """One range GET on this thread's kept-alive connection (see :func:`_connection`): retries
        connection failures and 429/5xx answers, follows redirects, never retries a read that
        started (a stalled server fails after `read_timeout`)."""
        config, url = self.config, self._target
        attempt = redirects = 0
        while True:
            parts = urlsplit(url)
            conn = _connection(parts.scheme, parts.netloc, config)
            reused = conn.sock is not None
            try:
                if conn.sock is None:
                    conn.timeout = config.connect_timeout
                    conn.connect()
            except OSError as exc:
                conn.close()
                if attempt < config.retries:
                    attempt += 1
                    time.sleep(_backoff(attempt))
                    continue
                raise RangeError(_describe(exc, config, connecting=True)) from exc
            try:
                conn.sock.settimeout(config.read_timeout)
                conn.putrequest("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                                skip_accept_encoding=True)
                conn.putheader("Range", f"bytes={offset}-{offset + length - 1}")
                conn.endheaders()
                response = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if reused and isinstance(exc, _STALE):  # the server had closed the idle connection
                    continue
                raise RangeError(_describe(exc, config)) from exc
            status = response.status
            try:
                if status == 206:
                    data = _read_body(response, length)
                    if not response.isclosed():  # a longer or chunked body: the connection is not reusable
                        conn.close()
                    return data
                if status == 200:  # the server ignored Range: read up to our end, drop the rest
                    data = _read_body(response, offset + length)[offset:]
                    conn.close()  # the unread remainder: not worth downloading
                    return data
                if status in _REDIRECTS and response.getheader("Location") and redirects < 3:
                    response.read()
                    url, redirects = urljoin(url, response.getheader("Location")), redirects + 1
                    continue
                if status in _RETRY_STATUS and attempt < config.retries:
                    response.read()
                    attempt += 1
                    time.sleep(_backoff(attempt, response.getheader("Retry-After"), config.read_timeout))
                    continue
                if status == 416:
                    response.read()
                    return b""
                message = self._status_error(response)
                conn.close()
                raise RangeError(message)
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise RangeError(_describe(exc, config)) from exc

    def _status_error(self, response) -> str:
        """`HTTP 404 Not Found`, or for S3 `S3 404 NoSuchKey: <message>` (from the XML error body)."""
        if self.scheme != "s3":
            return f"HTTP {response.status} {response.reason or ''}".strip()
        body = response.read(64 * 1024).decode("utf-8", "replace")
        code = re.search(r"<Code>([^<]*)</Code>", body)
        message = re.search(r"<Message>([^<]*)</Message>", body)
        return (f"S3 {response.status} {code.group(1) if code else response.reason or ''}"
                + (f": {message.group(1)}" if message else "")).strip()


_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: Errors of a request on a kept-alive connection that the server closed while it was idle.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
_local = threading.local()
_ssl_context: ssl.SSLContext | None = None


def _connection(scheme: str, netloc: str, config: RemoteReadConfig) -> http.client.HTTPConnection:
    """This thread's kept-alive connection to `netloc`.

    Each request thread owns its connections (at most `max_in_flight` per host), so there is no
    shared pool to lock: with 32 threads on a few cores, urllib3's pool queue and its per-request
    bookkeeping were a third of the client's CPU per range. http.client is the standard library's.
    """
    global _ssl_context
    if getattr(_local, "pid", None) != os.getpid():  # a forked child: its own sockets
        _local.pid, _local.conns = os.getpid(), {}
    conn = _local.conns.get((scheme, netloc))
    if conn is None:
        if scheme == "https":
            if _ssl_context is None:
                _ssl_context = ssl.create_default_context()  # system CAs; honours SSL_CERT_FILE
            conn = http.client.HTTPSConnection(netloc, timeout=config.connect_timeout, context=_ssl_context)
        else:
            conn = http.client.HTTPConnection(netloc, timeout=config.connect_timeout)
        _local.conns[(scheme, netloc)] = conn
    return conn


def _read_body(response: http.client.HTTPResponse, limit: int) -> bytes | bytearray:
    """Up to `limit` bytes of the body, read into one buffer (short if the server closes early)."""
    size = response.length if response.length is not None else None
    if size is None:
        return response.read(limit)
    buf = bytearray(min(size, limit))
    view, got = memoryview(buf), 0
    while got < len(buf):
        n = response.readinto(view[got:])
        if not n:  # the server closed early: the caller reports the short body
            response.close()
            return buf[:got]
        got += n
    return buf


def _backoff(attempt: int, retry_after: str | None = None, cap: float = 5.0) -> float:
    """0.2 s, 0.4 s, ... or the server's numeric Retry-After (at most `cap`)."""
    delay = 0.2 * 2 ** (attempt - 1)
    if retry_after and retry_after.strip().isdigit():
        delay = max(delay, min(float(retry_after), cap))
    return delay


def _describe(exc: BaseException, config: RemoteReadConfig, connecting: bool = False) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, TimeoutError) or "timed out" in text.lower():
        text = (f"timeout (no connection within {config.connect_timeout:g} s): {text}" if connecting
                else f"timeout (no answer for {config.read_timeout:g} s): {text}")
    return text


_credentials: dict[tuple, object] = {}
_cache_lock = threading.Lock()


def _truthy(value: object, default: str) -> bool:
    return str(value if value is not None else default).upper() in ("YES", "TRUE", "ON", "1")


def presign_s3_get(bucket: str, key: str, options: Mapping[str, str], expires: int = PRESIGN_SECONDS) -> str:
    """An https/http URL that GETs s3://bucket/key, signed with SigV4 in its query (as GDAL signs).

    `options` are GDAL's: ``AWS_S3_ENDPOINT`` (host[:port] or URL; path-style addressing),
    ``AWS_HTTPS``, ``AWS_VIRTUAL_HOSTING``, ``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_NO_SIGN_REQUEST``; without keys, botocore's
    credential chain (environment, profile, instance role). botocore's signer alone: a boto3 client
    would load the S3 service model first (a quarter of a second of CPU).
    """
    from urllib.parse import quote

    endpoint = options.get("AWS_S3_ENDPOINT")
    region = options.get("AWS_REGION") or options.get("AWS_DEFAULT_REGION") or "us-east-1"
    path = quote(key, safe="/~")
    if endpoint and endpoint != "s3.amazonaws.com":
        base = endpoint if "://" in endpoint else f"{'https' if _truthy(options.get('AWS_HTTPS'), 'YES') else 'http'}://{endpoint}"
        url = f"{base.rstrip('/')}/{bucket}/{path}"
    elif _truthy(options.get("AWS_VIRTUAL_HOSTING"), "TRUE") and "." not in bucket:
        url = f"https://{bucket}.s3.{region}.amazonaws.com/{path}"
    else:
        url = f"https://s3.{region}.amazonaws.com/{bucket}/{path}"
    if _truthy(options.get("AWS_NO_SIGN_REQUEST"), "NO"):
        return url
    from botocore.auth import S3SigV4QueryAuth
    from botocore.awsrequest import AWSRequest

    request = AWSRequest(method="GET", url=url)
    S3SigV4QueryAuth(_s3_credentials(options), "s3", region, expires=expires).add_auth(request)
    return request.prepare().url


def _s3_credentials(options: Mapping[str, str]):
    """The keys in `options`, else the credential chain's (resolved once per process); RangeError if none."""
    access, secret, token = (options.get("AWS_ACCESS_KEY_ID"), options.get("AWS_SECRET_ACCESS_KEY"),
                             options.get("AWS_SESSION_TOKEN"))
    key = (os.getpid(), access, secret, token)
    with _cache_lock:
        credentials = _credentials.get(key)
        if credentials is None:
            import botocore.credentials
            import botocore.session

            if access and secret:
                credentials = botocore.credentials.Credentials(access, secret, token)
            else:
                credentials = botocore.session.get_session().get_credentials()
            if credentials is None:
                raise RangeError("no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a "
                                 "profile or instance role), or AWS_NO_SIGN_REQUEST=YES for a public bucket")
            _credentials[key] = credentials
        return credentials


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
