"""Tiny real COGs and STAC items for tests (written with rasterio, read back through the library)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pystac
import rasterio
from affine import Affine
from rasterio.crs import CRS


def write_cog(path: Path, data: np.ndarray, transform: Affine, crs: str = "EPSG:32631", nodata=None, blocksize: int = 256) -> Path:
    """Write `data` (bands, rows, cols) as a tiled, compressed COG with overviews."""
    data = data if data.ndim == 3 else data[None]
    profile = dict(
        driver="COG", width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype=data.dtype,
        crs=CRS.from_user_input(crs), transform=transform, nodata=nodata, compress="DEFLATE", blocksize=blocksize,
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def make_item(
    item_id: str,
    assets: dict[str, tuple[Path, tuple[int, int], Affine]],
    crs_code: str = "EPSG:32631",
    collection: str | None = "test-collection",
    item_level_grid: bool = False,
) -> pystac.Item:
    """A STAC item whose assets carry their own proj:shape/proj:transform (Earth Search style)."""
    first_shape, first_transform = next(iter(assets.values()))[1:]
    item = pystac.Item(
        id=item_id,
        geometry={"type": "Point", "coordinates": [0, 0]},
        bbox=[0, 0, 0, 0],
        datetime=dt.datetime(2024, 5, 17, 10, 56, 21, tzinfo=dt.timezone.utc),
        properties={"proj:code": crs_code},
        collection=collection,
    )
    item.stac_extensions.append("https://stac-extensions.github.io/projection/v2.0.0/schema.json")
    if item_level_grid:
        item.properties["proj:shape"] = list(first_shape)
        item.properties["proj:transform"] = list(first_transform)[:6]
    for key, (path, shape, transform) in assets.items():
        extra = {} if item_level_grid else {"proj:shape": list(shape), "proj:transform": list(transform)[:6]}
        item.add_asset(key, pystac.Asset(href=str(path), media_type=pystac.MediaType.COG, roles=["data"], extra_fields=extra))
    return item
