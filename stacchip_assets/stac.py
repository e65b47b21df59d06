"""Reading what a STAC item says about its rasters: CRS, pixel grids, dates and hrefs.

Pure functions over `pystac.Item`; nothing here touches pixels. Item fields apply to assets that
carry none (the projection extension's inheritance rule); shape and transform are always taken from
the same place, never mixed across assets.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

import pyproj
import pystac
from affine import Affine

from .errors import AssetGridError, NoProjectionInfoError, UnsupportedCRSError

#: Asset roles that never hold the scene's pixels at full resolution.
NON_DATA_ROLES = frozenset({"thumbnail", "overview", "metadata", "tiles", "preview"})
#: Asset keys that are previews or services in the common catalogs, whatever their roles say.
NON_DATA_KEYS = frozenset({"thumbnail", "preview", "overview", "rendered_preview", "tilejson", "reduced_resolution_browse"})
#: Media-type fragments of rasters GDAL reads; an asset without a type is given the benefit of the doubt.
RASTER_MEDIA_TYPES = ("tiff", "jp2", "geotiff")

CRS_FIELDS = ("proj:code", "proj:epsg", "proj:wkt2", "proj:projjson")


@dataclass(frozen=True)
class PixelGrid:
    """The pixel grid of one asset (or of the item): rows x cols and the pixel-to-CRS affine."""

    shape: tuple[int, int]
    transform: Affine
    asset_key: str | None  # None when the grid comes from item-level fields only

    @property
    def pixel_area(self) -> float:
        t = self.transform
        return abs(t.a * t.e - t.b * t.d)


def _fields(obj: pystac.Item | pystac.Asset) -> Mapping[str, Any]:
    return obj.properties if isinstance(obj, pystac.Item) else obj.extra_fields


def _crs_from_fields(fields: Mapping[str, Any]) -> pyproj.CRS | None:
    for key in CRS_FIELDS:
        value = fields.get(key)
        if value in (None, "", {}):
            continue
        if key == "proj:epsg":
            return pyproj.CRS.from_epsg(int(value))
        return pyproj.CRS.from_user_input(value)
    return None


def item_crs(item: pystac.Item, asset_key: str | None = None) -> pyproj.CRS:
    """The CRS of an asset (or of the item), from proj:code, proj:epsg, proj:wkt2 or proj:projjson.

    Raises NoProjectionInfoError when no field is set and UnsupportedCRSError when the value
    cannot be parsed or has no transformation to WGS84.
    """
    sources: list[Mapping[str, Any]] = []
    if asset_key is not None:
        sources.append(item.assets[asset_key].extra_fields)
    sources.append(item.properties)
    for fields in sources:
        try:
            crs = _crs_from_fields(fields)
        except (pyproj.exceptions.CRSError, ValueError, TypeError) as exc:
            raw = {k: fields.get(k) for k in CRS_FIELDS if fields.get(k) not in (None, "", {})}
            shown = str(raw)[:200]
            raise UnsupportedCRSError(f"cannot parse the CRS {shown}: {exc}", item_id=item.id, asset_key=asset_key) from exc
        if crs is not None:
            try:
                pyproj.Transformer.from_crs(crs, "OGC:CRS84", always_xy=True)
            except pyproj.exceptions.ProjError as exc:
                raise UnsupportedCRSError(
                    f"CRS {crs.name!r} has no transformation to WGS84: {exc}", item_id=item.id, asset_key=asset_key
                ) from exc
            return crs
    raise NoProjectionInfoError(
        "no CRS: the item has none of proj:code, proj:epsg, proj:wkt2, proj:projjson "
        "(items in radar geometry such as Sentinel-1 GRD need terrain correction first)",
        item_id=item.id,
        asset_key=asset_key,
    )


def is_raster_data_asset(key: str, asset: pystac.Asset) -> bool:
    """True for assets that hold scene pixels (bands, masks); false for previews and metadata."""
    if key in NON_DATA_KEYS:
        return False
    roles = set(asset.roles or [])
    if roles & NON_DATA_ROLES:
        return False
    media_type = (asset.media_type or "").lower()
    if media_type and not any(fragment in media_type for fragment in RASTER_MEDIA_TYPES):
        return False
    return True


def raster_asset_keys(item: pystac.Item) -> list[str]:
    """Keys of the item's raster data assets, in item order."""
    return [key for key, asset in item.assets.items() if is_raster_data_asset(key, asset)]


def _affine(values: Any) -> Affine:
    values = [float(v) for v in values]
    if len(values) not in (6, 9):
        raise ValueError(f"proj:transform must have 6 or 9 elements, got {len(values)}")
    return Affine(*values[:6])


def asset_grid(item: pystac.Item, asset_key: str | None) -> PixelGrid | None:
    """The grid of one asset: its own proj:shape/proj:transform, else the item's; None if incomplete.

    Shape and transform must both come from the asset, or both from the item: an asset that carries
    only one of them does not inherit the other (that is how grids get mixed across resolutions).
    """
    levels: list[Mapping[str, Any]] = []
    if asset_key is not None:
        levels.append(item.assets[asset_key].extra_fields)
    levels.append(item.properties)
    for fields in levels:
        shape, transform = fields.get("proj:shape"), fields.get("proj:transform")
        if shape is None and transform is None:
            continue
        if shape is None or transform is None:
            return None
        rows, cols = (int(v) for v in shape[:2])
        return PixelGrid(shape=(rows, cols), transform=_affine(transform), asset_key=asset_key)
    return None


def chip_grid_source(item: pystac.Item, shape: tuple[int, int] | None = None) -> PixelGrid:
    """The grid chips are laid on: the highest-resolution raster data asset's own grid.

    `shape` (rows, cols) given by hand replaces the shape of that grid. Raises
    NoProjectionInfoError naming the item when no asset and no item-level fields give a grid.
    """
    candidates = [g for key in raster_asset_keys(item) if (g := asset_grid(item, key)) is not None]
    if not candidates:
        item_level = asset_grid(item, None)
        if item_level is not None:
            candidates = [item_level]
    if not candidates:
        raise NoProjectionInfoError(
            "no pixel grid: neither the item nor any raster asset has both proj:shape and proj:transform",
            item_id=item.id,
        )
    # Smallest pixel first; among equals the largest raster, then item order (stable sort).
    best = sorted(candidates, key=lambda g: (round(g.pixel_area, 12), -(g.shape[0] * g.shape[1])))[0]
    if shape is not None:
        best = PixelGrid(shape=(int(shape[0]), int(shape[1])), transform=best.transform, asset_key=best.asset_key)
    if best.shape[0] <= 0 or best.shape[1] <= 0 or best.pixel_area == 0:
        raise NoProjectionInfoError(f"degenerate pixel grid {best.shape} / {tuple(best.transform)[:6]}", item_id=item.id)
    return best


def item_datetime(item: pystac.Item) -> dt.datetime:
    """The item's nominal time: `datetime`, else `start_datetime` (a range item), in UTC."""
    when = item.datetime
    if when is None:
        start = item.properties.get("start_datetime")
        if start is None:
            raise NoProjectionInfoError("no datetime and no start_datetime", item_id=item.id)
        when = pystac.utils.str_to_datetime(start)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.astimezone(dt.timezone.utc)


def asset_href(item: pystac.Item, asset_key: str, mountpath: str | Path | None = None, policy=None) -> str:
    """Absolute href of an asset; with `mountpath`, the href's path mapped onto that local folder.

    With a `policy` (:class:`stacchip_assets.hrefs.HrefPolicy`) the href is checked before anything
    opens it (the item's own href, before any mountpath mapping).
    """
    asset = item.assets[asset_key]
    href = asset.href
    if "://" not in href and not Path(href).is_absolute():
        # Relative to the item JSON. (An absolute local path is kept as it is: pystac would read
        # "/data/x.tif" under an s3:// item as "s3://bucket/data/x.tif".)
        href = asset.get_absolute_href() or href
    if policy is not None:
        policy.check(href, item_id=item.id, asset_key=asset_key)
    if mountpath is not None:
        path = urlparse(href, allow_fragments=False).path
        return str(Path(mountpath) / path.lstrip("/"))
    return href


def check_asset_matches_metadata(
    item: pystac.Item, asset_key: str, shape: tuple[int, int], transform: Affine, *, include_item_level: bool = False
) -> None:
    """Raise AssetGridError when the STAC grid of an asset disagrees with the file's own grid.

    A wrong proj:transform in an item would silently misplace every footprint; the file is the
    truth, so a disagreement of more than a thousandth of a pixel is reported, not used. Fields
    the asset inherits from the item are checked only with `include_item_level` (for the asset
    the chip grid comes from): catalogs often put the finest grid at item level while coarser
    assets carry no fields of their own, and those are read correctly from their own grid.
    """
    fields = item.assets[asset_key].extra_fields
    has_own = "proj:transform" in fields or "proj:shape" in fields
    if not (has_own or include_item_level):
        return
    declared = asset_grid(item, asset_key)
    if declared is None:
        return
    a, b = declared.transform, transform
    pixel = max(abs(b.a), abs(b.e), 1e-12)
    same_size = all(abs(x - y) <= 1e-6 * pixel for x, y in ((a.a, b.a), (a.b, b.b), (a.d, b.d), (a.e, b.e)))
    same_origin = abs(a.c - b.c) <= 1e-3 * pixel and abs(a.f - b.f) <= 1e-3 * pixel
    if not (same_size and same_origin):
        raise AssetGridError(
            f"proj:transform {list(a)[:6]} in the STAC metadata disagrees with the file's geotransform "
            f"{list(b)[:6]}; fix the item (the file is used as the truth for pixels)",
            item_id=item.id, asset_key=asset_key,
        )
    if tuple(declared.shape) != tuple(shape):
        raise AssetGridError(
            f"proj:shape {list(declared.shape)} in the STAC metadata disagrees with the file's size {list(shape)}",
            item_id=item.id, asset_key=asset_key,
        )
