"""The one place where rasterio/GDAL is called to open and read assets, with errors translated.

A 404, a truncated COG or a non-raster file surfaces as AssetReadError naming the item, the
asset, the href and GDAL's cause, instead of a bare traceback from deep inside GDAL.

How assets are reached -- GDAL's network settings, the S3 endpoint and credentials, an optional
href signer -- is one value, :class:`AssetAccess`, applied around indexing and chipping with
:func:`gdal_env`::

    access = AssetAccess(s3_endpoint_url="http://127.0.0.1:9000", access_key_id="k", secret_access_key="s")
    with gdal_env(access):
        index = Indexer(item).create_index()          # s3:// and https:// COG hrefs read through GDAL
        pixels = Chipper(Indexer(item)).chip(0, 0)

Nothing is taken from the caller's GDAL/AWS environment by luck: inside the block GDAL sees exactly
the options of ``access`` (unset credentials fall back to boto3's usual chain, as rasterio does).
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import logging
import re
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping
from urllib.parse import urlparse

import numpy as np
import rasterio
import rasterio.errors
from rasterio._err import CPLE_BaseError
from rasterio.io import DatasetReader
from rasterio.windows import Window

from .errors import AssetReadError, StacchipError
from .hrefs import redact_credentials, strip_credentials

#: GDAL settings for reading COGs over HTTP and S3 (see GDAL's "Cloud optimized GeoTIFF" notes):
#: no directory listing on open, consecutive ranges merged into one request, a block cache for
#: network files, and a few retries on 429/5xx. Any of them can be overridden (AssetAccess.gdal_options).
DEFAULT_GDAL_OPTIONS: dict[str, str] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": str(64 * 1024 * 1024),
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "GDAL_HTTP_TIMEOUT": "60",
}

#: Options that carry credentials: never accepted in `gdal_options` (they would be shown in the UI).
_SECRET_OPTIONS = frozenset({"AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "GS_SECRET_ACCESS_KEY",
                             "AZURE_STORAGE_ACCESS_KEY", "AZURE_STORAGE_SAS_TOKEN", "GDAL_HTTP_USERPWD",
                             "GDAL_HTTP_HEADERS", "GDAL_HTTP_AUTH"})

#: An href signer: takes an asset href, returns the href to open (e.g. with a SAS token appended).
HrefSigner = Callable[[str], str]

_signer: contextvars.ContextVar[HrefSigner | None] = contextvars.ContextVar("stacchip_href_signer", default=None)
_secrets: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("stacchip_secrets", default=())


def load_signer(spec: str | HrefSigner | None) -> HrefSigner | None:
    """A signer from ``"package.module:function"`` (e.g. ``"planetary_computer:sign"``), a callable, or None."""
    if spec is None or callable(spec):
        return spec
    module_name, _, attr = str(spec).partition(":")
    if not module_name or not attr:
        raise StacchipError(f"href signer {spec!r} must look like 'package.module:function'")
    try:
        target = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise StacchipError(f"cannot load the href signer {spec!r}: {exc}") from exc
    if not callable(target):
        raise StacchipError(f"href signer {spec!r} is not callable")
    return target


def _endpoint(url: str) -> tuple[str, bool]:
    """("host:port", is_https) of an endpoint URL; a bare host:port means https."""
    if "://" not in url:
        return url.rstrip("/"), True
    parsed = urlparse(url)
    return parsed.netloc, parsed.scheme != "http"


@dataclass(frozen=True)
class AssetAccess:
    """How asset hrefs are reached: GDAL options, S3 endpoint/credentials and an href signer.

    `s3_endpoint_url` is an S3-compatible endpoint (``http://127.0.0.1:9000``): it sets
    ``AWS_S3_ENDPOINT``, ``AWS_HTTPS`` and path-style addressing (``AWS_VIRTUAL_HOSTING=FALSE``).
    `access_key_id`/`secret_access_key` sign S3 requests; without them boto3's usual chain is used,
    and `s3_unsigned` reads public buckets anonymously. `gdal_options` adds or overrides GDAL
    configuration options (credentials are refused there). `href_signer` maps each href before it is
    opened (``"module:function"`` or a callable), e.g. Planetary Computer's ``planetary_computer:sign``.
    """

    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    s3_unsigned: bool = False
    gdal_options: Mapping[str, str] = field(default_factory=dict)
    href_signer: str | HrefSigner | None = None

    def __post_init__(self) -> None:
        refused = sorted(k for k in self.gdal_options if k.upper() in _SECRET_OPTIONS)
        if refused:
            raise StacchipError(f"gdal_options must not carry credentials ({refused}); use the credential fields")

    def config_options(self) -> dict[str, str]:
        """The GDAL configuration options (no credentials) this access applies."""
        options = dict(DEFAULT_GDAL_OPTIONS)
        if self.s3_endpoint_url:
            host, https = _endpoint(self.s3_endpoint_url)
            options.update(AWS_S3_ENDPOINT=host, AWS_HTTPS="YES" if https else "NO", AWS_VIRTUAL_HOSTING="FALSE")
        else:  # GDAL's own defaults, spelled out: a stray AWS_S3_ENDPOINT in the process environment is ignored
            options.update(AWS_S3_ENDPOINT="s3.amazonaws.com", AWS_HTTPS="YES", AWS_VIRTUAL_HOSTING="TRUE")
        if self.s3_region:
            options["AWS_REGION"] = self.s3_region
        options.update({str(k): str(v) for k, v in self.gdal_options.items()})
        return options

    def session(self):
        """The rasterio AWS session (credentials), or None to let rasterio use boto3's chain per open."""
        from rasterio.session import AWSSession

        if self.s3_unsigned:
            return AWSSession(aws_unsigned=True, region_name=self.s3_region)
        if self.access_key_id and self.secret_access_key:
            return AWSSession(aws_access_key_id=self.access_key_id, aws_secret_access_key=self.secret_access_key,
                              aws_session_token=self.session_token, region_name=self.s3_region, aws_unsigned=False)
        return None

    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.secret_access_key, self.session_token) if s)


class RedactCredentials(logging.Filter):
    """A logging filter that strips signed-URL tokens (and the access's secrets) from log records:
    rasterio logs dataset names, which are the signed hrefs, at DEBUG level; GDAL's debug messages
    reach the same loggers."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken record: leave it to logging's own error handling
            return True
        clean = redact_credentials(message)
        for secret in _secrets.get():
            clean = clean.replace(secret, "<secret>")
        if clean != message:
            record.msg, record.args = clean, None
        return True


_REDACT = RedactCredentials()


def _redact_library_logs() -> None:
    """Put the filter on rasterio's loggers (filters are not inherited: every existing one gets it)."""
    for name in ["rasterio", *[n for n in list(logging.root.manager.loggerDict) if n.startswith("rasterio.")]]:
        target = logging.getLogger(name)
        if _REDACT not in target.filters:
            target.addFilter(_REDACT)


_redact_library_logs()


@contextlib.contextmanager
def gdal_env(access: AssetAccess | None = None) -> Iterator[AssetAccess]:
    """Apply `access` (default: GDAL's COG settings only) to every asset opened and read inside."""
    _redact_library_logs()
    access = access if access is not None else AssetAccess()
    signer = load_signer(access.href_signer)
    session = access.session()
    env = rasterio.Env(session=session, **access.config_options()) if session is not None else rasterio.Env(
        **access.config_options())
    signer_token = _signer.set(signer)
    secrets_token = _secrets.set(access.secrets())
    try:
        with env:
            yield access
    finally:
        _signer.reset(signer_token)
        _secrets.reset(secrets_token)


def sign_href(href: str) -> str:
    """`href` through the signer of the current :func:`gdal_env` (unchanged without one)."""
    signer = _signer.get()
    if signer is None:
        return href
    # An href that arrived signed carries a token that may have expired: sign it afresh.
    unsigned = strip_credentials(href)
    try:
        signed = signer(unsigned)
    except Exception as exc:
        raise AssetReadError(f"the href signer failed for {unsigned}: {type(exc).__name__}: "
                             f"{redact_credentials(str(exc))}") from exc
    if not isinstance(signed, str) or not signed:
        raise AssetReadError(f"the href signer returned {redact_credentials(repr(signed))} for {unsigned}")
    return signed


_CREDENTIAL_HINTS = re.compile(
    r"SignatureDoesNotMatch|signature we calculated|InvalidAccessKeyId|access key id you provided|"
    r"AccessDenied|Access Denied|HTTP response code: 40[13]|\b40[13]\b|ExpiredToken|InvalidToken",
    re.IGNORECASE,
)


def describe_error(exc: BaseException, href: str, opened: str) -> str:
    """GDAL's message, with the signed href (its token) and any secret redacted, and a hint when
    the server refused the credentials."""
    text = str(exc)
    if opened != href:
        text = text.replace(opened, href)
        query = urlparse(opened).query
        if query:
            text = text.replace(query, "<signature>")
    for secret in _secrets.get():
        text = text.replace(secret, "<secret>")
    text = redact_credentials(text)  # tokens of hrefs that arrived signed, and any GDAL echoes of them
    if _CREDENTIAL_HINTS.search(text):
        text += " (access refused: check the credentials or the href signer of the storage resource)"
    return text


def open_asset(href: str, *, item_id: str | None = None, asset_key: str | None = None) -> DatasetReader:
    """Open an asset href with rasterio, raising AssetReadError with the cause on failure.

    The href goes through the signer of the current :func:`gdal_env` first (an href that arrived
    signed is stripped of its token and signed afresh); messages show the href without any token."""
    opened = sign_href(href)
    try:
        # Decode the blocks of one large read on all cores (GTiff/COG open option; others ignore it).
        return rasterio.open(opened, NUM_THREADS="ALL_CPUS")
    except (rasterio.errors.RasterioError, CPLE_BaseError) as exc:
        raise AssetReadError(f"cannot open {strip_credentials(href)}: {describe_error(exc, href, opened)}", item_id=item_id,
                             asset_key=asset_key) from exc


def read_window(
    src: DatasetReader,
    window: Window | None = None,
    *,
    indexes: list[int] | int | None = None,
    item_id: str | None = None,
    asset_key: str | None = None,
) -> np.ndarray:
    """`src.read(...)`, raising AssetReadError (corrupt or truncated data) with the cause."""
    try:
        return src.read(indexes, window=window)
    except (rasterio.errors.RasterioError, CPLE_BaseError) as exc:
        name = _unsigned_name(src.name)
        raise AssetReadError(f"cannot read {name} {window or 'whole raster'}: {describe_error(exc, name, src.name)}",
                             item_id=item_id, asset_key=asset_key) from exc


def _unsigned_name(name: str) -> str:
    """A dataset name without its query string (a signed URL's token stays out of messages)."""
    return name.split("?", 1)[0] if "://" in name or name.startswith("/vsi") else strip_credentials(name)


def read_band(src: DatasetReader, band: int = 1, *, item_id: str | None = None, asset_key: str | None = None) -> np.ndarray:
    """One whole band at native resolution."""
    return read_window(src, None, indexes=band, item_id=item_id, asset_key=asset_key)
