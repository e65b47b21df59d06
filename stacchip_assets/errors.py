"""One error family for everything that can go wrong between a STAC item and a chip.

Every message names the item (and the asset where there is one) and the cause, so that a failed
Dagster run or a library call tells the user what to fix without reading a GDAL traceback.

Every class says whether trying again may help (`transient`): the Dagster layer retries a step only
for transient errors (a timeout, a 5xx, an S3 outage), never for bad metadata, which stays bad.
"""

from __future__ import annotations

import re

#: GDAL / HTTP messages of failures that may pass on a retry (timeouts, 5xx, 429, dropped connections).
_TRANSIENT_READ = re.compile(
    r"timed? ?out|HTTP response code: (5\d\d|429)|Connection|curl error|Too Many Requests|"
    r"Couldn't connect|Failed to connect|Could not resolve",
    re.IGNORECASE,
)
#: ... unless the server refused the credentials or the name: those stay wrong.
_PERMANENT = re.compile(r"refused the credentials|access refused|HTTP response code: 40[0134]|File name too long",
                        re.IGNORECASE)


class StacchipError(Exception):
    """Root of all errors raised by stacchip_assets.

    `transient` (class attribute, overridable per instance) says whether a retry may succeed.
    """

    transient: bool = False

    def __init__(self, message: str, *, item_id: str | None = None, asset_key: str | None = None,
                 transient: bool | None = None):
        prefix = []
        if item_id is not None:
            prefix.append(f"item {item_id!r}")
        if asset_key is not None:
            prefix.append(f"asset {asset_key!r}")
        full = f"{', '.join(prefix)}: {message}" if prefix else message
        super().__init__(full)
        self.item_id = item_id
        self.asset_key = asset_key
        if transient is not None:
            self.transient = transient


class NoProjectionInfoError(StacchipError):
    """The item carries no usable grid (proj:shape + proj:transform) or no CRS."""


class UnsupportedCRSError(StacchipError):
    """The item's CRS cannot be parsed or cannot be transformed to WGS84."""


class MaskAssetMissingError(StacchipError):
    """The statistics of this sensor need a mask asset (scl, qa_pixel, ...) the item lacks."""


class InvalidItemError(StacchipError):
    """A STAC item field is malformed (proj:shape, proj:transform, bbox, datetime of the wrong type,
    length or value: NaN, infinite, negative, out of range)."""


class ResourceLimitError(StacchipError):
    """The item's metadata asks for more than a configured limit (chips per item, mask pixels, ...).

    Checked from the metadata before anything is allocated; `limit` names the limit (its
    environment variable) so the message says what to raise if the item is genuine.
    """

    def __init__(self, message: str, *, limit: str | None = None, item_id: str | None = None,
                 asset_key: str | None = None):
        super().__init__(f"{message} (limit {limit})" if limit else message, item_id=item_id, asset_key=asset_key)
        self.limit = limit


class AssetReadError(StacchipError):
    """An asset could not be opened or read (404, 403, timeout, corrupt or truncated file).

    Transient when the cause may pass (a timeout, HTTP 5xx or 429, a dropped connection), not for a
    missing file, a 404, refused credentials or corrupt data; `transient=` overrides the guess made
    from the cause the message carries.
    """

    def __init__(self, message: str, *, item_id: str | None = None, asset_key: str | None = None,
                 transient: bool | None = None):
        if transient is None:
            transient = _TRANSIENT_READ.search(message) is not None and _PERMANENT.search(message) is None
        super().__init__(message, item_id=item_id, asset_key=asset_key, transient=transient)


class AssetGridError(StacchipError):
    """An asset's pixel grid does not overlap, or disagrees with, the chip grid."""


class InvalidIdentifierError(StacchipError):
    """An item or collection id cannot be used safely as a path or object key."""


class StorageError(StacchipError):
    """Reading or writing an index or item file in the storage base failed."""

    transient = True  # an S3 outage, a full disk freed, a lock released

    def __init__(self, message: str, *, item_id: str | None = None, asset_key: str | None = None,
                 transient: bool | None = None):
        if transient is None and _PERMANENT.search(message):
            transient = False  # wrong credentials or an impossible name stay so: fail at once
        super().__init__(message, item_id=item_id, asset_key=asset_key, transient=transient)


class StacSourceError(StacchipError):
    """A STAC API or static catalog could not be searched."""

    transient = True  # the API may answer on the next try


class HrefPolicyError(StacchipError):
    """An asset href points somewhere the href policy does not allow (untrusted STAC metadata)."""
