"""Landsat C2 L2 sample item (Planetary Computer style: projection v1.1.0, item-level proj:epsg/shape/transform)."""

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
from stacchip_assets.demo.synthetic_fields import _above_quantile, _dilate, _fbm, _fracs, _rng, _shift, _to_dtype

LANDSAT_SHAPE = (600, 640)
LANDSAT_TRANSFORM = Affine(30.0, 0.0, 453585.0, 0.0, -30.0, 4838715.0)
# QA_PIXEL words: confidence pairs (cloud 8-9, shadow 10-11, snow 12-13, cirrus 14-15) "low" = 0x5500.
QA_FILL = 1
QA_CLEAR = 21824  # bit 6 + low confidences
QA_WATER = 21952  # bits 6, 7
QA_SNOW = 30048  # bits 5, 6, snow confidence high
QA_CIRRUS_BITS = np.uint16(0xC004)  # bit 2 + cirrus confidence high, OR-ed in (clear -> 54596)
QA_CLOUD = 22280  # bit 3, cloud confidence high
QA_DILATED = 21762  # bit 1
QA_SHADOW = 23888  # bits 4, 6, shadow confidence high
# mean DN per band (DN = (reflectance + 0.2) / 2.75e-5) for the classes
# 0 fill, 1 land, 2 water, 3 snow, 4 cloud, 5 dilated cloud, 6 cloud shadow
_LS_LUT: dict[str, list[int]] = {
    "blue": [0, 8500, 8300, 38000, 30000, 18000, 7900],
    "green": [0, 9200, 8600, 37000, 30500, 18500, 8100],
    "red": [0, 9300, 8000, 36000, 31000, 19000, 8000],
    "nir08": [0, 15000, 7600, 33000, 32000, 22000, 9500],
    "swir16": [0, 13500, 7400, 9000, 27000, 19000, 8600],
    "swir22": [0, 11000, 7350, 8500, 22000, 15000, 8000],
}
# key, eo name, common name, centre, FWHM, title
_LS_BANDS: list[tuple[str, str, str, float, float, str]] = [
    ("red", "OLI_B4", "red", 0.65, 0.04, "Red Band"),
    ("green", "OLI_B3", "green", 0.56, 0.06, "Green Band"),
    ("blue", "OLI_B2", "blue", 0.48, 0.06, "Blue Band"),
    ("nir08", "OLI_B5", "nir08", 0.87, 0.03, "Near Infrared Band 0.8"),
    ("swir16", "OLI_B6", "swir16", 1.61, 0.09, "Short-wave Infrared Band 1.6"),
    ("swir22", "OLI_B7", "swir22", 2.2, 0.19, "Short-wave Infrared Band 2.2"),
]


def _landsat_qa(item_id: str) -> tuple[np.ndarray, np.ndarray]:
    """QA_PIXEL (uint16) and the class map used to derive the reflectance bands."""
    shape = LANDSAT_SHAPE
    rng = _rng("landsat-qa", item_id)
    land = _fbm(rng, shape, (60, 20, 6))
    cloud_field = _fbm(rng, shape, (70, 28, 9))
    cirrus_field = _fbm(rng, shape, (50, 16))
    conf_noise = rng.random(shape)

    u, v = _fracs(shape)
    height, width = shape
    cols, rows = u * width, v * height
    # a rotated scene edge: a top-left triangle and a slanted strip on the right
    fill = (cols / 300.0 + rows / 520.0 < 1.0) | (cols > 600.0 - 0.1 * rows)

    cloud = _above_quantile(cloud_field, 0.2, ~fill) & ~fill
    dilated = _dilate(cloud, 3) & ~cloud & ~fill
    shadow = _shift(cloud, 14, 17) & ~cloud & ~dilated & ~fill
    water = (land < np.quantile(land, 0.10)) & ~fill
    snow = (land > np.quantile(land, 0.97)) & ~fill
    cirrus = _above_quantile(cirrus_field, 0.06) & ~fill

    classes = np.ones(shape, dtype=np.uint8)  # land
    qa = np.full(shape, QA_CLEAR, dtype=np.uint16)
    # some clear pixels report a "medium" cloud confidence (bits 8-9 = 10): masks must use bits 1, 3, 4
    medium = conf_noise < 0.08
    qa[medium] = (QA_CLEAR & ~np.uint16(0x0300)) | 0x0200
    for mask, word, cls in (
        (water, QA_WATER, 2),
        (snow, QA_SNOW, 3),
        (shadow, QA_SHADOW, 6),
        (dilated, QA_DILATED, 5),
        (cloud, QA_CLOUD, 4),
    ):
        qa[mask] = word
        classes[mask] = cls
    qa[cirrus] |= QA_CIRRUS_BITS
    qa[fill] = QA_FILL
    classes[fill] = 0
    return qa, classes


def _build_landsat(item_id: str, item_dir: pathlib.Path) -> pystac.Item:
    """Write the COGs of the Landsat C2 L2 item and return its STAC Item."""
    crs = CRS.from_epsg(32655)
    rio_crs = RioCRS.from_epsg(32655)
    qa, classes = _landsat_qa(item_id)
    texture = _fbm(_rng("landsat-texture", item_id), LANDSAT_SHAPE, (100, 30, 8))
    valid = classes != 0
    cloud_cover = float(np.isin(classes[valid], (4, 5)).mean()) * 100.0
    item = _new_item(
        item_id,
        crs=crs,
        transform=LANDSAT_TRANSFORM,
        shape=LANDSAT_SHAPE,
        dt=datetime(2023, 7, 12, 1, 16, 48, 312907, tzinfo=_UTC),
        properties={
            "platform": "landsat-9",
            "instruments": ["oli", "tirs"],
            "eo:cloud_cover": round(cloud_cover, 4),
            "landsat:cloud_cover_land": round(cloud_cover, 4),
            "landsat:wrs_type": "2",
            "landsat:wrs_path": "107",
            "landsat:wrs_row": "030",
            "landsat:collection_category": "T1",
            "landsat:collection_number": "02",
            "landsat:correction": "L2SP",
            "landsat:scene_id": "LC91070302023193LGN00",
            "proj:epsg": 32655,
            "proj:shape": list(LANDSAT_SHAPE),
            "proj:transform": _transform_list(LANDSAT_TRANSFORM),
            "updated": "2023-07-19T09:27:31.457Z",
        },
        extensions=[PROJ_V11, RASTER_EXT, EO_EXT],
    )
    rgb: dict[str, np.ndarray] = {}
    for key, name, common, center, fwhm, title in _LS_BANDS:
        rng = _rng("landsat-band", item_id, key)
        lut = np.asarray(_LS_LUT[key], dtype=np.float64)
        values = lut[classes] * (0.85 + 0.3 * texture) + rng.integers(-25, 26, size=LANDSAT_SHAPE)
        data = _to_dtype(values, np.uint16, 7273, 65455)
        data[classes == 0] = 0
        _write_cog(item_dir / f"{key}.tif", data, transform=LANDSAT_TRANSFORM, crs=rio_crs, nodata=0,
                   resampling="AVERAGE")
        if key in ("red", "green", "blue"):
            rgb[key] = data
        item.add_asset(
            key,
            _asset(
                f"{key}.tif",
                ["data"],
                title,
                {
                    "gsd": 30.0,
                    "eo:bands": [{"name": name, "common_name": common, "center_wavelength": center,
                                  "full_width_half_max": fwhm}],
                    "raster:bands": [_band("uint16", 0, 30.0, scale=2.75e-05, offset=-0.2)],
                },
            ),
        )
    _write_cog(item_dir / "qa_pixel.tif", qa, transform=LANDSAT_TRANSFORM, crs=rio_crs, nodata=QA_FILL,
               resampling="NEAREST")
    item.add_asset(
        "qa_pixel",
        _asset(
            "qa_pixel.tif",
            ["cloud", "cloud-shadow", "snow-ice", "water-mask"],
            "Pixel Quality Assessment Band",
            {"gsd": 30.0, "raster:bands": [_band("uint16", QA_FILL, 30.0, unit="bit index")]},
        ),
    )
    _add_thumbnail(item, item_dir, _thumbnail([rgb["red"], rgb["green"], rgb["blue"]], 7273, 20000, 5))
    return item
