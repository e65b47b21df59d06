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
import os
import re
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlparse

import numpy as np
import rasterio
import rasterio.errors
from rasterio._err import CPLE_BaseError
from rasterio.io import DatasetReader
from rasterio.windows import Window

from stacchip_assets.core.hrefs import gdal_syntax_problem, raster_driver_of, redact_credentials, strip_credentials
from stacchip_assets.core.limits import ReadLimits
from stacchip_assets.errors import AssetReadError, HrefPolicyError, StacchipError
from stacchip_assets.io.local_files import HrefPolicy
from stacchip_assets.io.malloc_tuning import tune_malloc
from stacchip_assets.io.settings import read_limits


class RefusedRasterError(AssetReadError, HrefPolicyError):
    """A file whose content is not an allowed raster format (VRT, XML, text...): never handed to GDAL."""

    transient = False

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
    # Drivers that read other files or URLs named inside a dataset (VRT and its kin): deregistered when
    # GDAL registers its drivers inside gdal_env (the first rasterio.Env of a process). The guard that
    # always holds is the allowed-drivers list of every open (ALLOWED_DRIVERS, see open_asset).
    "GDAL_SKIP": "VRT DERIVED GTI STACIT STACTA WMS WMTS PLMosaic ESRIC OGCAPI EEDAI DAAS NGW SENTINEL2 SAFE "
                 "ISIS3 PDS4 VICAR ENVI EHdr GenBin ISCE MRF",
}

#: The only GDAL drivers an asset is opened with (GDAL's allowed-drivers list of GDALOpenEx): GeoTIFF
#: (COGs included) and JPEG 2000, formats that cannot name other files. Local files are matched to one
#: by their first bytes; URLs are tried with GTiff first (JP2OpenJPEG first for .jp2/.j2k).
ALLOWED_DRIVERS = ("GTiff", "JP2OpenJPEG")


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


def open_asset(href: str, *, item_id: str | None = None, asset_key: str | None = None,
               policy: HrefPolicy | None = None, limits: ReadLimits | None = None) -> DatasetReader:
    """Open an asset href with rasterio, deciding on what GDAL actually opens; AssetReadError on failure.

    GDAL syntax (``/vsi...``, driver prefixes such as ``GTIFF_RAW:``, inline VRT XML) is refused
    (HrefPolicyError). A local file is opened here first, by descriptor: it must be a regular file
    whose first bytes are TIFF or JPEG 2000 (else RefusedRasterError), inside `policy`'s folders if a
    policy is given, and GDAL then reads that same open file (``/dev/fd/N``), so swapping the path
    afterwards changes nothing. URLs go through the signer of the current :func:`gdal_env`. Every open
    is limited to ALLOWED_DRIVERS, and a tile larger than ``limits.max_tile_pixels`` (default
    :func:`stacchip_assets.io.settings.read_limits`) is a ResourceLimitError before any pixel is read.
    """
    tune_malloc()
    problem = gdal_syntax_problem(href)
    if problem:
        raise HrefPolicyError(f"href {redact_credentials(href)[:200]!r} refused: {problem}", item_id=item_id,
                              asset_key=asset_key)
    if "://" in href:
        dataset = _open_url(href, item_id=item_id, asset_key=asset_key)
    else:
        dataset = _open_local(href, item_id=item_id, asset_key=asset_key, policy=policy)
    try:
        if dataset.driver not in ALLOWED_DRIVERS:  # cannot happen with the allowed-drivers list; kept as a guard
            raise RefusedRasterError(f"{strip_credentials(href)} was opened by GDAL's {dataset.driver} driver, "
                                     f"not one of {ALLOWED_DRIVERS}", item_id=item_id, asset_key=asset_key)
        rows, cols = max(dataset.block_shapes or [(0, 0)], key=lambda b: int(b[0]) * int(b[1]))
        (limits or read_limits()).check_tile((rows, cols), item_id=item_id, asset_key=asset_key,
                                             href=strip_credentials(href))
    except BaseException:
        dataset.close()
        raise
    dataset.stacchip_href = href  # messages name the href, not /dev/fd/N or the signed URL
    return dataset


def _rasterio_open(name: str, driver: str) -> DatasetReader:
    # Decode the blocks of one large read on all cores (GTiff/COG open option; others ignore it).
    return rasterio.open(name, driver=driver, NUM_THREADS="ALL_CPUS")


def _open_url(href: str, *, item_id: str | None, asset_key: str | None) -> DatasetReader:
    """An http(s)/s3 URL, signed, tried with each allowed driver (the likely one first)."""
    opened = sign_href(href)
    path = urlparse(href).path.lower()
    drivers = ALLOWED_DRIVERS[::-1] if path.endswith((".jp2", ".j2k", ".jpx")) else ALLOWED_DRIVERS
    last: BaseException | None = None
    for driver in drivers:
        try:
            return _rasterio_open(opened, driver)
        except (rasterio.errors.RasterioError, CPLE_BaseError) as exc:
            last = exc
            if "not recognized as being in a supported file format" not in str(exc):
                break  # a 404, a timeout, a truncated header: another driver would not help
    assert last is not None  # ALLOWED_DRIVERS is not empty: every pass of the loop returned or set it
    raise AssetReadError(f"cannot open {strip_credentials(href)}: {describe_error(last, href, opened)}",
                         item_id=item_id, asset_key=asset_key) from last


def _open_local(path: str, *, item_id: str | None, asset_key: str | None,
                policy: HrefPolicy | None) -> DatasetReader:
    """A local file opened by descriptor, checked, and handed to GDAL as that same open file."""
    def fail(why: str, cls: type[AssetReadError] = AssetReadError) -> AssetReadError:
        return cls(f"cannot open {path}: {why}", item_id=item_id, asset_key=asset_key)

    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)  # O_NONBLOCK: a FIFO does not block the open; it is refused below
    except OSError as exc:
        raise fail(f"{exc.strerror or exc} (not recognized as a readable file)") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise fail("not a regular file", RefusedRasterError)
        head = os.pread(fd, 16, 0)
        driver = raster_driver_of(head)
        if driver is None:
            raise fail("not a supported raster format: only GeoTIFF/COG and JPEG 2000 files are opened "
                       "(VRT and other formats that name other files are refused)", RefusedRasterError)
        fd_path = f"/proc/self/fd/{fd}"
        real = os.readlink(fd_path) if os.path.islink(fd_path) else os.path.realpath(path)
        if policy is not None and not policy.allows_opened_file(real):
            raise fail(f"the opened file {real} is outside the allowed folders {list(policy.local_roots)}",
                       RefusedRasterError)
        name = f"/dev/fd/{fd}" if os.path.exists(fd_path) else path
        try:
            dataset = _rasterio_open(name, driver)
        except (rasterio.errors.RasterioError, CPLE_BaseError) as exc:
            raise fail(describe_error(exc, path, name)) from exc
        if name != path and os.fstat(fd).st_ino != info.st_ino:  # belt and braces: the descriptor never moves
            dataset.close()
            raise fail("the file changed while it was opened", RefusedRasterError)
        return dataset
    finally:
        os.close(fd)  # GDAL holds its own descriptor of the same file


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
        name = _unsigned_name(getattr(src, "stacchip_href", src.name))
        raise AssetReadError(f"cannot read {name} {window or 'whole raster'}: {describe_error(exc, name, src.name)}",
                             item_id=item_id, asset_key=asset_key) from exc


def _unsigned_name(name: str) -> str:
    """A dataset name without its query string (a signed URL's token stays out of messages)."""
    return name.split("?", 1)[0] if "://" in name or name.startswith("/vsi") else strip_credentials(name)


def read_band(src: DatasetReader, band: int = 1, *, item_id: str | None = None, asset_key: str | None = None) -> np.ndarray:
    """One whole band at native resolution."""
    return read_window(src, None, indexes=band, item_id=item_id, asset_key=asset_key)
