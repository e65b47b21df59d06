"""MODIS 09A1 sample item (sinusoidal, no EPSG code: proj:code null + proj:wkt2 + proj:projjson)."""

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
    PROJ_V2,
    RASTER_EXT,
    _add_thumbnail,
    _asset,
    _band,
    _new_item,
    _transform_list,
)
from stacchip_assets.demo.synthetic_fields import _above_quantile, _fbm, _fracs, _rng, _to_dtype

MODIS_SINUSOIDAL = "+proj=sinu +lon_0=0 +x_0=0 +y_0=0 +R=6371007.181 +units=m +no_defs"
#: MODIS 500 m pixel: one 1111950.5196666666 m tile / 2400 pixels.
MODIS_500M = 463.312716527778
#: Fill value of MOD09 ``sur_refl_qc_500m`` (MODLAND bits 0-1 are ``11``).
MODIS_QC_FILL = 787410671
MODIS_REFL_FILL = -28672

MODIS_SHAPE = (480, 480)
MODIS_TRANSFORM = Affine(MODIS_500M, 0.0, -11119505.196667, 0.0, -MODIS_500M, 4447802.078667)
# mean reflectance (x 10000) of bands 1..7 for clear (MODLAND 0/1) and cloudy (MODLAND 2) pixels
_MODIS_CLEAR = [600, 2600, 400, 800, 2800, 2000, 1100]
_MODIS_CLOUD = [5200, 5600, 5400, 5300, 4800, 3900, 3000]


def _modis_qc(item_id: str) -> np.ndarray:
    """``sur_refl_qc_500m`` (uint32): MODLAND bits 0-1 in regions/blobs, random higher bits."""
    shape = MODIS_SHAPE
    rng = _rng("modis-qc", item_id)
    u, v = _fracs(shape)
    lesser = _fbm(rng, shape, (60, 20))
    cloud = _fbm(rng, shape, (50, 18, 6))
    missing = _fbm(rng, shape, (16, 6))
    modland = np.zeros(shape, dtype=np.uint32)
    modland[_above_quantile(lesser, 0.30)] = 1
    modland[_above_quantile(cloud, 0.22)] = 2
    modland[_above_quantile(missing, 0.03)] = 3
    # bits 2-31 (per-band quality, atmospheric correction, adjacency) from a palette of random words
    palette = rng.integers(0, 1 << 30, size=16, dtype=np.uint32) << np.uint32(2)
    higher = palette[rng.integers(0, 16, size=shape)]
    qc = higher | modland
    qc[(u + v) > 1.55] = MODIS_QC_FILL  # granule edge: fill (MODLAND = 3)
    return qc


def _build_modis(item_id: str, item_dir: pathlib.Path) -> pystac.Item:
    """Write the MOD09A1 COGs and return its STAC Item (CRS only as WKT2 / PROJJSON)."""
    crs = CRS.from_proj4(MODIS_SINUSOIDAL)
    rio_crs = RioCRS.from_wkt(crs.to_wkt())
    qc = _modis_qc(item_id)
    modland = qc & np.uint32(3)
    texture = _fbm(_rng("modis-texture", item_id), MODIS_SHAPE, (80, 25, 7))
    nodata = modland == 3
    cloudy = modland == 2
    item = _new_item(
        item_id,
        crs=crs,
        transform=MODIS_TRANSFORM,
        shape=MODIS_SHAPE,
        dt=datetime(2023, 7, 4, 0, 0, 0, tzinfo=_UTC),
        properties={
            "start_datetime": "2023-07-04T00:00:00Z",
            "end_datetime": "2023-07-11T23:59:59Z",
            "platform": "terra",
            "instruments": ["modis"],
            "eo:cloud_cover": round(float(cloudy[~nodata].mean()) * 100.0, 4),
            "modis:tile-id": "51008005",
            "modis:horizontal-tile": 8,
            "modis:vertical-tile": 5,
            "proj:code": None,
            "proj:wkt2": crs.to_wkt(),
            "proj:projjson": crs.to_json_dict(),
            "proj:shape": list(MODIS_SHAPE),
            "proj:transform": _transform_list(MODIS_TRANSFORM),
            "updated": "2023-07-13T03:45:12.000Z",
        },
        extensions=[PROJ_V2, RASTER_EXT, EO_EXT],
    )
    rgb: dict[int, np.ndarray] = {}
    for b in range(1, 8):
        key = f"sur_refl_b{b:02d}"
        rng = _rng("modis-band", item_id, key)
        mean = np.where(cloudy, float(_MODIS_CLOUD[b - 1]), float(_MODIS_CLEAR[b - 1]))
        values = mean * (0.7 + 0.6 * texture) + rng.integers(-8, 9, size=MODIS_SHAPE)
        data = _to_dtype(values, np.int16, -100, 16000)
        data[nodata] = MODIS_REFL_FILL
        _write_cog(item_dir / f"{key}.tif", data, transform=MODIS_TRANSFORM, crs=rio_crs,
                   nodata=MODIS_REFL_FILL, resampling="AVERAGE")
        rgb[b] = data
        item.add_asset(
            key,
            _asset(
                f"{key}.tif",
                ["data"],
                f"500m Surface Reflectance Band {b}",
                {"raster:bands": [_band("int16", MODIS_REFL_FILL, MODIS_500M, scale=0.0001)]},
            ),
        )
    _write_cog(item_dir / "sur_refl_qc_500m.tif", qc, transform=MODIS_TRANSFORM, crs=rio_crs,
               nodata=MODIS_QC_FILL, resampling="NEAREST")
    item.add_asset(
        "sur_refl_qc_500m",
        _asset(
            "sur_refl_qc_500m.tif",
            ["data"],
            "500m Reflectance Band Quality",
            {"raster:bands": [_band("uint32", MODIS_QC_FILL, MODIS_500M, unit="bit field")]},
        ),
    )
    thumb = [np.where(nodata, 0, rgb[b]) for b in (1, 4, 3)]
    _add_thumbnail(item, item_dir, _thumbnail(thumb, 0, 6000, 4))
    return item
