"""Chip indexers: the chip grid of a STAC item with per-chip cloud and nodata fractions.

Drop-in compatible with `stacchip.indexer` (same classes, constructor arguments, properties and
methods), but the grid is laid on the highest-resolution asset's own grid, any CRS works, masks are
read once at their own resolution, and all chips are computed as whole arrays.
"""

from __future__ import annotations

import datetime as dt
import logging
from functools import cached_property
from typing import Sequence

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
from numpy.typing import ArrayLike
from shapely.geometry.base import BaseGeometry

from stacchip_assets.core import stats
from stacchip_assets.errors import AssetGridError, MaskAssetMissingError, ResourceLimitError, StacchipError, UnsupportedCRSError
from stacchip_assets.io.geoparquet import build_index_table, empty_index_table
from stacchip_assets.core.grid import ChipGrid
from stacchip_assets.core.hrefs import HrefPolicy
from stacchip_assets.core.limits import ReadLimits
from stacchip_assets.io.settings import read_limits
from stacchip_assets.io.raster import open_asset, read_band, read_window
from stacchip_assets.core.stac import asset_href, check_asset_matches_metadata, chip_grid_source, item_crs, item_datetime, raster_asset_keys, same_crs

log = logging.getLogger(__name__)


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


class _MaskStatsIndexer(ChipIndexer):
    """Shared machinery: a mask raster plus a classifier into cloud/nodata, summed per chip."""

    def _mask(self) -> tuple[Affine, np.ndarray]:
        """(mask transform, raw mask array at the mask's own resolution)."""
        raise NotImplementedError

    def classify(self, mask: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """(cloud booleans or None, nodata booleans) of a block of raw mask rows."""
        raise NotImplementedError

    @cached_property
    def _mask_cache(self) -> tuple[Affine, np.ndarray]:
        return self._mask()

    def _mask_asset_key(self) -> str | None:
        return None

    @cached_property
    def out_of_domain(self) -> stats.OutOfDomain:
        """Mask values seen outside the classification's domain (counted as nodata)."""
        return stats.OutOfDomain()

    def _fractions(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        transform, mask = self._mask_cache
        seen = self.out_of_domain.count
        try:
            fractions = stats.mask_fractions(self.grid, transform, mask, self.classify, np.asarray(xs), np.asarray(ys),
                                             max_block_pixels=self.limits.max_mask_pixels)
        except ResourceLimitError as exc:
            raise ResourceLimitError(str(exc).rsplit(" (limit ", 1)[0], limit=exc.limit, item_id=self.item.id,
                                     asset_key=self._mask_asset_key()) from exc
        except ValueError as exc:
            raise AssetGridError(str(exc), item_id=self.item.id, asset_key=self._mask_asset_key()) from exc
        ood = self.out_of_domain
        if ood.count > seen:
            log.warning("%s: asset %r has %d mask values outside the classification's domain (%s..%s), counted as nodata",
                        self.item.id, self._mask_asset_key(), ood.count - seen, ood.low, ood.high)
        return fractions

    def get_stats(self, x: int, y: int) -> tuple[float, float]:
        cloud, nodata = self._fractions(np.array([x]), np.array([y]))
        return float(cloud[0]), float(nodata[0])

    def chip_stats(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if type(self).get_stats is not _MaskStatsIndexer.get_stats:  # a subclass redefined the statistic
            return super().chip_stats(xs, ys)
        return self._fractions(xs, ys)


class _WindowedMask:
    """A mask raster read window by window (see :class:`stacchip_assets.core.stats.MaskRows`); the open
    dataset is closed with the indexer."""

    def __init__(self, src: rasterio.io.DatasetReader, item_id: str, asset_key: str) -> None:
        self.src, self.item_id, self.asset_key = src, item_id, asset_key
        self.shape = (src.height, src.width)

    def read(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        window = rasterio.windows.Window(col0, row0, col1 - col0, row1 - row0)
        return read_window(self.src, window, indexes=1, item_id=self.item_id, asset_key=self.asset_key)

    def __del__(self) -> None:
        self.src.close()


class NoDataMaskChipIndexer(_MaskStatsIndexer):
    """Indexer with a nodata mask given by the caller (e.g. Sentinel-1); cloud is always 0.

    `nodata_mask` is a boolean (or 0/1) array on the chip grid, shape (rows, cols) of the grid.
    """

    def __init__(
        self,
        item: pystac.Item,
        nodata_mask: ArrayLike,
        chip_size: int = 256,
        chip_max_nodata: float = 0.5,
        shape: Sequence[int] | None = None,
        **grid_options,
    ) -> None:
        super().__init__(item, chip_size, chip_max_nodata, shape, **grid_options)
        self.nodata_mask = np.asarray(nodata_mask)
        if self.nodata_mask.ndim != 2:
            raise StacchipError(f"nodata_mask must be 2-D, got shape {self.nodata_mask.shape}", item_id=item.id)

    def _mask(self) -> tuple[Affine, np.ndarray]:
        return self.transform, self.nodata_mask

    def classify(self, mask: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        return None, mask.astype(bool, copy=False)


class _AssetMaskIndexer(_MaskStatsIndexer):
    """A sensor indexer whose mask is one of the item's assets, read once at native resolution."""

    #: Asset keys tried in order.
    mask_asset_keys: tuple[str, ...] = ()

    def _mask_asset_key(self) -> str:
        for key in self.mask_asset_keys:
            if key in self.item.assets:
                return key
        raise MaskAssetMissingError(
            f"{type(self).__name__} needs a mask asset named one of {list(self.mask_asset_keys)}; "
            f"the item has {sorted(self.item.assets)}",
            item_id=self.item.id,
        )

    def _mask(self) -> tuple[Affine, np.ndarray | stats.MaskRows]:
        key = self._mask_asset_key()
        href = asset_href(self.item, key, policy=self.href_policy)
        log.info("%s: reading mask asset %r at native resolution", self.item.id, key)
        return self._open_mask(href, key)

    def _open_mask(self, href: str, key: str) -> tuple[Affine, np.ndarray | stats.MaskRows]:
        """(transform, mask) of a mask asset after checking its grid and CRS against the chip grid.

        Read whole up to `limits.max_mask_pixels`; a larger raster (whatever its file size: a sparse
        file may declare any size) is read window by window, only under the chips.
        """
        src = open_asset(href, item_id=self.item.id, asset_key=key, policy=self.href_policy)
        self.mask_file_nodata = src.nodata
        try:
            check_asset_matches_metadata(self.item, key, src.shape, src.transform)
            self._check_mask_crs(key, src)
            if src.height * src.width <= self.limits.max_mask_pixels:
                with src:
                    return src.transform, read_band(src, 1, item_id=self.item.id, asset_key=key)
        except BaseException:
            src.close()
            raise
        log.info("%s: mask %r of %dx%d px is read by windows", self.item.id, key, src.height, src.width)
        return src.transform, _WindowedMask(src, self.item.id, key)

    def _check_mask_crs(self, key: str, src: rasterio.io.DatasetReader) -> None:
        """AssetGridError when the mask's CRS (in the item, or the file's EPSG code) is not the grid's: a
        mask is never reprojected, so a mask in another CRS would put its pixels under the wrong chips."""
        found = [("the STAC metadata", item_crs(self.item, key))]
        if src.crs is not None:  # compared by EPSG code only: custom WKTs (MODIS sinusoidal) differ in wording
            file_crs = pyproj.CRS.from_user_input(src.crs.to_wkt())
            codes = file_crs.to_epsg(), self._pyproj_crs.to_epsg()
            if None not in codes and codes[0] != codes[1]:
                found.append(("the file", file_crs))
        for where, crs in found:
            if not same_crs(crs, self._pyproj_crs):
                raise AssetGridError(
                    f"the mask's CRS in {where} ({crs.name}) is not the chip grid's ({self._pyproj_crs.name}); "
                    "masks are not reprojected: give the mask in the grid's CRS", item_id=self.item.id, asset_key=key)


class Sentinel2Indexer(_AssetMaskIndexer):
    """Sentinel-2 L2A: SCL classes {1, 3, 8, 9, 10} are cloud, class 0 is nodata."""

    mask_asset_keys = ("scl", "SCL")
    scl_filter = list(stats.S2_SCL_CLOUD_CLASSES)
    nodata_value = stats.S2_SCL_NODATA_CLASS

    def classify(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return stats.classify_scl(mask, self.out_of_domain)


class LandsatIndexer(_AssetMaskIndexer):
    """Landsat Collection 2: QA_PIXEL bit 0 is nodata; bits 1, 3, 4 (dilated cloud, cloud, shadow) cloud."""

    mask_asset_keys = ("qa_pixel", "QA_PIXEL")

    def classify(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return stats.classify_landsat_qa(mask, self.out_of_domain)


class ModisIndexer(_AssetMaskIndexer):
    """MODIS 09: `sur_refl_qc_500m & 0b11` is 2 for cloud and 3 for nodata."""

    mask_asset_keys = ("sur_refl_qc_500m",)

    def classify(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return stats.classify_modis_qc(mask, self.out_of_domain)


class NodataValueIndexer(_AssetMaskIndexer):
    """Nodata from one asset's own nodata value (or NaN), cloud always 0: Sentinel-1 RTC, DEMs.

    `nodata_asset` names the asset (default: `vv` if present, else the grid asset); the value is the
    file's nodata tag, or `nodata_value` when the file has none.
    """

    mask_asset_keys = ("vv",)

    def __init__(
        self,
        item: pystac.Item,
        chip_size: int = 256,
        chip_max_nodata: float = 0.5,
        shape: Sequence[int] | None = None,
        *,
        nodata_asset: str | None = None,
        nodata_value: float | None = None,
        **grid_options,
    ) -> None:
        super().__init__(item, chip_size, chip_max_nodata, shape, **grid_options)
        self.nodata_asset = nodata_asset
        self.nodata_value = nodata_value

    def _mask_asset_key(self) -> str:
        key = self.nodata_asset or ("vv" if "vv" in self.item.assets else self.grid_asset_key)
        if key is None or key not in self.item.assets:
            raise MaskAssetMissingError(
                f"no asset {key!r} to take nodata from; pass nodata_asset= (the item has {sorted(self.item.assets)})",
                item_id=self.item.id,
            )
        return key

    def _mask(self) -> tuple[Affine, np.ndarray | stats.MaskRows]:
        key = self._mask_asset_key()
        transform, mask = self._open_mask(asset_href(self.item, key, policy=self.href_policy), key)
        if self.nodata_value is None:
            self.nodata_value = self.mask_file_nodata
        return transform, mask

    def classify(self, mask: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        nodata = np.isnan(mask) if mask.dtype.kind == "f" else np.zeros(mask.shape, dtype=bool)
        if self.nodata_value is not None and not np.isnan(self.nodata_value):
            nodata |= mask == self.nodata_value
        return None, nodata


#: Indexer chosen by collection id when the item's collection is known (prefix match).
INDEXER_BY_COLLECTION: dict[str, type[ChipIndexer]] = {
    "sentinel-2": Sentinel2Indexer,
    "sentinel-s2": Sentinel2Indexer,
    "landsat": LandsatIndexer,
    "modis": ModisIndexer,
    "naip": NoStatsChipIndexer,
    "sentinel-1": NodataValueIndexer,
}

INDEXERS: dict[str, type[ChipIndexer]] = {
    "sentinel-2": Sentinel2Indexer,
    "landsat": LandsatIndexer,
    "modis": ModisIndexer,
    "nodata": NodataValueIndexer,
    "nostats": NoStatsChipIndexer,
}


def indexer_class_for(item: pystac.Item) -> type[ChipIndexer]:
    """The indexer class that fits an item: from its mask assets first, then its collection id."""
    if any(key in item.assets for key in Sentinel2Indexer.mask_asset_keys):
        return Sentinel2Indexer
    if any(key in item.assets for key in LandsatIndexer.mask_asset_keys):
        return LandsatIndexer
    if any(key in item.assets for key in ModisIndexer.mask_asset_keys):
        return ModisIndexer
    collection = (item.collection_id or "").lower()
    for prefix, cls in INDEXER_BY_COLLECTION.items():
        if collection.startswith(prefix):
            return cls  # a sensor collection without its mask fails with MaskAssetMissingError
    return NoStatsChipIndexer


def Indexer(item: pystac.Item, *args, kind: str | None = None, **kwargs) -> ChipIndexer:  # noqa: N802 (a factory named like the class it returns)
    """The right indexer for an item: Sentinel-2 (scl), Landsat (qa_pixel), MODIS (QC), Sentinel-1
    (the nodata value of vv) or no stats.

    `kind` ("sentinel-2", "landsat", "modis", "nodata", "nostats") forces a choice.
    """
    if kind is not None:
        try:
            cls = INDEXERS[kind]
        except KeyError:
            raise StacchipError(f"unknown indexer kind {kind!r}; choose one of {sorted(INDEXERS)}", item_id=item.id) from None
    else:
        cls = indexer_class_for(item)
    return cls(item, *args, **kwargs)
