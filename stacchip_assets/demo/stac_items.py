"""STAC helpers of the sample catalog: extension URLs, footprints, assets, items and thumbnails."""

from __future__ import annotations

import pathlib
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pystac
from pyproj import CRS, Transformer
from rasterio.transform import Affine

from stacchip_assets.demo.cog_writer import _write_png

COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
PNG_MEDIA_TYPE = "image/png"

PROJ_V2 = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
PROJ_V11 = "https://stac-extensions.github.io/projection/v1.1.0/schema.json"
RASTER_EXT = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
EO_EXT = "https://stac-extensions.github.io/eo/v1.1.0/schema.json"
GRID_EXT = "https://stac-extensions.github.io/grid/v1.1.0/schema.json"
MGRS_EXT = "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json"
S2_EXT = "https://stac-extensions.github.io/sentinel-2/v1.0.0/schema.json"
SAR_EXT = "https://stac-extensions.github.io/sar/v1.0.0/schema.json"
SAT_EXT = "https://stac-extensions.github.io/sat/v1.0.0/schema.json"

_UTC = timezone.utc


def _footprint(
    crs: CRS, transform: Affine, shape: tuple[int, int], densify: int = 16
) -> tuple[dict[str, Any], list[float]]:
    """WGS84 GeoJSON polygon (counter-clockwise, edges densified) and bbox of the grid's outline."""
    height, width = shape
    t = np.linspace(0.0, 1.0, densify + 1)[:-1]
    cols = np.concatenate([np.zeros_like(t), t * width, np.full_like(t, width), (1 - t) * width])
    rows = np.concatenate([t * height, np.full_like(t, height), (1 - t) * height, np.zeros_like(t)])
    xs = transform.c + cols * transform.a + rows * transform.b
    ys = transform.f + cols * transform.d + rows * transform.e
    lon, lat = Transformer.from_crs(crs, CRS.from_epsg(4326), always_xy=True).transform(xs, ys)
    ring = [[float(x), float(y)] for x, y in zip(lon, lat, strict=True)]
    ring.append(ring[0])
    bbox = [float(np.min(lon)), float(np.min(lat)), float(np.max(lon)), float(np.max(lat))]
    return {"type": "Polygon", "coordinates": [ring]}, bbox


def _transform_list(transform: Affine) -> list[float]:
    """The 6 affine coefficients [a, b, c, d, e, f] as STAC ``proj:transform``."""
    return [float(v) for v in transform[:6]]


def _band(data_type: str, nodata: float | None, resolution: float, **extra: Any) -> dict[str, Any]:
    """One raster-extension ``raster:bands`` entry."""
    out: dict[str, Any] = {"data_type": data_type}
    if nodata is not None:
        out["nodata"] = nodata
    out["spatial_resolution"] = resolution
    out.update(extra)
    return out


def _asset(
    href: str,
    roles: list[str],
    title: str,
    extra: dict[str, Any] | None = None,
    media_type: str = COG_MEDIA_TYPE,
) -> pystac.Asset:
    """A pystac Asset with a relative href (self-contained catalog)."""
    return pystac.Asset(href=f"./{href}", media_type=media_type, roles=roles, title=title, extra_fields=extra or {})


def _new_item(
    item_id: str,
    *,
    crs: CRS,
    transform: Affine,
    shape: tuple[int, int],
    dt: datetime,
    properties: dict[str, Any],
    extensions: list[str],
) -> pystac.Item:
    """An Item whose geometry/bbox is the footprint of the grid (``crs``, ``transform``, ``shape``)."""
    geometry, bbox = _footprint(crs, transform, shape)
    return pystac.Item(
        id=item_id,
        geometry=geometry,
        bbox=bbox,
        datetime=dt,
        properties=properties,
        stac_extensions=sorted(extensions),
    )


def _add_thumbnail(item: pystac.Item, item_dir: pathlib.Path, rgb: np.ndarray) -> None:
    """Write ``thumbnail.png`` next to the COGs and add it as a ``thumbnail`` asset."""
    _write_png(item_dir / "thumbnail.png", rgb)
    item.add_asset(
        "thumbnail", _asset("thumbnail.png", ["thumbnail"], "Thumbnail", media_type=PNG_MEDIA_TYPE)
    )
