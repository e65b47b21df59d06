"""Indexers that measure cloud and nodata from a mask: Sentinel-2 (scl), Landsat (qa_pixel),
MODIS (QC), nodata values (Sentinel-1, DEMs) and nodata masks; each mask is read once at its own
resolution and reduced per chip in whole arrays (:mod:`stacchip_assets.core.stats`).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cached_property

import numpy as np
import pyproj
import pystac
import rasterio
import rasterio.crs
import rasterio.io
import rasterio.windows
from affine import Affine
from numpy.typing import ArrayLike

from stacchip_assets.core import stats
from stacchip_assets.core.stac import (
    asset_href,
    check_asset_matches_metadata,
    item_crs,
    same_crs,
)
from stacchip_assets.errors import (
    AssetGridError,
    MaskAssetMissingError,
    ResourceLimitError,
    StacchipError,
)
from stacchip_assets.index.indexer_base import ChipIndexer
from stacchip_assets.io.raster import read_band, read_window
from stacchip_assets.io.remote_raster import open_asset  # http(s)/s3 COGs: range reader; else GDAL

log = logging.getLogger("stacchip_assets.index.chip_indexer")  # the public module's name, as before the split


class _MaskStatsIndexer(ChipIndexer):
    """Shared machinery: a mask raster plus a classifier into cloud/nodata, summed per chip."""

    def _mask(self) -> tuple[Affine, np.ndarray | stats.MaskRows]:
        """(mask transform, raw mask at the mask's own resolution: an array, or rows read on demand)."""
        raise NotImplementedError

    def classify(self, mask: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """(cloud booleans or None, nodata booleans) of a block of raw mask rows."""
        raise NotImplementedError

    @cached_property
    def _mask_cache(self) -> tuple[Affine, np.ndarray | stats.MaskRows]:
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
        epsg = getattr(src, "epsg", None)  # a remote raster knows its code without building a CRS
        if epsg is not None or src.crs is not None:  # compared by EPSG code only: custom WKTs (MODIS sinusoidal) differ in wording
            file_crs = pyproj.CRS.from_epsg(epsg) if epsg is not None else pyproj.CRS.from_user_input(src.crs.to_wkt())
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
