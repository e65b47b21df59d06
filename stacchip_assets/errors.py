"""One error family for everything that can go wrong between a STAC item and a chip.

Every message names the item (and the asset where there is one) and the cause, so that a failed
Dagster run or a library call tells the user what to fix without reading a GDAL traceback.
"""

from __future__ import annotations


class StacchipError(Exception):
    """Root of all errors raised by stacchip_assets."""

    def __init__(self, message: str, *, item_id: str | None = None, asset_key: str | None = None):
        prefix = []
        if item_id is not None:
            prefix.append(f"item {item_id!r}")
        if asset_key is not None:
            prefix.append(f"asset {asset_key!r}")
        full = f"{', '.join(prefix)}: {message}" if prefix else message
        super().__init__(full)
        self.item_id = item_id
        self.asset_key = asset_key


class NoProjectionInfoError(StacchipError):
    """The item carries no usable grid (proj:shape + proj:transform) or no CRS."""


class UnsupportedCRSError(StacchipError):
    """The item's CRS cannot be parsed or cannot be transformed to WGS84."""


class MaskAssetMissingError(StacchipError):
    """The statistics of this sensor need a mask asset (scl, qa_pixel, ...) the item lacks."""


class AssetReadError(StacchipError):
    """An asset could not be opened or read (404, 403, timeout, corrupt or truncated file)."""


class AssetGridError(StacchipError):
    """An asset's pixel grid does not overlap, or disagrees with, the chip grid."""


class InvalidIdentifierError(StacchipError):
    """An item or collection id cannot be used safely as a path or object key."""


class StorageError(StacchipError):
    """Reading or writing an index or item file in the storage base failed."""


class StacSourceError(StacchipError):
    """A STAC API or static catalog could not be searched."""


class HrefPolicyError(StacchipError):
    """An asset href points somewhere the href policy does not allow (untrusted STAC metadata)."""
