"""Sentinel-1 RTC sample item (float32 gamma0, nodata -32768 on a swath edge; item-level proj:code)."""

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
    SAR_EXT,
    SAT_EXT,
    _add_thumbnail,
    _asset,
    _band,
    _new_item,
    _transform_list,
)
from stacchip_assets.demo.synthetic_fields import _fbm, _fracs, _rng

S1_NODATA = -32768.0

S1_SHAPE = (800, 1000)
S1_TRANSFORM = Affine(10.0, 0.0, 352480.0, 0.0, -10.0, 5345920.0)


def _build_s1(item_id: str, item_dir: pathlib.Path) -> pystac.Item:
    """Write the VV/VH COGs of the Sentinel-1 RTC item and return its STAC Item."""
    rng = _rng("s1", item_id)
    u, v = _fracs(S1_SHAPE)
    height, width = S1_SHAPE
    # swath edge along the left side: 30 px wide at the top, 200 px at the bottom
    nodata = (u * width) < (30.0 + 170.0 * v)
    field = _fbm(rng, S1_SHAPE, (120, 40, 10))
    water = _fbm(rng, S1_SHAPE, (150, 50)) < 0.3
    ratio = _fbm(rng, S1_SHAPE, (80, 20))
    vv = 0.03 + 0.3 * field * field
    vv = np.where(water, 0.004 + 0.01 * field, vv)
    vv = vv * (0.5 + rng.integers(0, 9, size=S1_SHAPE) / 8.0)  # speckle (few levels: small files)
    vh = vv * (0.1 + 0.15 * ratio) * (0.625 + rng.integers(0, 7, size=S1_SHAPE) / 8.0)
    rio_crs = RioCRS.from_epsg(32633)
    assets = {}
    for key, arr in (("vv", vv), ("vh", vh)):
        data = (np.floor(arr * 65536.0) / 65536.0).astype(np.float32)  # 16 fraction bits: compresses
        data[nodata] = np.float32(S1_NODATA)
        _write_cog(item_dir / f"{key}.tif", data, transform=S1_TRANSFORM, crs=rio_crs, nodata=S1_NODATA,
                   resampling="AVERAGE")
        assets[key] = data
    item = _new_item(
        item_id,
        crs=CRS.from_epsg(32633),
        transform=S1_TRANSFORM,
        shape=S1_SHAPE,
        dt=datetime(2023, 7, 15, 16, 53, 37, 500000, tzinfo=_UTC),
        properties={
            "platform": "SENTINEL-1A",
            "constellation": "Sentinel-1",
            "instruments": ["c-sar"],
            "eo:cloud_cover": 0.0,
            "sar:instrument_mode": "IW",
            "sar:frequency_band": "C",
            "sar:center_frequency": 5.405,
            "sar:polarizations": ["VV", "VH"],
            "sar:product_type": "GRD",
            "sar:resolution_range": 20.0,
            "sar:resolution_azimuth": 22.0,
            "sar:pixel_spacing_range": 10.0,
            "sar:pixel_spacing_azimuth": 10.0,
            "sar:looks_range": 5,
            "sar:looks_azimuth": 1,
            "sar:looks_equivalent_number": 4.4,
            "sat:orbit_state": "descending",
            "sat:relative_orbit": 117,
            "sat:absolute_orbit": 49437,
            "proj:code": "EPSG:32633",
            "proj:shape": list(S1_SHAPE),
            "proj:transform": _transform_list(S1_TRANSFORM),
            "updated": "2023-07-16T04:11:09.118Z",
        },
        extensions=[PROJ_V2, RASTER_EXT, EO_EXT, SAR_EXT, SAT_EXT],
    )
    for key in ("vv", "vh"):
        item.add_asset(
            key,
            _asset(
                f"{key}.tif",
                ["data"],
                f"{key.upper()}: {key[0].upper()}-transmit, {key[1].upper()}-receive",
                {"raster:bands": [_band("float32", S1_NODATA, 10.0, unit="linear power")]},
            ),
        )
    gray = np.where(assets["vv"] == S1_NODATA, 0.0, assets["vv"].astype(np.float64))
    _add_thumbnail(item, item_dir, _thumbnail([gray, gray, gray], 0.0, 0.3, 8))
    return item
