"""stacchip_assets: index every ML chip a STAC item can yield, and read chip pixels on demand.

Drop-in for `stacchip`: `from stacchip_assets import Indexer, Chipper`.
"""

from stacchip_assets.errors import (
    AssetGridError,
    AssetReadError,
    InvalidIdentifierError,
    MaskAssetMissingError,
    NoProjectionInfoError,
    StacchipError,
    StacSourceError,
    StorageError,
    UnsupportedCRSError,
)
from stacchip_assets.index.chip_indexer import (
    ChipIndexer,
    Indexer,
    LandsatIndexer,
    ModisIndexer,
    NoDataMaskChipIndexer,
    NodataValueIndexer,
    NoStatsChipIndexer,
    Sentinel2Indexer,
)
from stacchip_assets.index.chipper import Chipper
from stacchip_assets.io.geoparquet import read_index, write_index

__version__ = "0.1.0"

__all__ = [
    "AssetGridError", "AssetReadError", "ChipIndexer", "Chipper", "Indexer", "InvalidIdentifierError",
    "LandsatIndexer", "MaskAssetMissingError", "ModisIndexer", "NoDataMaskChipIndexer", "NodataValueIndexer", "NoProjectionInfoError",
    "NoStatsChipIndexer", "Sentinel2Indexer", "StacSourceError", "StacchipError", "StorageError",
    "UnsupportedCRSError", "query_chips", "query_chips_gdf", "read_index", "write_index",
]


def __getattr__(name: str):
    """`query_chips` / `query_chips_gdf` load pyarrow.dataset on first use, not at import (0.2 s)."""
    if name in ("query_chips", "query_chips_gdf"):
        from stacchip_assets.index import query

        return getattr(query, name)
    raise AttributeError(f"module 'stacchip_assets' has no attribute {name!r}")
