"""Chip indexers: the chip grid of a STAC item with per-chip cloud and nodata fractions.

Drop-in compatible with `stacchip.indexer` (same classes, constructor arguments, properties and
methods), but the grid is laid on the highest-resolution asset's own grid, any CRS works, masks are
read once at their own resolution, and all chips are computed as whole arrays.
"""

from __future__ import annotations

import pystac

from stacchip_assets.errors import StacchipError
from stacchip_assets.index.indexer_base import ChipIndexer, NoStatsChipIndexer
from stacchip_assets.index.mask_indexers import (
    LandsatIndexer,
    ModisIndexer,
    NoDataMaskChipIndexer,
    NodataValueIndexer,
    Sentinel2Indexer,
)

#: Indexer chosen by collection id when the item's collection is known (prefix match).
INDEXER_BY_COLLECTION: dict[str, type[ChipIndexer]] = {
    "sentinel-2": Sentinel2Indexer,
    "sentinel-s2": Sentinel2Indexer,
    "landsat": LandsatIndexer,
    "modis": ModisIndexer,
    "naip": NoStatsChipIndexer,
    "sentinel-1": NodataValueIndexer,
}

INDEXERS: dict[str, type[ChipIndexer]] = {
    "sentinel-2": Sentinel2Indexer,
    "landsat": LandsatIndexer,
    "modis": ModisIndexer,
    "nodata": NodataValueIndexer,
    "nostats": NoStatsChipIndexer,
}


def indexer_class_for(item: pystac.Item) -> type[ChipIndexer]:
    """The indexer class that fits an item: from its mask assets first, then its collection id."""
    if any(key in item.assets for key in Sentinel2Indexer.mask_asset_keys):
        return Sentinel2Indexer
    if any(key in item.assets for key in LandsatIndexer.mask_asset_keys):
        return LandsatIndexer
    if any(key in item.assets for key in ModisIndexer.mask_asset_keys):
        return ModisIndexer
    collection = (item.collection_id or "").lower()
    for prefix, cls in INDEXER_BY_COLLECTION.items():
        if collection.startswith(prefix):
            return cls  # a sensor collection without its mask fails with MaskAssetMissingError
    return NoStatsChipIndexer


def Indexer(item: pystac.Item, *args, kind: str | None = None, **kwargs) -> ChipIndexer:  # noqa: N802 (a factory named like the class it returns)
    """The right indexer for an item: Sentinel-2 (scl), Landsat (qa_pixel), MODIS (QC), Sentinel-1
    (the nodata value of vv) or no stats.

    `kind` ("sentinel-2", "landsat", "modis", "nodata", "nostats") forces a choice.
    """
    if kind is not None:
        try:
            cls = INDEXERS[kind]
        except KeyError:
            raise StacchipError(f"unknown indexer kind {kind!r}; choose one of {sorted(INDEXERS)}", item_id=item.id) from None
    else:
        cls = indexer_class_for(item)
    return cls(item, *args, **kwargs)


__all__ = [
    "INDEXERS", "INDEXER_BY_COLLECTION", "ChipIndexer", "Indexer", "LandsatIndexer", "ModisIndexer",
    "NoDataMaskChipIndexer", "NoStatsChipIndexer", "NodataValueIndexer", "Sentinel2Indexer", "indexer_class_for",
]
