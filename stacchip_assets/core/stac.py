"""Reading what a STAC item says about its rasters: CRS, pixel grids, dates and hrefs.

Pure functions over `pystac.Item`; nothing here touches pixels. Item fields apply to assets that
lack them, field by field (the projection extension's inheritance rule). Every field is validated
before use: malformed metadata raises a StacchipError subclass naming the item, never a bare
ValueError/TypeError from deep inside.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyproj
import pystac
from affine import Affine

from stacchip_assets.errors import (
    AssetGridError,
    InvalidItemError,
    NoProjectionInfoError,
    StacchipError,
    UnsupportedCRSError,
)

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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _affine(values: Any, item_id: str | None = None, asset_key: str | None = None) -> Affine:
    """proj:transform as an Affine: 6 or 9 finite numbers (9: the last row is ignored)."""
    if not isinstance(values, (list, tuple)) or len(values) not in (6, 9) or not all(_is_number(v) for v in values):
        raise InvalidItemError(f"proj:transform must be a list of 6 or 9 numbers, got {str(values)[:120]}",
                               item_id=item_id, asset_key=asset_key)
    floats = [float(v) for v in values[:6]]
    if not all(math.isfinite(v) for v in floats):
        raise InvalidItemError(f"proj:transform has a NaN or infinite element: {floats}", item_id=item_id, asset_key=asset_key)
    transform = Affine(*floats)
    determinant = transform.a * transform.e - transform.b * transform.d
    if not math.isfinite(determinant) or determinant == 0:
        raise InvalidItemError(f"proj:transform {floats} is degenerate (zero or non-finite pixel area)",
                               item_id=item_id, asset_key=asset_key)
    return transform


def _shape(values: Any, item_id: str | None = None, asset_key: str | None = None) -> tuple[int, int]:
    """proj:shape as (rows, cols): two positive whole numbers."""
    ok = isinstance(values, (list, tuple)) and len(values) == 2 and all(
        _is_number(v) and math.isfinite(v) and float(v).is_integer() and v >= 1 for v in values
    )
    if not ok:
        raise InvalidItemError(f"proj:shape must be [rows, cols], two positive integers, got {str(values)[:120]}",
                               item_id=item_id, asset_key=asset_key)
    return int(values[0]), int(values[1])


def asset_grid(item: pystac.Item, asset_key: str | None) -> PixelGrid | None:
    """The grid of one asset, each of proj:shape / proj:transform from the asset, else the item; None if
    either is missing at both levels.

    Fields are inherited one by one, as the projection extension says (asset fields override item
    fields): an asset with its own proj:transform but no proj:shape takes the item's proj:shape
    (Planetary Computer items). A malformed value raises InvalidItemError naming item and asset.
    """
    own = item.assets[asset_key].extra_fields if asset_key is not None else {}
    shape = own.get("proj:shape")
    shape = item.properties.get("proj:shape") if shape is None else shape
    transform = own.get("proj:transform")
    transform = item.properties.get("proj:transform") if transform is None else transform
    if shape is None or transform is None:
        return None
    return PixelGrid(shape=_shape(shape, item.id, asset_key), transform=_affine(transform, item.id, asset_key),
                     asset_key=asset_key)


def same_crs(a: pyproj.CRS, b: pyproj.CRS) -> bool:
    """True when two CRSs are the same (axis order ignored: EPSG:4326 and OGC:CRS84 match)."""
    if a == b:
        return True
    try:
        return a.equals(b, ignore_axis_order=True)
    except (TypeError, pyproj.exceptions.CRSError):
        return False


def _grid_crs(item: pystac.Item, crss: list[pyproj.CRS]) -> pyproj.CRS:
    """The CRS chips are laid in: the item's own CRS if an asset grid is in it, else the commonest."""
    if any(item.properties.get(key) not in (None, "", {}) for key in CRS_FIELDS):
        try:
            declared = item_crs(item)
        except StacchipError:
            declared = None
        if declared is not None and any(same_crs(declared, c) for c in crss):
            return declared
    counts = [sum(same_crs(c, other) for other in crss) for c in crss]
    return crss[counts.index(max(counts))]


def chip_grid_source(item: pystac.Item, shape: tuple[int, int] | None = None) -> PixelGrid:
    """The grid chips are laid on: among the raster data assets in the grid CRS (the item's, else the
    one most assets use), the one with the finest resolution.

    Resolutions are compared only within one CRS (square metres and square degrees are not
    comparable: a lon/lat mask must not become the grid of a UTM item). `shape` (rows, cols) given
    by hand replaces the shape of that grid. Raises NoProjectionInfoError naming the item when no
    asset and no item-level fields give a grid, InvalidItemError when the fields are malformed.
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
    if len(candidates) > 1:
        crss: list[pyproj.CRS] = []
        usable: list[PixelGrid] = []
        first_error: StacchipError | None = None
        for grid in candidates:
            try:
                crss.append(item_crs(item, grid.asset_key))
                usable.append(grid)
            except StacchipError as exc:  # an asset with a broken CRS cannot be the grid
                first_error = first_error or exc
        if not usable:
            raise first_error  # type: ignore[misc]
        grid_crs = _grid_crs(item, crss)
        candidates = [g for g, c in zip(usable, crss) if same_crs(c, grid_crs)]
    # Smallest pixel first; among equals the largest raster, then item order (stable sort).
    best = sorted(candidates, key=lambda g: (round(g.pixel_area, 12), -(g.shape[0] * g.shape[1])))[0]
    if shape is not None:
        best = PixelGrid(shape=_shape(list(shape), item.id), transform=best.transform, asset_key=best.asset_key)
    return best


def item_datetime(item: pystac.Item) -> dt.datetime:
    """The item's nominal time: `datetime`, else `start_datetime` (a range item), in UTC.

    Raises NoProjectionInfoError without either, InvalidItemError when the value is not a valid
    RFC 3339 time (30 February, year 0, a number) or is out of the representable range.
    """
    when = item.datetime
    if when is None:
        start = item.properties.get("start_datetime")
        if start is None:
            raise NoProjectionInfoError("no datetime and no start_datetime", item_id=item.id)
        try:
            when = pystac.utils.str_to_datetime(start)
        except (ValueError, TypeError, OverflowError, AttributeError) as exc:
            raise InvalidItemError(f"start_datetime {str(start)[:60]!r} is not an RFC 3339 time: {exc}",
                                   item_id=item.id) from exc
    if not isinstance(when, dt.datetime):
        raise InvalidItemError(f"datetime {str(when)[:60]!r} is not a time", item_id=item.id)
    try:
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        when = when.astimezone(dt.timezone.utc)
        when.timestamp()  # representable as POSIX time (the index stores microseconds since 1970)
    except (ValueError, OverflowError, OSError) as exc:
        raise InvalidItemError(f"datetime {when!s} is out of range: {exc}", item_id=item.id) from exc
    return when


def item_from_dict(data: Any) -> pystac.Item:
    """A pystac Item from a decoded JSON object, InvalidItemError (naming the id) when malformed."""
    item_id = data.get("id") if isinstance(data, dict) else None
    shown = item_id if isinstance(item_id, str) else None
    try:
        item = pystac.Item.from_dict(data)
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, AttributeError, pystac.STACError) as exc:
        raise InvalidItemError(f"not a valid STAC item: {type(exc).__name__}: {str(exc)[:200]}", item_id=shown) from exc
    if not isinstance(item.id, str):
        raise InvalidItemError(f"the item id {str(item.id)[:60]!r} is not a string")
    return item


def item_bbox(item: pystac.Item) -> tuple[float, float, float, float] | None:
    """The item's bbox as (west, south, east, north) (None without one).

    InvalidItemError unless it is 4 or 6 finite numbers in degrees with south <= north (west > east
    is allowed: a bbox across the antimeridian).
    """
    bbox = item.bbox
    if bbox is None:
        return None
    if not isinstance(bbox, (list, tuple)) or len(bbox) not in (4, 6) or not all(_is_number(v) for v in bbox):
        raise InvalidItemError(f"bbox must be 4 or 6 numbers, got {str(bbox)[:120]}", item_id=item.id)
    values = [float(v) for v in bbox]
    if not all(math.isfinite(v) for v in values):
        raise InvalidItemError(f"bbox has a NaN or infinite element: {values}", item_id=item.id)
    west, south, east, north = values if len(values) == 4 else (values[0], values[1], values[3], values[4])
    if south > north:
        raise InvalidItemError(f"bbox south {south} is north of north {north}", item_id=item.id)
    if not (all(-90 <= v <= 90 for v in (south, north)) and all(-360 <= v <= 360 for v in (west, east))):
        raise InvalidItemError(f"bbox {values} is not in lon/lat degrees (latitudes within +-90)", item_id=item.id)
    return west, south, east, north


def asset_href(item: pystac.Item, asset_key: str, mountpath: str | Path | None = None, policy=None) -> str:
    """Absolute href of an asset; with `mountpath`, the href's path mapped onto that local folder.

    With a `policy` (:class:`stacchip_assets.io.local_files.HrefPolicy`) the href is checked before anything
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
    assets carry no fields of their own (or only some: a 20 m asset with its own proj:transform
    under an item-level 10 m proj:shape), and those are read correctly from their own grid.
    """
    fields = item.assets[asset_key].extra_fields
    own_transform = fields.get("proj:transform") is not None or include_item_level
    own_shape = fields.get("proj:shape") is not None or include_item_level
    if not (own_transform or own_shape):
        return
    declared = asset_grid(item, asset_key)
    if declared is None:
        return
    if own_shape and tuple(declared.shape) != tuple(shape):
        raise AssetGridError(
            f"proj:shape {list(declared.shape)} in the STAC metadata disagrees with the file's size {list(shape)}",
            item_id=item.id, asset_key=asset_key,
        )
    if not own_transform:
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
