"""Index one STAC item into a storage base: the work of one chip-index partition, without Dagster.

:func:`index_item` runs the indexer (all pixel reads happen first), then writes the item JSON, the
per-item GeoParquet index, a quicklook PNG and a gallery PNG of a few chips, each atomically. If reading fails (a missing or
truncated COG) nothing is written, so the previous index of that item stays as it was.
:func:`check_index` holds the per-item quality checks the Dagster layer reports.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pystac
import shapely

from stacchip_assets.core.hrefs import strip_credentials
from stacchip_assets.core.ids import validate_id
from stacchip_assets.core.limits import ReadLimits
from stacchip_assets.core.stac import item_bbox
from stacchip_assets.errors import InvalidItemError, StacchipError
from stacchip_assets.index.chip_indexer import INDEXERS, ChipIndexer, Indexer, indexer_class_for
from stacchip_assets.index.gallery import Gallery, render_gallery
from stacchip_assets.index.item_sets import SETTINGS_METADATA_KEY, settings_fingerprint
from stacchip_assets.index.quicklook import DEFAULT_SIZE, render_quicklook
from stacchip_assets.io.local_files import HrefPolicy
from stacchip_assets.io.stac_source import item_updated
from stacchip_assets.io.storage import Storage

log = logging.getLogger(__name__)

QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


@dataclass(frozen=True)
class ChipSettings:
    """How an item is cut into chips.

    `indexer` is a kind of :data:`stacchip_assets.index.chip_indexer.INDEXERS` (None: chosen from the item);
    `assets` keeps only these assets in the stored item (the indexer's mask asset is always kept).
    """

    chip_size: int = 256
    chip_max_nodata: float = 0.5
    indexer: str | None = None
    stride: int | None = None
    pad_edges: bool = False
    assets: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.chip_size <= 0 or self.chip_size > 65535:
            raise StacchipError(f"chip_size must be in 1..65535, got {self.chip_size}")
        if not 0.0 <= self.chip_max_nodata <= 1.0:
            raise StacchipError(f"chip_max_nodata must be in [0, 1], got {self.chip_max_nodata}")
        if self.indexer is not None and self.indexer not in INDEXERS:
            raise StacchipError(f"unknown indexer kind {self.indexer!r}; choose one of {sorted(INDEXERS)}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["assets"] = list(self.assets) if self.assets is not None else None
        return out


@dataclass(frozen=True)
class CheckOutcome:
    """The result of one quality check (turned into an AssetCheckResult by the Dagster layer)."""

    name: str
    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class ItemIndexResult:
    """What indexing one item produced and where it went."""

    collection: str
    item_id: str
    item_updated: str
    source_href: str | None
    item_uri: str
    index_uri: str
    quicklook_uri: str
    quicklook_png: bytes
    table: pa.Table
    indexer_class: str
    settings: ChipSettings
    grid_shape: tuple[int, int]
    grid_chips: tuple[int, int]
    chips_total: int
    chips_kept: int
    chips_dropped: int
    content_hash: str
    explanation: str | None
    checks: list[CheckOutcome]
    #: the true-colour gallery of a few chips (index.gallery); None with no rows or when it failed
    gallery: Gallery | None = None
    #: why there is no gallery although the index has rows (a band COG unreadable: reported, not fatal)
    gallery_error: str | None = None
    #: where the gallery PNG is stored (None without a gallery)
    gallery_uri: str | None = None

    def distribution(self, column: str) -> dict[str, float]:
        """Quantiles and mean of a statistic column over the kept chips (empty if none)."""
        return distribution(self.table.column(column).to_numpy() if self.table.num_rows else np.empty(0))


def distribution(values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {}
    out = {f"p{int(q * 100):02d}" if 0 < q < 1 else ("min" if q == 0 else "max"): float(v)
           for q, v in zip(QUANTILES, np.quantile(values, QUANTILES))}
    out["mean"] = float(values.mean())
    return out


def table_hash(table: pa.Table) -> str:
    """sha256 of a table's contents (Arrow IPC of the data, schema metadata excluded)."""
    plain = table.replace_schema_metadata(None)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, plain.schema) as writer:
        writer.write_table(plain.combine_chunks())
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def mask_asset_keys(item: pystac.Item, kind: str | None) -> list[str]:
    """The mask asset(s) the chosen indexer reads, among the item's assets."""
    cls = INDEXERS[kind] if kind is not None else indexer_class_for(item)
    return [key for key in getattr(cls, "mask_asset_keys", ()) if key in item.assets]


def prune_assets(item: pystac.Item, keep: Sequence[str] | None, kind: str | None = None) -> pystac.Item:
    """A copy of the item with only the `keep` assets (plus the indexer's mask); unchanged if None."""
    if keep is None:
        return item
    missing = [key for key in keep if key not in item.assets]
    if missing:
        raise StacchipError(f"assets {missing} are configured to be kept but the item has {sorted(item.assets)}", item_id=item.id)
    wanted = set(keep) | set(mask_asset_keys(item, kind))
    clone = item.clone()
    for key in list(clone.assets):
        if key not in wanted:
            del clone.assets[key]
    return clone


def explain_empty(indexer: ChipIndexer, total: int, kept: int) -> str | None:
    """Why an index has no rows (None if it has some)."""
    if kept:
        return None
    if total == 0:
        return f"the {indexer.shape[0]}x{indexer.shape[1]} px grid is smaller than one {indexer.chip_size} px chip"
    return f"all {total} chips have more than {indexer.chip_max_nodata:.0%} nodata"


def _footprint(item: pystac.Item):
    """The item's footprint: its geometry, else its bbox (InvalidItemError when malformed)."""
    bbox = item_bbox(item)
    if item.geometry:
        try:
            shape = shapely.geometry.shape(item.geometry)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, shapely.errors.ShapelyError) as exc:
            raise InvalidItemError(f"geometry is not valid GeoJSON: {type(exc).__name__}: {str(exc)[:160]}",
                                   item_id=item.id) from exc
        xy = shapely.get_coordinates(shape)
        if not (np.isfinite(xy).all() and (np.abs(xy[:, 0]) <= 360).all() and (np.abs(xy[:, 1]) <= 90).all()):
            raise InvalidItemError("geometry has coordinates that are not lon/lat degrees (NaN, infinite, beyond +-90)",
                                   item_id=item.id)
        return shape
    return shapely.box(*bbox) if bbox is not None else None


#: Chips drawn in a quicklook at most: beyond, every k-th chip row and column (a PNG of 800 px cannot
#: show more, and drawing is per polygon).
QUICKLOOK_MAX_CHIPS = 10_000


def _quicklook(item: pystac.Item, indexer: ChipIndexer, table: pa.Table, size: tuple[int, int]) -> bytes:
    """The quicklook PNG: every grid chip (thinned past QUICKLOOK_MAX_CHIPS), kept ones coloured by
    cloud, dropped ones grey."""
    total, kept = indexer.size, table.num_rows
    step = max(1, math.ceil(math.sqrt(total / QUICKLOOK_MAX_CHIPS)))
    xs, ys = indexer.grid.positions()
    kept_x = table.column("chip_index_x").to_numpy().astype(np.int64) if kept else np.empty(0, np.int64)
    kept_y = table.column("chip_index_y").to_numpy().astype(np.int64) if kept else np.empty(0, np.int64)
    cloud = table.column("cloud_cover_percentage").to_numpy() if kept else np.empty(0)
    is_kept = np.zeros(total, dtype=bool)
    if kept:
        is_kept[kept_y * max(indexer.x_size, 1) + kept_x] = True
    drawn = (xs % step == 0) & (ys % step == 0)
    drawn_kept = (kept_x % step == 0) & (kept_y % step == 0)
    if step > 1:
        log.info("%s: quicklook of %d chips draws every %d-th chip row and column", item.id, total, step)
    dropped = drawn & ~is_kept
    return render_quicklook(
        indexer.grid.footprints(kept_x[drawn_kept], kept_y[drawn_kept]) if kept else np.empty(0, dtype=object),
        cloud[drawn_kept],
        indexer.grid.footprints(xs[dropped], ys[dropped]) if dropped.any() else None,
        _footprint(item),
        size=size,
        chip_max_nodata=indexer.chip_max_nodata,
    )


def _gallery(indexer: ChipIndexer, table: pa.Table, count: int) -> tuple[Gallery | None, str | None]:
    """The gallery of `count` chips, or why not. The index does not need these band reads, so a
    band COG that cannot be read costs the picture, not the index (the error is reported)."""
    if count <= 0 or table.num_rows == 0:
        return None, None
    try:
        return render_gallery(indexer, table, count), None
    except (StacchipError, ValueError, OSError) as exc:
        log.warning("%s: no gallery: %s", indexer.item.id, exc)
        return None, f"{type(exc).__name__}: {str(exc)[:300]}"


def check_index(table: pa.Table, item: pystac.Item, settings: ChipSettings, explanation: str | None,
                tolerance: float = 0.02) -> list[CheckOutcome]:
    """Per-item checks: non-empty (or explained), geometries valid and inside the item footprint,
    statistics in [0, 1].

    "Inside" allows what the nodata rule allows: a kept chip may hang outside the item's data
    footprint by up to `chip_max_nodata` of its area (plus `tolerance`), measured against the
    footprint buffered by 1% of its size.
    """
    n = table.num_rows
    outcomes = [
        CheckOutcome(
            "non_empty_or_explained",
            n > 0 or explanation is not None,
            f"{n} chips" if n else f"no chips: {explanation or 'unexplained'}",
            {"rows": n, "explanation": explanation or ""},
        )
    ]
    polygons = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False)) if n else np.empty(0, dtype=object)
    valid = shapely.is_valid(polygons) if n else np.empty(0, dtype=bool)
    footprint = _footprint(item)
    inside_fraction = np.ones(n)
    if n and footprint is not None:
        if float(shapely.bounds(polygons)[:, 2].max()) > 180.0:  # unwrapped antimeridian chips
            footprint = shapely.transform(footprint, lambda xy: np.column_stack([np.where(xy[:, 0] < 0, xy[:, 0] + 360, xy[:, 0]), xy[:, 1]]))
            footprint = shapely.make_valid(footprint)
        minx, miny, maxx, maxy = footprint.bounds
        zone = footprint.buffer(0.01 * max(maxx - minx, maxy - miny))
        areas = shapely.area(polygons)
        inside_fraction = np.where(areas > 0, shapely.area(shapely.intersection(polygons, zone)) / np.where(areas > 0, areas, 1), 0.0)
    need = 1.0 - settings.chip_max_nodata - tolerance
    outside = int((inside_fraction < need).sum())
    invalid = int((~valid).sum()) if n else 0
    outcomes.append(
        CheckOutcome(
            "geometries_valid_and_inside_footprint",
            invalid == 0 and outside == 0,
            f"{invalid} invalid and {outside} outside of {n} footprints"
            + ("" if footprint is not None else " (the item has no geometry: containment not checked)"),
            {"invalid": invalid, "outside": outside, "min_inside_fraction": float(inside_fraction.min()) if n else 1.0},
        )
    )
    cloud = table.column("cloud_cover_percentage").to_numpy() if n else np.empty(0)
    nodata = table.column("nodata_percentage").to_numpy() if n else np.empty(0)
    bad = int((~np.isfinite(cloud) | (cloud < 0) | (cloud > 1) | ~np.isfinite(nodata) | (nodata < 0) | (nodata > 1)).sum())
    above = int((nodata > settings.chip_max_nodata + 1e-6).sum())
    outcomes.append(
        CheckOutcome(
            "stats_in_unit_interval",
            bad == 0 and above == 0,
            f"{bad} chips with cloud/nodata outside [0, 1], {above} above chip_max_nodata",
            {"out_of_range": bad, "above_max_nodata": above},
        )
    )
    return outcomes


def index_item(
    item: pystac.Item,
    storage: Storage,
    settings: ChipSettings = ChipSettings(),
    *,
    collection: str | None = None,
    quicklook_size: tuple[int, int] = DEFAULT_SIZE,
    href_policy: HrefPolicy | None = None,
    limits: ReadLimits | None = None,
    gallery_chips: int = 4,
) -> ItemIndexResult:
    """Index one item and store item JSON, index and quicklook under `storage`.

    All pixel reads happen before the first write: a failure leaves the stored files untouched.
    `href_policy` refuses asset hrefs the (untrusted) item must not make us open; `limits` bounds
    what its metadata may make us allocate. `gallery_chips` chips are read for the gallery (0: none).
    Malformed metadata raises a StacchipError subclass
    (InvalidItemError at the least), never a bare ValueError/TypeError.
    """
    if not isinstance(item.id, str):
        raise InvalidItemError(f"the item id {str(item.id)[:60]!r} is not a string")
    validate_id(item.id, "item")
    collection = collection or item.collection_id
    if not collection:
        raise StacchipError("the item has no collection id", item_id=item.id)
    validate_id(collection, "collection")
    try:
        return _index_item(item, storage, settings, collection, quicklook_size, href_policy, limits, gallery_chips)
    except (ValueError, TypeError, IndexError, KeyError, OverflowError, ZeroDivisionError, AttributeError,
            shapely.errors.ShapelyError) as exc:
        # A field no check above foresaw: still the item's fault, reported as such (not retried).
        raise InvalidItemError(f"malformed metadata: {type(exc).__name__}: {str(exc)[:200]}", item_id=item.id) from exc


def _index_item(item: pystac.Item, storage: Storage, settings: ChipSettings, collection: str,
                quicklook_size: tuple[int, int], href_policy: HrefPolicy | None,
                limits: ReadLimits | None, gallery_chips: int = 4) -> ItemIndexResult:
    """The work of :func:`index_item`: read and compute everything, then write."""
    source_href = item.get_self_href()
    if source_href:  # recorded in metadata: never with a signed URL's token
        source_href = strip_credentials(source_href)
    updated = item_updated(item)
    stored = prune_assets(item, settings.assets, settings.indexer)
    indexer = Indexer(
        stored, chip_size=settings.chip_size, chip_max_nodata=settings.chip_max_nodata, kind=settings.indexer,
        stride=settings.stride, pad_edges=settings.pad_edges, href_policy=href_policy, limits=limits,
    )
    item_uri = storage.uri(storage.item_key(collection, item.id))
    table = indexer.create_index(item_href=item_uri)
    if table.num_rows:  # the partition's collection wins over an item that names none or another
        table = table.set_column(table.schema.get_field_index("collection"), table.schema.field("collection"),
                                 pa.array([collection] * table.num_rows, pa.string()))
    # the settings it was cut with, in the footer (the combined index's rule compares them, index.set_rule)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           SETTINGS_METADATA_KEY.encode(): settings_fingerprint(settings.to_dict()).encode()})
    total = indexer.size
    kept = table.num_rows
    explanation = explain_empty(indexer, total, kept)

    png = _quicklook(item, indexer, table, quicklook_size)
    gallery, gallery_error = _gallery(indexer, table, gallery_chips)
    checks = check_index(table, item, settings, explanation)

    # writes, each atomic; the index last but one so a reader never sees an index without its item
    storage.write_item(stored, collection)
    index_uri = storage.write_index(table, collection, item.id)
    quicklook_uri = storage.write_bytes(storage.quicklook_key(collection, item.id), png)
    gallery_key = storage.gallery_key(collection, item.id)
    if gallery is not None:
        gallery_uri = storage.write_bytes(gallery_key, gallery.png)
    else:  # no rows now (or no picture): no gallery of an older index left beside this one
        gallery_uri = None
        storage.delete(gallery_key)
    return ItemIndexResult(
        collection=collection, item_id=item.id, item_updated=updated, source_href=source_href,
        item_uri=item_uri, index_uri=index_uri, quicklook_uri=quicklook_uri, quicklook_png=png, table=table,
        indexer_class=type(indexer).__name__, settings=settings, grid_shape=(int(indexer.shape[0]), int(indexer.shape[1])),
        grid_chips=(indexer.x_size, indexer.y_size), chips_total=total, chips_kept=kept, chips_dropped=total - kept,
        content_hash=table_hash(table), explanation=explanation, checks=checks,
        gallery=gallery, gallery_error=gallery_error, gallery_uri=gallery_uri,
    )


def settings_json(settings: ChipSettings) -> str:
    return json.dumps(settings.to_dict(), sort_keys=True)
