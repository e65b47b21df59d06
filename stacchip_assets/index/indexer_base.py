"""The chip indexer base class: the chip grid of a STAC item and its GeoParquet index rows.

:class:`ChipIndexer` builds the grid (:mod:`stacchip_assets.core.grid`) on the highest-resolution
asset; subclasses say how cloud and nodata are measured (:mod:`stacchip_assets.index.mask_indexers`).
The public home of every indexer is :mod:`stacchip_assets.index.chip_indexer`.
"""
from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyproj
import pystac
import rasterio
import rasterio.crs
import rasterio.io
import rasterio.windows
import shapely
from affine import Affine
from shapely.geometry.base import BaseGeometry

from stacchip_assets.core.grid import ChipGrid
from stacchip_assets.core.limits import ReadLimits
from stacchip_assets.core.stac import (
    asset_href,
    chip_grid_source,
    item_crs,
    item_datetime,
    raster_asset_keys,
)
from stacchip_assets.errors import (
    ResourceLimitError,
    UnsupportedCRSError,
)
from stacchip_assets.io.geoparquet import build_index_table, empty_index_table
from stacchip_assets.io.local_files import HrefPolicy
from stacchip_assets.io.settings import read_limits

log = logging.getLogger("stacchip_assets.index.chip_indexer")  # the public module's name, as before the split


class ChipIndexer:
    """Chip grid of a STAC item; subclasses say how cloud and nodata are measured.

    `chip_size` px chips are laid on the item's highest-resolution raster asset (its own
    proj:shape/proj:transform, item fields applying to assets without them); `shape` (rows, cols)
    replaces the shape found in the item. Beyond stacchip: `stride` < chip_size gives overlapping
    chips, `pad_edges` keeps the partial chips at the right and bottom edges, and `href_policy`
    refuses asset hrefs the item must not make us open (untrusted STAC metadata). `limits`
    (default: from the environment) bounds the chips per item and the mask pixels read at once.
    """

    def __init__(
        self,
        item: pystac.Item,
        chip_size: int = 256,
        chip_max_nodata: float = 0.5,
        shape: Sequence[int] | None = None,
        *,
        stride: int | None = None,
        pad_edges: bool = False,
        href_policy: HrefPolicy | None = None,
        limits: ReadLimits | None = None,
    ) -> None:
        self.item = item
        self.href_policy = href_policy
        self.limits = limits if limits is not None else read_limits()
        if href_policy is not None:  # refuse an untrusted item up front, also when no pixel of it is read (NoStats)
            for key in raster_asset_keys(item):
                asset_href(item, key, policy=href_policy)
        self.chip_size = int(chip_size)
        self.chip_max_nodata = float(chip_max_nodata)
        self._shape = None if shape is None else (int(shape[0]), int(shape[1]))
        self.stride = stride
        self.pad_edges = pad_edges
        source = chip_grid_source(item, self._shape)
        self.grid_asset_key: str | None = source.asset_key
        self._pyproj_crs = item_crs(item, source.asset_key)
        self.grid = ChipGrid(
            shape=source.shape,
            transform=source.transform,
            crs=self._pyproj_crs,
            chip_size=self.chip_size,
            stride=stride,
            pad_edges=pad_edges,
        )
        if self.size > self.limits.max_chips_per_item:  # from the metadata, before any array is allocated
            raise ResourceLimitError(f"the {source.shape[0]}x{source.shape[1]} px grid gives {self.x_size}x{self.y_size} = "
                                     f"{self.size} chips of {self.chip_size} px, more than {self.limits.max_chips_per_item}",
                                     limit=ReadLimits.env_name("max_chips_per_item"), item_id=item.id, asset_key=source.asset_key)
        if max(self.x_size, self.y_size) > 65535:
            raise ResourceLimitError(f"grid of {self.x_size}x{self.y_size} chips exceeds uint16 indices",
                                     limit="65535 chips per row or column", item_id=item.id)
        self.setup_projector()

    # -- grid properties (stacchip names) ---------------------------------------------------------
    @property
    def crs(self) -> rasterio.crs.CRS:
        """CRS of the grid, as a rasterio CRS (stacchip's type)."""
        return rasterio.crs.CRS.from_wkt(self._pyproj_crs.to_wkt())

    @property
    def shape(self) -> list[int]:
        """[rows, cols] of the grid asset (or the shape given by hand)."""
        return list(self.grid.shape)

    @property
    def transform(self) -> Affine:
        """Pixel-to-CRS affine of the grid asset (indexable like stacchip's list: t[0], t[2], ...)."""
        return self.grid.transform

    @property
    def x_size(self) -> int:
        """Number of chips from west to east."""
        return self.grid.x_size

    @property
    def y_size(self) -> int:
        """Number of chips from north to south."""
        return self.grid.y_size

    @property
    def size(self) -> int:
        """Number of chips in the grid, before nodata filtering."""
        return self.grid.size

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) of the raster in the grid CRS."""
        return self.grid.bounds()

    def setup_projector(self) -> None:
        """Prepare the transformation of geometries from the grid CRS to WGS84 lon/lat."""
        try:
            self._transformer = self.grid._to_wgs84  # one transformer, shared with the footprints
        except pyproj.exceptions.ProjError as exc:
            raise UnsupportedCRSError(f"no transformation to WGS84: {exc}", item_id=self.item.id) from exc

    def reproject(self, geom: BaseGeometry) -> BaseGeometry:
        """A geometry in the grid CRS, reprojected to WGS84 (lon, lat)."""
        return shapely.transform(geom, lambda xy: np.column_stack(self._transformer.transform(xy[:, 0], xy[:, 1])))

    def get_chip_bbox(self, x: int, y: int) -> shapely.Polygon:
        """WGS84 footprint of chip (x, y)."""
        return self.grid.footprints(np.array([x]), np.array([y]))[0]

    # -- statistics -------------------------------------------------------------------------------
    def get_stats(self, x: int, y: int) -> tuple[float, float]:
        """(cloud fraction, nodata fraction) of chip (x, y); subclasses define it."""
        raise NotImplementedError(
            f"{type(self).__name__} does not measure cloud/nodata; use Indexer(item) to pick a sensor "
            "indexer, NoStatsChipIndexer, or override get_stats(x, y)"
        )

    def chip_stats(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cloud and nodata fractions of many chips; by default one `get_stats` call per chip."""
        cloud = np.empty(len(xs), dtype=np.float32)
        nodata = np.empty(len(xs), dtype=np.float32)
        for i, (x, y) in enumerate(zip(xs.tolist(), ys.tolist())):
            cloud[i], nodata[i] = self.get_stats(x, y)
        return cloud, nodata

    # -- the index --------------------------------------------------------------------------------
    def create_index(self, item_href: str | None = None) -> pa.Table:
        """The GeoParquet chip table of this item, without chips above `chip_max_nodata`.

        `item_href` records where the item JSON is stored (default: the item's self href) so
        that any row is enough to read the chip's pixels back.
        """
        xs, ys = self.grid.positions()
        if len(xs) == 0:
            log.info("%s: grid %s is smaller than one %d px chip", self.item.id, self.shape, self.chip_size)
            return empty_index_table()
        cloud, nodata = self.chip_stats(xs, ys)
        cloud = np.asarray(cloud, dtype=np.float32)
        nodata = np.asarray(nodata, dtype=np.float32)
        keep = nodata <= self.chip_max_nodata
        dropped = int((~keep).sum())
        log.info(
            "%s: %d chips of %d px, dropped %d/%d with nodata above %s",
            self.item.id, int(keep.sum()), self.chip_size, dropped, len(xs), self.chip_max_nodata,
        )
        xs, ys, cloud, nodata = xs[keep], ys[keep], cloud[keep], nodata[keep]
        footprints = self.grid.footprints(xs, ys)
        when = item_datetime(self.item)
        n = len(xs)
        item_id = self.item.id
        days = (when.date() - dt.date(1970, 1, 1)).days
        micros = int(when.timestamp() * 1_000_000) if when.microsecond == 0 else (
            (when - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1)
        )
        columns = {
            "chipid": [f"{item_id}-{x}-{y}" for x, y in zip(xs.tolist(), ys.tolist())],
            "date": np.full(n, days, dtype=np.int32),
            "chip_index_x": xs.astype(np.uint16),
            "chip_index_y": ys.astype(np.uint16),
            "cloud_cover_percentage": cloud,
            "nodata_percentage": nodata,
            "collection": [self.item.collection_id] * n,
            "item_id": [item_id] * n,
            "datetime": np.full(n, micros, dtype=np.int64),
            "item_href": [item_href or self.item.get_self_href()] * n,
            "chip_size": np.full(n, self.chip_size, dtype=np.uint16),
            "chip_stride": np.full(n, self.grid.step, dtype=np.uint16),
        }
        return build_index_table(columns, footprints)

    @cached_property
    def index(self) -> pa.Table:
        """`create_index()`, computed once (the Chipper iterates over it)."""
        return self.create_index()


class NoStatsChipIndexer(ChipIndexer):
    """Indexer for imagery without a quality mask (NAIP, aerial): every chip is 0 cloud, 0 nodata."""

    def get_stats(self, x: int, y: int) -> tuple[float, float]:
        return 0.0, 0.0

    def chip_stats(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if type(self).get_stats is not NoStatsChipIndexer.get_stats:
            return super().chip_stats(xs, ys)
        zeros = np.zeros(len(xs), dtype=np.float32)
        return zeros, zeros.copy()
