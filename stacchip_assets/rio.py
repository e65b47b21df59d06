"""The one place where rasterio/GDAL is called to open and read assets, with errors translated.

A 404, a truncated COG or a non-raster file surfaces as AssetReadError naming the item, the
asset, the href and GDAL's cause, instead of a bare traceback from deep inside GDAL.
"""

from __future__ import annotations

import numpy as np
import rasterio
import rasterio.errors
from rasterio._err import CPLE_BaseError
from rasterio.io import DatasetReader
from rasterio.windows import Window

from .errors import AssetReadError


def open_asset(href: str, *, item_id: str | None = None, asset_key: str | None = None) -> DatasetReader:
    """Open an asset href with rasterio, raising AssetReadError with the cause on failure."""
    try:
        # Decode the blocks of one large read on all cores (GTiff/COG open option; others ignore it).
        return rasterio.open(href, NUM_THREADS="ALL_CPUS")
    except (rasterio.errors.RasterioError, CPLE_BaseError) as exc:
        raise AssetReadError(f"cannot open {href}: {exc}", item_id=item_id, asset_key=asset_key) from exc


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
        raise AssetReadError(f"cannot read {src.name} {window or 'whole raster'}: {exc}", item_id=item_id, asset_key=asset_key) from exc


def read_band(src: DatasetReader, band: int = 1, *, item_id: str | None = None, asset_key: str | None = None) -> np.ndarray:
    """One whole band at native resolution."""
    return read_window(src, None, indexes=band, item_id=item_id, asset_key=asset_key)
