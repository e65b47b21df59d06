"""NAIP sample item (one 4-band uint8 asset, item-level proj:epsg + proj:wkt2, no nodata)."""

from __future__ import annotations

import pathlib
from datetime import datetime

import numpy as np
import pystac
from pyproj import CRS
from rasterio.crs import CRS as RioCRS
from rasterio.transform import Affine

from stacchip_assets.demo.cog_writer import _thumbnail, _write_cog
from stacchip_assets.demo.stac_items import (
    _UTC,
    EO_EXT,
    PROJ_V11,
    RASTER_EXT,
    _add_thumbnail,
    _asset,
    _band,
    _new_item,
    _transform_list,
)
from stacchip_assets.demo.synthetic_fields import _fbm, _rng, _to_dtype

NAIP_SHAPE = (700, 900)
NAIP_TRANSFORM = Affine(0.6, 0.0, 496512.0, 0.0, -0.6, 4929600.0)


def _build_naip(item_id: str, item_dir: pathlib.Path) -> pystac.Item:
    """Write the NAIP RGBN COG and return its STAC Item."""
    crs = CRS.from_epsg(26919)
    rng = _rng("naip", item_id)
    bands = []
    for base, amp, cells in ((50, 140, (120, 40, 10)), (60, 120, (120, 40, 10)),
                             (45, 110, (90, 30, 8)), (70, 170, (150, 45, 12))):
        field = _fbm(rng, NAIP_SHAPE, cells)
        noise = rng.integers(-4, 5, size=NAIP_SHAPE)
        bands.append(_to_dtype(base + amp * field + noise, np.uint8, 0, 255))
    data = np.stack(bands)
    _write_cog(item_dir / "image.tif", data, transform=NAIP_TRANSFORM, crs=RioCRS.from_epsg(26919),
               nodata=None, resampling="AVERAGE")
    item = _new_item(
        item_id,
        crs=crs,
        transform=NAIP_TRANSFORM,
        shape=NAIP_SHAPE,
        dt=datetime(2021, 10, 6, 15, 42, 10, tzinfo=_UTC),
        properties={
            "gsd": 0.6,
            "naip:state": "me",
            "naip:year": "2021",
            "eo:cloud_cover": 0.0,
            "proj:epsg": 26919,
            "proj:wkt2": crs.to_wkt(),
            "proj:shape": list(NAIP_SHAPE),
            "proj:transform": _transform_list(NAIP_TRANSFORM),
            "updated": "2022-01-13T22:08:54.651Z",
        },
        extensions=[PROJ_V11, RASTER_EXT, EO_EXT],
    )
    item.add_asset(
        "image",
        _asset(
            "image.tif",
            ["data"],
            "RGBIR COG tile",
            {
                "eo:bands": [
                    {"name": "Red", "common_name": "red"},
                    {"name": "Green", "common_name": "green"},
                    {"name": "Blue", "common_name": "blue"},
                    {"name": "NIR", "common_name": "nir", "description": "near-infrared"},
                ],
                "raster:bands": [_band("uint8", None, 0.6) for _ in range(4)],
            },
        ),
    )
    _add_thumbnail(item, item_dir, _thumbnail([data[0], data[1], data[2]], 0, 255, 8))
    return item
