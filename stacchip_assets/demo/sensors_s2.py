"""Sentinel-2 L2A sample items (Earth Search v1 style: asset-level proj:shape/proj:transform, item proj:code)."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pystac
from pyproj import CRS
from rasterio.crs import CRS as RioCRS
from rasterio.transform import Affine

from stacchip_assets.demo.cog_writer import BLOCK_SIZE, _thumbnail, _write_cog
from stacchip_assets.demo.stac_items import (
    _UTC,
    EO_EXT,
    GRID_EXT,
    MGRS_EXT,
    PROJ_V2,
    RASTER_EXT,
    S2_EXT,
    SAT_EXT,
    _add_thumbnail,
    _asset,
    _band,
    _new_item,
    _transform_list,
)
from stacchip_assets.demo.synthetic_fields import _above_quantile, _disk, _fbm, _fracs, _rng, _shift, _to_dtype

# SCL classes: 0 nodata, 1 saturated/defective, 2 dark area, 3 cloud shadow, 4 vegetation,
# 5 not vegetated, 6 water, 7 unclassified, 8 cloud medium, 9 cloud high, 10 thin cirrus, 11 snow.
# Mean DN per class (Earth Search v1 DN = reflectance * 10000 + 1000).
_S2_LUT: dict[str, list[int]] = {
    "coastal": [0, 12000, 1150, 1200, 1300, 1900, 1400, 1700, 5500, 7500, 2800, 9500],
    "blue": [0, 14000, 1100, 1150, 1350, 2000, 1450, 1750, 5800, 7800, 2700, 9800],
    "green": [0, 14000, 1150, 1200, 1700, 2300, 1550, 2000, 5900, 7900, 2800, 9800],
    "red": [0, 14000, 1100, 1150, 1400, 2600, 1350, 2100, 6000, 8000, 2800, 9700],
    "rededge1": [0, 14000, 1200, 1300, 2300, 2800, 1300, 2400, 6100, 8100, 2900, 9300],
    "nir": [0, 14000, 1300, 1500, 4500, 3200, 1150, 2900, 6200, 8200, 3200, 8800],
    "swir16": [0, 14000, 1200, 1300, 2600, 3600, 1050, 2700, 5200, 7000, 2600, 2300],
}
# key, resolution (m), eo:bands name, common name, centre wavelength, FWHM (um), title
_S2_BANDS: list[tuple[str, int, str, str, float, float, str]] = [
    ("blue", 10, "B02", "blue", 0.49, 0.098, "Blue (band 2) - 10m"),
    ("green", 10, "B03", "green", 0.56, 0.045, "Green (band 3) - 10m"),
    ("red", 10, "B04", "red", 0.665, 0.038, "Red (band 4) - 10m"),
    ("nir", 10, "B08", "nir", 0.842, 0.145, "NIR 1 (band 8) - 10m"),
    ("rededge1", 20, "B05", "rededge", 0.704, 0.019, "Red edge 1 (band 5) - 20m"),
    ("swir16", 20, "B11", "swir16", 1.61, 0.143, "SWIR 1 (band 11) - 20m"),
    ("coastal", 60, "B01", "coastal", 0.443, 0.027, "Coastal aerosol (band 1) - 60m"),
]
S2_SIZE_10M = 1080  # 4x4 whole 256 px chips + a 56 px remainder


@dataclass(frozen=True)
class _S2Spec:
    """Everything that differs between the sample Sentinel-2 items."""

    item_id: str
    tile: str
    origin: tuple[float, float]
    platform: str
    dt: datetime
    updated: str
    relative_orbit: int
    cloud_fraction: float  # target fraction of the noise clouds
    nodata_rule: tuple[float, float, float]  # nodata where a*u + b*v > c (pixel-centre fractions)
    overcast_chip: tuple[int, int]  # (x, y) of a 256 px chip made fully cloudy
    clear_chip: tuple[int, int]  # (x, y) of a 256 px chip kept free of clouds/shadows


_S2_SPECS: list[_S2Spec] = [
    _S2Spec(
        "S2B_31UDQ_20230704_0_L2A", "31UDQ", (399960.0, 5500020.0), "sentinel-2b",
        datetime(2023, 7, 4, 10, 56, 21, 24000, tzinfo=_UTC), "2023-07-04T19:03:11.284Z", 51,
        0.06, (1.0, 1.0, 1.3), (0, 3), (1, 0),
    ),
    _S2Spec(
        "S2A_31UDQ_20230826_0_L2A", "31UDQ", (399960.0, 5500020.0), "sentinel-2a",
        datetime(2023, 8, 26, 10, 46, 29, 452000, tzinfo=_UTC), "2023-08-26T17:42:58.911Z", 8,
        0.42, (-1.0, -1.0, -0.6), (2, 1), (3, 3),
    ),
    _S2Spec(
        "S2B_31UEQ_20230704_0_L2A", "31UEQ", (499980.0, 5500020.0), "sentinel-2b",
        datetime(2023, 7, 4, 10, 56, 24, 871000, tzinfo=_UTC), "2023-07-04T19:05:47.002Z", 51,
        0.25, (-1.0, 1.0, 0.55), (3, 0), (2, 2),
    ),
]


def _s2_scl(spec: _S2Spec) -> np.ndarray:
    """The 20 m scene classification (540 x 540 uint8) of one sample item."""
    size = S2_SIZE_10M // 2
    shape = (size, size)
    rng = _rng("s2-scl", spec.item_id)
    land = _fbm(rng, shape, (60, 20, 5))
    cloud_field = _fbm(rng, shape, (90, 36, 12))
    cirrus_field = _fbm(rng, shape, (70, 25))
    defect_field = _fbm(rng, shape, (6, 3))

    cuts = np.quantile(land, [0.07, 0.09, 0.30, 0.90, 0.98])
    scl = np.select(
        [land < cuts[0], land < cuts[1], land < cuts[2], land < cuts[3], land < cuts[4]],
        [6, 2, 5, 4, 7],
        default=11,
    ).astype(np.uint8)
    land_cover = scl.copy()

    scl[_above_quantile(defect_field, 0.004)] = 1

    chip20 = BLOCK_SIZE // 2  # a 256 px chip at 10 m is 128 px at 20 m
    ox, oy = spec.overcast_chip
    overcast = _disk(shape, (oy + 0.5) * chip20, (ox + 0.5) * chip20, 0.75 * chip20)
    cloud = _above_quantile(cloud_field, spec.cloud_fraction) | overcast
    core = _above_quantile(cloud_field, spec.cloud_fraction * 0.55) | _disk(
        shape, (oy + 0.5) * chip20, (ox + 0.5) * chip20, 0.5 * chip20
    )
    cirrus = _above_quantile(cirrus_field, 0.05 + spec.cloud_fraction * 0.1) & ~cloud
    shadow = _shift(cloud, 9, -13) & ~cloud & ~cirrus

    scl[shadow] = 3
    scl[cirrus] = 10
    scl[cloud] = 8
    scl[cloud & core] = 9

    cx, cy = spec.clear_chip
    margin = 6
    clear = np.zeros(shape, dtype=bool)
    clear[
        max(cy * chip20 - margin, 0) : (cy + 1) * chip20 + margin,
        max(cx * chip20 - margin, 0) : (cx + 1) * chip20 + margin,
    ] = True
    scl[clear] = land_cover[clear]

    u, v = _fracs(shape)
    a, b, c = spec.nodata_rule
    scl[(a * u + b * v) > c] = 0
    return scl


def _s2_band(spec: _S2Spec, key: str, scl: np.ndarray, texture: np.ndarray) -> np.ndarray:
    """One uint16 reflectance band at the resolution of ``scl``; 0 wherever ``scl`` is 0."""
    rng = _rng("s2-band", spec.item_id, key)
    lut = np.asarray(_S2_LUT[key], dtype=np.float64)
    noise = rng.integers(-5, 6, size=scl.shape).astype(np.float64)
    values = lut[scl] * (0.8 + 0.4 * texture) + noise
    out = _to_dtype(values, np.uint16, 1, 65535)
    out[scl == 0] = 0
    return out


def _s2_new_item(spec: _S2Spec, scl20: np.ndarray, transform10: Affine, shape10: tuple[int, int]) -> pystac.Item:
    """The Item of one Sentinel-2 L2A sample (properties from ``spec`` and the cloud/nodata of ``scl20``)."""
    valid = scl20 != 0
    cloud_cover = float(np.isin(scl20[valid], (8, 9, 10)).mean()) * 100.0
    mgrs_zone, mgrs_band, mgrs_square = int(spec.tile[:2]), spec.tile[2], spec.tile[3:]
    return _new_item(
        spec.item_id,
        crs=CRS.from_epsg(32631),
        transform=transform10,
        shape=shape10,
        dt=spec.dt,
        properties={
            "platform": spec.platform,
            "constellation": "sentinel-2",
            "instruments": ["msi"],
            "eo:cloud_cover": round(cloud_cover, 4),
            "proj:code": "EPSG:32631",
            "mgrs:utm_zone": mgrs_zone,
            "mgrs:latitude_band": mgrs_band,
            "mgrs:grid_square": mgrs_square,
            "grid:code": f"MGRS-{spec.tile}",
            "s2:mgrs_tile": spec.tile,
            "s2:processing_baseline": "05.09",
            "s2:nodata_pixel_percentage": round(float((~valid).mean()) * 100.0, 4),
            "sat:relative_orbit": spec.relative_orbit,
            "updated": spec.updated,
            "created": spec.updated,
        },
        extensions=[PROJ_V2, RASTER_EXT, EO_EXT, GRID_EXT, MGRS_EXT, S2_EXT, SAT_EXT],
    )


def _build_s2(spec: _S2Spec, item_dir: pathlib.Path) -> pystac.Item:
    """Write the COGs of one Sentinel-2 L2A item and return its STAC Item."""
    rio_crs = RioCRS.from_epsg(32631)
    x0, y0 = spec.origin
    scl20 = _s2_scl(spec)
    scl_by_res = {
        10: np.repeat(np.repeat(scl20, 2, axis=0), 2, axis=1),
        20: scl20,
        60: np.ascontiguousarray(scl20[1::3, 1::3]),  # the 20 m pixel at each 60 m pixel's centre
    }
    texture10 = _fbm(_rng("s2-texture", spec.item_id), (S2_SIZE_10M, S2_SIZE_10M), (150, 50, 15))
    texture_by_res = {10: texture10, 20: texture10[::2, ::2], 60: texture10[2::6, 2::6]}

    def grid(res: int) -> tuple[Affine, tuple[int, int]]:
        size = S2_SIZE_10M * 10 // res
        return Affine(float(res), 0.0, x0, 0.0, -float(res), y0), (size, size)

    item = _s2_new_item(spec, scl20, *grid(10))

    rgb: dict[str, np.ndarray] = {}
    for key, res, name, common, center, fwhm, title in _S2_BANDS:
        transform, shape = grid(res)
        data = _s2_band(spec, key, scl_by_res[res], texture_by_res[res])
        _write_cog(item_dir / f"{key}.tif", data, transform=transform, crs=rio_crs, nodata=0,
                   resampling="AVERAGE")
        if key in ("red", "green", "blue"):
            rgb[key] = data
        item.add_asset(
            key,
            _asset(
                f"{key}.tif",
                ["data", "reflectance"],
                title,
                {
                    "proj:shape": list(shape),
                    "proj:transform": _transform_list(transform),
                    "gsd": float(res),
                    "eo:bands": [
                        {"name": name, "common_name": common, "center_wavelength": center,
                         "full_width_half_max": fwhm}
                    ],
                    "raster:bands": [
                        _band("uint16", 0, float(res), bits_per_sample=15, scale=0.0001, offset=-0.1)
                    ],
                },
            ),
        )

    transform20, shape20 = grid(20)
    _write_cog(item_dir / "scl.tif", scl20, transform=transform20, crs=rio_crs, nodata=0,
               resampling="NEAREST")
    item.add_asset(
        "scl",
        _asset(
            "scl.tif",
            ["data"],
            "Scene classification map (SCL)",
            {
                "proj:shape": list(shape20),
                "proj:transform": _transform_list(transform20),
                "gsd": 20.0,
                "raster:bands": [_band("uint8", 0, 20.0)],
            },
        ),
    )
    _add_thumbnail(item, item_dir, _thumbnail([rgb["red"], rgb["green"], rgb["blue"]], 1000, 4000, 8))
    return item
