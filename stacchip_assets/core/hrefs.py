"""Which asset hrefs may be opened: STAC items are untrusted input.

An item must never make the code location read where it should not: a local file outside the
allowed folders, `file://` URLs, or GDAL virtual paths (`/vsicurl/`, `/vsizip/`, driver prefixes such
as `HDF5:`, `GTIFF_RAW:`), inline VRT XML smuggled into an href. This module holds the
pure part of the policy (GDAL syntax, schemes, hosts, which file content is a raster);
:class:`stacchip_assets.io.local_files.HrefPolicy` applies it and decides on local paths (resolved,
their first bytes read) before GDAL sees the href; :func:`stacchip_assets.io.raster.open_asset` then
decides on what GDAL actually opens (local files opened by descriptor, TIFF/JPEG 2000 content only,
allowed GDAL drivers only).

Hrefs also carry secrets: providers sign them (Azure SAS ``?st=..&se=..&sp=..&sig=..``, S3 presigned
``X-Amz-Signature``/``X-Amz-Credential``/``X-Amz-Security-Token``, ``token=``, ``access_token=``, ``key=``).
:func:`strip_credentials` removes such query parameters (and ``user:password@``) from an href, keeping
harmless ones; :func:`redact_credentials` does the same inside any text (error messages, logs).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

from stacchip_assets.errors import HrefPolicyError

#: A URL scheme or a GDAL driver prefix (`HDF5:`, `GTIFF_RAW:`, `GTIFF_DIR:1:`, `NETCDF:`): letters, digits,
#: `+ . - _` before a colon.
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-_]*):")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def gdal_syntax_problem(href: str) -> str | None:
    """Why `href` is GDAL syntax rather than a URL or a file path, or None.

    Refused whatever the policy: GDAL virtual paths (``/vsi...``), driver prefixes (``HDF5:``,
    ``GTIFF_RAW:``, ``GTIFF_DIR:1:``) and inline dataset definitions (VRT XML, STACIT/GTI JSON), which
    GDAL opens from the string itself and which can name any local file or URL.
    """
    if not isinstance(href, str) or not href:
        return "empty href"
    if _CONTROL.search(href):
        return "control characters in the href"
    if "/vsi" in href.lower() or href.lower().startswith("vsi"):
        return "GDAL virtual file system paths (/vsi...) are not accepted in STAC hrefs"
    if "<" in href or ">" in href or href.lstrip()[:1] in ("{", "["):
        return "an inline dataset definition (XML/JSON such as a VRT), not a URL or a file path"
    match = _SCHEME.match(href)
    if match and not re.match(r"^[A-Za-z]:[\\/]", href) and "://" not in href:  # not a Windows drive letter
        return f"{match.group(1).lower()}: is a GDAL driver prefix or an unknown URL form, not a URL"
    return None


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """Whether `host` is in `allowed` (exact names; an entry ``.example.com`` admits its subdomains)."""
    host = host.lower().rstrip(".")
    for entry in allowed:
        entry = entry.lower().rstrip(".")
        if host == entry.lstrip(".") or (entry.startswith(".") and host.endswith(entry)):
            return True
    return False


def is_url(href: str) -> bool:
    """Whether `href` is a URL (``scheme://...``) rather than a local path."""
    return bool(_SCHEME.match(href)) and "://" in href


def url_problem(href: str, schemes: tuple[str, ...], allowed_hosts: tuple[str, ...] = ()) -> str | None:
    """Why the URL `href` may not be opened under a policy allowing `schemes` and (if any) only
    `allowed_hosts` for http(s), or None. The string policy of
    :class:`stacchip_assets.io.local_files.HrefPolicy`, which also decides on local paths."""
    match = _SCHEME.match(href)
    if match is None:
        return "not a URL"
    scheme = match.group(1).lower()
    if scheme not in schemes:
        return f"scheme {scheme!r} is not allowed (allowed: {', '.join(schemes)})"
    parsed = urlparse(href)
    if not parsed.netloc:
        return "a URL without a host or bucket"
    if allowed_hosts and scheme in ("http", "https") and not host_allowed(parsed.hostname or "", allowed_hosts):
        return f"host {parsed.hostname!r} is not in the allowed hosts {list(allowed_hosts)}"
    return None


def refusal(href: str, why: str, *, item_id: str | None = None, asset_key: str | None = None) -> HrefPolicyError:
    """The HrefPolicyError of a refused href (control characters masked, at most 200 characters shown)."""
    shown = _CONTROL.sub("?", href)[:200]
    return HrefPolicyError(f"href {shown!r} refused: {why}", item_id=item_id, asset_key=asset_key)


#: First bytes of the local files that may be opened, and the GDAL driver of each: TIFF / BigTIFF
#: (little and big endian) and JPEG 2000 (JP2 box, raw codestream).
RASTER_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"II*\x00", "GTiff"), (b"MM\x00*", "GTiff"), (b"II+\x00", "GTiff"), (b"MM\x00+", "GTiff"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JP2OpenJPEG"), (b"\xff\x4f\xff\x51", "JP2OpenJPEG"),
)


def raster_driver_of(head: bytes) -> str | None:
    """The GDAL driver of a file whose first bytes are `head` (TIFF or JPEG 2000), or None: formats
    that can name other files or URLs (VRT, GTI, STACIT, WMS... XML or JSON) are never opened."""
    return next((driver for magic, driver in RASTER_MAGIC if head.startswith(magic)), None)


# --------------------------------------------------------------------------------------------------
# Credentials in hrefs
# --------------------------------------------------------------------------------------------------

#: Query parameters that are credentials wherever they appear (compared case-insensitively).
CREDENTIAL_PARAMS = frozenset({
    "token", "access_token", "id_token", "refresh_token", "auth", "auth_token", "authorization", "key", "api_key",
    "apikey", "api-key", "x-api-key", "subscription-key", "subscription_key", "code", "password", "passwd", "pwd",
    "secret", "client_secret", "sig", "signature", "awsaccesskeyid", "googleaccessid", "policy", "key-pair-id",
    "sas", "sas_token", "jwt", "session", "sessionid", "session_token", "security_token",
})
#: Parameter name prefixes of presigned URLs: AWS SigV4 (X-Amz-Credential, X-Amz-Signature,
#: X-Amz-Security-Token, ...) and Google Cloud Storage V4 (X-Goog-Credential, X-Goog-Signature, ...).
CREDENTIAL_PREFIXES = ("x-amz-", "x-goog-")
#: Azure SAS fields: stripped together when the query carries a SAS signature (`sig`), since
#: `st`/`se`/`sp`... alone are ordinary names elsewhere.
SAS_PARAMS = frozenset({
    "sv", "ss", "srt", "sp", "se", "st", "spr", "sr", "si", "sdd", "skoid", "sktid", "skt", "ske", "sks", "skv",
    "saoid", "suoid", "scid", "sip", "rscc", "rscd", "rsce", "rscl", "rsct", "ses",
})
#: SigV2 presigned S3 URLs: `Expires` goes with `Signature` and `AWSAccessKeyId`.
_SIGV2_PARAMS = frozenset({"expires"})


def _credential_names(names: list[str]) -> set[str]:
    lowered = {n.lower() for n in names}
    drop = {n for n in lowered if n in CREDENTIAL_PARAMS or n.startswith(CREDENTIAL_PREFIXES)}
    if "sig" in lowered:
        drop |= lowered & SAS_PARAMS
    if "signature" in lowered:
        drop |= lowered & _SIGV2_PARAMS
    return drop


def has_credentials(href: str) -> bool:
    """Whether an href carries credentials in its query string or as ``user:password@``."""
    return isinstance(href, str) and strip_credentials(href) != href


def strip_credentials(href: str) -> str:
    """`href` without credential-like query parameters (see CREDENTIAL_PARAMS, CREDENTIAL_PREFIXES,
    SAS_PARAMS) and without ``user:password@``; other parameters are kept in their order.

    >>> strip_credentials("https://a.blob.core.windows.net/c/x.tif?st=2030&se=2031&sp=r&sig=abc&v=2")
    'https://a.blob.core.windows.net/c/x.tif?v=2'
    """
    if not isinstance(href, str) or ("?" not in href and "@" not in href):
        return href
    try:
        parsed = urlparse(href)
    except ValueError:
        return href.split("?", 1)[0]
    netloc = parsed.netloc
    if "@" in netloc and parsed.scheme:
        netloc = netloc.rsplit("@", 1)[1]
    query = parsed.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        drop = _credential_names([k for k, _ in pairs])
        if drop:
            query = urlencode([(k, v) for k, v in pairs if k.lower() not in drop], safe="/:,")
    if netloc == parsed.netloc and query == parsed.query:
        return href
    return urlunparse(parsed._replace(netloc=netloc, query=query))


_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>)\]]+|/vsi[a-z0-9_]+/[^\s'\"<>)\]]+")
_PARAM_IN_TEXT = re.compile(r"(?i)\b(sig|signature|token|access_token|x-amz-signature|x-amz-credential|"
                            r"x-amz-security-token|x-goog-signature|x-goog-credential|api_key|apikey|key)=[^&\s'\"]+")


def redact_credentials(text: str) -> str:
    """`text` with every URL in it stripped of its credentials (:func:`strip_credentials`) and any
    leftover ``sig=``/``token=``/``X-Amz-Signature=``... value replaced by ``<redacted>``."""
    if not isinstance(text, str) or not text:
        return text
    def clean(match: re.Match) -> str:
        url = match.group(0)
        tail = len(url) - len(url.rstrip(".,:;"))
        return strip_credentials(url[: len(url) - tail]) + url[len(url) - tail:]

    text = _URL_IN_TEXT.sub(clean, text)
    return _PARAM_IN_TEXT.sub(lambda m: f"{m.group(1)}=<redacted>", text)

