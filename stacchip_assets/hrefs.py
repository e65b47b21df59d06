"""Which asset hrefs may be opened: STAC items are untrusted input.

An item must never make the code location read where it should not: a local file outside the
allowed folders, `file://` URLs, or GDAL virtual paths (`/vsicurl/`, `/vsizip/`, driver prefixes such
as `HDF5:`) smuggled into an href. The policy is checked before GDAL sees the href.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from .errors import HrefPolicyError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class HrefPolicy:
    """Allowed URL schemes and local folders for asset hrefs.

    `schemes`: URL schemes that may be opened (default http, https, s3). `local_roots`: folders whose
    files may be opened by plain path (resolved, symlinks followed); empty means no local files.
    """

    schemes: tuple[str, ...] = ("http", "https", "s3")
    local_roots: tuple[str, ...] = field(default_factory=tuple)

    def check(self, href: str, *, item_id: str | None = None, asset_key: str | None = None) -> str:
        """Return `href` if the policy allows it; raise HrefPolicyError naming item, asset and why."""

        def refuse(why: str) -> HrefPolicyError:
            shown = _CONTROL.sub("?", href)[:200]
            return HrefPolicyError(f"href {shown!r} refused: {why}", item_id=item_id, asset_key=asset_key)

        if not isinstance(href, str) or not href:
            raise refuse("empty href")
        if _CONTROL.search(href):
            raise refuse("control characters in the href")
        if "/vsi" in href.lower() or href.lower().startswith("vsi"):
            raise refuse("GDAL virtual file system paths (/vsi...) are not accepted in STAC hrefs")
        scheme_match = _SCHEME.match(href)
        if scheme_match and not re.match(r"^[A-Za-z]:[\\/]", href):  # not a Windows drive letter
            scheme = scheme_match.group(1).lower()
            if "://" not in href:
                raise refuse(f"{scheme}: is a GDAL driver prefix or an unknown URL form, not a URL")
            if scheme not in self.schemes:
                raise refuse(f"scheme {scheme!r} is not allowed (allowed: {', '.join(self.schemes)})")
            parsed = urlparse(href)
            if not parsed.netloc:
                raise refuse("a URL without a host or bucket")
            return href
        if not self.local_roots:
            raise refuse("local paths are not allowed by this policy")
        resolved = Path(os.path.realpath(href))
        for root in self.local_roots:
            root_path = Path(os.path.realpath(root))
            if resolved == root_path or root_path in resolved.parents:
                return href
        raise refuse(f"local path outside the allowed folders {list(self.local_roots)}")

