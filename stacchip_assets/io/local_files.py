"""Which asset hrefs may be opened, deciding on local files too: :class:`HrefPolicy`.

STAC items are untrusted input (see :mod:`stacchip_assets.core.hrefs`, which holds the pure part of the
policy: GDAL syntax, URL schemes and hosts, which first bytes are a raster). Local paths need the
filesystem: they are resolved (symlinks followed) against the allowed folders and, for a
``local_rasters`` policy, their first bytes are read, which is why the policy lives here in io/.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from stacchip_assets.core.hrefs import gdal_syntax_problem, is_url, raster_driver_of, refusal, url_problem


def _inside(real_path: str | Path, roots: tuple[str, ...]) -> bool:
    """Whether a resolved path is one of `roots` or below one of them (roots resolved too)."""
    resolved = Path(real_path)
    for root in roots:
        root_path = Path(os.path.realpath(root))
        if resolved == root_path or root_path in resolved.parents:
            return True
    return False


def local_raster_problem(path: str | Path) -> str | None:
    """Why the local file `path` is not a TIFF/JPEG 2000 raster that may be opened, or None (a path
    that does not exist passes: GDAL then reports the missing file, nothing leaks)."""
    resolved = Path(os.path.realpath(path))
    if not resolved.exists():
        return None
    if not resolved.is_file():
        return "a local path that is not a regular file"
    try:
        with open(resolved, "rb") as handle:
            head = handle.read(16)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return None if raster_driver_of(head) else "a local file that is not a TIFF or JPEG 2000 raster"


@dataclass(frozen=True)
class HrefPolicy:
    """Allowed URL schemes and local folders for asset hrefs.

    `schemes`: URL schemes that may be opened (default http, https, s3). `local_roots`: folders whose
    files may be opened by plain path (resolved, symlinks followed); empty means no local files.
    """

    schemes: tuple[str, ...] = ("http", "https", "s3")
    local_roots: tuple[str, ...] = field(default_factory=tuple)
    #: Also allow local files outside `local_roots` whose first bytes are those of a TIFF (GeoTIFF, COG,
    #: BigTIFF) or JPEG 2000 file: GDAL identifies files by content, so a format that can point elsewhere
    #: (VRT, GTI, STACIT, WMS... XML or JSON that names other files or URLs) is refused whatever its name.
    #: Paths that do not exist pass (GDAL then reports the missing file); symlinks are resolved first.
    local_rasters: bool = False
    #: Hosts http(s) hrefs may name (empty: any host). ``.example.com`` admits its subdomains. GDAL
    #: follows HTTP redirects itself (GDAL 3.10 has no option to stop it): the check is on the href.
    allowed_hosts: tuple[str, ...] = field(default_factory=tuple)

    def check(self, href: str, *, item_id: str | None = None, asset_key: str | None = None) -> str:
        """Return `href` if the policy allows it; raise HrefPolicyError naming item, asset and why."""
        problem = gdal_syntax_problem(href)
        if problem is None and is_url(href):
            problem = url_problem(href, self.schemes, self.allowed_hosts)
        elif problem is None:
            problem = self._local_problem(href)
        if problem:
            raise refusal(href, problem, item_id=item_id, asset_key=asset_key)
        return href

    def _local_problem(self, href: str) -> str | None:
        if not self.local_roots and not self.local_rasters:
            return "local paths are not allowed by this policy"
        if _inside(os.path.realpath(href), self.local_roots):
            return None
        if self.local_rasters:
            problem = local_raster_problem(href)
            if problem and problem.startswith("a local file that is not") and self.local_roots:
                problem += f" and outside the allowed folders {list(self.local_roots)}"
            return problem
        return f"local path outside the allowed folders {list(self.local_roots)}"

    def allows_opened_file(self, real_path: str) -> bool:
        """Whether a file already opened (its real path, from the open descriptor) may be read: inside
        `local_roots`, or anywhere with `local_rasters` (the opener checks the content itself)."""
        return self.local_rasters or _inside(real_path, self.local_roots)


def default_read_policy() -> HrefPolicy:
    """The policy of :mod:`stacchip_assets.index.reader` and the training extraction when the caller gives
    none: stored item JSON can be edited by anyone who can write the storage base, so it is untrusted.

    URLs with the schemes http, https and s3, and local files that really are TIFF/JPEG 2000 rasters
    (checked on the opened file; see ``HrefPolicy.local_rasters``). Refused: ``file://``, ``/vsi...``,
    driver prefixes (``HDF5:``, ``GTIFF_RAW:``), inline VRT, other schemes, and any other local file such
    as ``/etc/passwd``. Pass ``HrefPolicy(local_roots=[...])`` for a stricter policy (the Dagster code
    location passes its own: ``StacSourceResource.href_policy()``).
    """
    return HrefPolicy(local_rasters=True)


__all__ = ["HrefPolicy", "default_read_policy", "local_raster_problem"]
