"""Chip pixels, read on demand from an item's COG assets.

Drop-in for `stacchip.chipper.Chipper`. Each asset is opened once per Chipper and kept open. A chip's
pixels are taken from each asset's own grid: output pixel (i, j) of a chip gets the value of the asset
pixel that contains that output pixel's centre (nearest-neighbour by pixel centre). For an asset on the
chip grid this is exactly the source window; for a 20 m asset under a 10 m grid each pixel is repeated
2x2; for ratios that are not integers (60 m under 10 m with 256 px chips) the same rule applies, with
no interpolation and no half-pixel shift. Parts of a chip outside an asset are filled with the asset's
nodata value (0 if it has none).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from rasterio.io import DatasetReader
from rasterio.windows import Window

from stacchip_assets.core.hrefs import strip_credentials
from stacchip_assets.core.limits import ReadLimits
from stacchip_assets.core.stac import asset_href, check_asset_matches_metadata, raster_asset_keys
from stacchip_assets.errors import AssetGridError, StacchipError
from stacchip_assets.index.chip_indexer import ChipIndexer
from stacchip_assets.io.local_files import HrefPolicy
from stacchip_assets.io.raster import read_window
from stacchip_assets.io.remote_raster import open_asset, prefetch_headers  # http(s)/s3 COGs: range reader; else GDAL
from stacchip_assets.io.settings import read_limits

log = logging.getLogger(__name__)


class AssetChipReader:
    """One open asset and the mapping from chip-grid pixels to its own pixels."""

    def __init__(self, indexer: ChipIndexer, key: str, href: str, policy: HrefPolicy | None = None,
                 limits: ReadLimits | None = None) -> None:
        self.key = key
        self.item_id = indexer.item.id
        self.chip_size = indexer.chip_size
        self.dataset: DatasetReader = open_asset(href, item_id=self.item_id, asset_key=key, policy=policy,
                                                 limits=limits)
        try:
            check_asset_matches_metadata(
                indexer.item, key, self.dataset.shape, self.dataset.transform,
                include_item_level=key == indexer.grid_asset_key,
            )
        except AssetGridError:
            self.dataset.close()
            raise
        to_asset = ~self.dataset.transform @ indexer.transform  # chip-grid pixel -> asset pixel
        if abs(to_asset.b) > 1e-9 or abs(to_asset.d) > 1e-9 or to_asset.a <= 0 or to_asset.e <= 0:
            self.dataset.close()
            raise AssetGridError(
                f"pixel grid of {strip_credentials(href)} is rotated or flipped relative to the chip grid ({tuple(to_asset)[:6]})",
                item_id=self.item_id, asset_key=key,
            )
        self.scale_x, self.offset_x = to_asset.a, to_asset.c
        self.scale_y, self.offset_y = to_asset.e, to_asset.f
        rows, cols = indexer.shape
        x0, x1 = self.offset_x, self.offset_x + self.scale_x * cols
        y0, y1 = self.offset_y, self.offset_y + self.scale_y * rows
        if x1 <= 0 or y1 <= 0 or x0 >= self.dataset.width or y0 >= self.dataset.height:
            self.dataset.close()
            raise AssetGridError(
                f"{strip_credentials(href)} ({self.dataset.width}x{self.dataset.height} px, bounds {tuple(self.dataset.bounds)}) "
                f"does not overlap the chip grid (bounds {indexer.bbox})",
                item_id=self.item_id, asset_key=key,
            )
        self.fill = self.dataset.nodata if self.dataset.nodata is not None else 0

    def _source_indices(self, offsets: np.ndarray, scale: float, offset: float) -> np.ndarray:
        """Asset pixel index under each output pixel centre, shape (n, chip_size)."""
        centres = offsets[:, None] + np.arange(self.chip_size)[None, :] + 0.5
        return np.floor(scale * centres + offset + 1e-9).astype(np.int64)

    def read(self, col_offs: np.ndarray, row_offs: np.ndarray) -> np.ndarray:
        """Pixels of chips with these pixel offsets: (n, bands, chip_size, chip_size).

        Chips are read in runs: chips that share a chip row and touch each other are read with one
        window, so each COG block under them is decoded once per call.
        """
        n = len(col_offs)
        ds = self.dataset
        out = np.empty((n, ds.count, self.chip_size, self.chip_size), dtype=ds.dtypes[0])
        cols = self._source_indices(np.asarray(col_offs, dtype=np.int64), self.scale_x, self.offset_x)
        rows = self._source_indices(np.asarray(row_offs, dtype=np.int64), self.scale_y, self.offset_y)
        order = np.lexsort((cols[:, 0], rows[:, 0]))
        runs = []
        start = 0
        while start < n:
            # Grow a run of chips on the same source rows whose column ranges touch.
            first = order[start]
            end = start + 1
            while (
                end < n
                and rows[order[end], 0] == rows[first, 0]
                and cols[order[end], 0] <= cols[order[end - 1], -1] + 1
            ):
                end += 1
            members = order[start:end]
            runs.append((members, rows[first], cols[members]))
            start = end
        # All windows at once: a remote reader fetches their tiles concurrently (io.remote_raster).
        windows = [self._run_window(row_idx, col_idx) for _, row_idx, col_idx in runs]
        wanted = [w for w in windows if w is not None]
        if hasattr(ds, "read_windows"):
            datas = iter(ds.read_windows(wanted)) if wanted else iter(())
        else:
            datas = (read_window(ds, w, item_id=self.item_id, asset_key=self.key) for w in wanted)
        for (members, row_idx, col_idx), window in zip(runs, windows):
            if window is None:
                out[members] = self.fill
            else:
                self._place_run(out, members, row_idx, col_idx, window, next(datas))
        return out

    def _run_window(self, row_idx: np.ndarray, col_idx: np.ndarray) -> Window | None:
        """The source window under a run (clipped to the asset), None if the run is all outside."""
        ds = self.dataset
        r0, r1 = int(row_idx[0]), int(row_idx[-1]) + 1
        c0, c1 = int(col_idx.min()), int(col_idx.max()) + 1
        cr0, cr1 = max(r0, 0), min(r1, ds.height)
        cc0, cc1 = max(c0, 0), min(c1, ds.width)
        if cr0 >= cr1 or cc0 >= cc1:
            return None
        return Window(cc0, cr0, cc1 - cc0, cr1 - cr0)

    def _place_run(self, out: np.ndarray, members: np.ndarray, row_idx: np.ndarray, col_idx: np.ndarray,
                   window: Window, data: np.ndarray) -> None:
        ds = self.dataset
        r0, r1 = int(row_idx[0]), int(row_idx[-1]) + 1
        c0, c1 = int(col_idx.min()), int(col_idx.max()) + 1
        cr0, cc0 = int(window.row_off), int(window.col_off)
        cr1, cc1 = cr0 + int(window.height), cc0 + int(window.width)
        if (cr0, cr1, cc0, cc1) != (r0, r1, c0, c1):
            padded = np.full((ds.count, r1 - r0, c1 - c0), self.fill, dtype=data.dtype)
            padded[:, cr0 - r0 : cr1 - r0, cc0 - c0 : cc1 - c0] = data
            data = padded
        local_rows = row_idx - r0
        if bool(np.all(np.diff(local_rows) == 1)):
            rows = data[:, local_rows[0] : local_rows[-1] + 1]
        else:  # a coarser asset: pick its rows once for the whole run
            rows = np.take(data, local_rows, axis=1)
        for slot, cols in zip(members, col_idx):
            local_cols = cols - c0
            if local_cols[-1] - local_cols[0] == self.chip_size - 1:  # contiguous columns
                out[slot] = rows[:, :, local_cols[0] : local_cols[-1] + 1]
            else:
                np.take(rows, local_cols, axis=2, out=out[slot])

    def close(self) -> None:
        self.dataset.close()


class Chipper:
    """Pixels of the chips of one indexed item, per asset.

    `assets` selects asset keys (default: every raster data asset, not thumbnails or metadata),
    `asset_blacklist` removes some, and `mountpath` maps each href's path onto a local folder (as in
    stacchip). `len()`, indexing and iteration go over the rows of the indexer's chip index (the chips
    kept after nodata filtering), yielding `(x, y, {asset: pixels})`. `limits` (default
    :func:`stacchip_assets.io.settings.read_limits`) bounds the chip size and the COG tile size before any
    read (ResourceLimitError); local files are opened as :func:`stacchip_assets.io.raster.open_asset` says,
    inside the indexer's href policy folders (or inside `mountpath` when one is given).
    """

    def __init__(
        self,
        indexer: ChipIndexer,
        mountpath: str | Path | None = None,
        assets: Sequence[str] | None = None,
        asset_blacklist: Sequence[str] | None = None,
        *,
        limits: ReadLimits | None = None,
    ) -> None:
        self.indexer = indexer
        self.limits = limits if limits is not None else read_limits()
        self.limits.check_chip_size(indexer.chip_size, item_id=indexer.item.id)
        self.mountpath = None if mountpath is None else Path(mountpath)
        self.assets = None if assets is None else list(assets)
        self.asset_blacklist = None if asset_blacklist is None else list(asset_blacklist)
        item = indexer.item
        keys = self.assets if self.assets is not None else raster_asset_keys(item)
        missing = [key for key in keys if key not in item.assets]
        if missing:
            raise StacchipError(f"no asset named {missing}; the item has {sorted(item.assets)}", item_id=item.id)
        self.asset_keys: list[str] = [k for k in keys if k not in set(self.asset_blacklist or [])]
        self._readers: dict[str, AssetChipReader] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._pid = os.getpid()

    def _after_fork(self) -> None:
        """In a forked child (DataLoader workers), drop the parent's handles and threads: GDAL
        handles must not be shared across processes, and a copied thread pool has no threads."""
        if self._pid != os.getpid():
            self._readers = {}
            self._pool = None
            self._pid = os.getpid()

    # -- opening ----------------------------------------------------------------------------------
    def reader(self, key: str) -> AssetChipReader:
        """The open reader of one asset (opened on first use, then reused)."""
        self._after_fork()
        reader = self._readers.get(key)
        if reader is None:
            # The href was checked before the mountpath mapping; the mapped file must stay inside mountpath.
            policy = HrefPolicy(local_roots=(str(self.mountpath),)) if self.mountpath else self.indexer.href_policy
            reader = self._readers[key] = AssetChipReader(self.indexer, key, self._href(key), policy, self.limits)
        return reader

    def _href(self, key: str) -> str:
        return asset_href(self.indexer.item, key, self.mountpath, policy=self.indexer.href_policy)

    def close(self) -> None:
        """Close every open dataset."""
        self._after_fork()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()

    def __enter__(self) -> Chipper:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    # -- reading ----------------------------------------------------------------------------------
    def chips(self, xs: Sequence[int] | np.ndarray, ys: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """Pixels of many chips at once: {asset: array (n, bands, chip_size, chip_size)}, in input order."""
        xs = np.asarray(xs, dtype=np.int64).ravel()
        ys = np.asarray(ys, dtype=np.int64).ravel()
        grid = self.indexer.grid
        bad = (xs < 0) | (ys < 0) | (xs >= grid.x_size) | (ys >= grid.y_size)
        if bad.any():
            i = int(np.argmax(bad))
            raise StacchipError(
                f"chip ({xs[i]}, {ys[i]}) is outside the {grid.x_size}x{grid.y_size} chip grid",
                item_id=self.indexer.item.id,
            )
        col_offs, row_offs = grid.pixel_offsets(xs, ys)
        self._after_fork()
        # Remote headers not read yet: all at once (one round trip in all, not one per asset).
        prefetch_headers([self._href(key) for key in self.asset_keys if key not in self._readers])
        readers = [self.reader(key) for key in self.asset_keys]
        workers = min(len(readers), os.cpu_count() or 1)
        if any(hasattr(r.dataset, "read_windows") for r in readers):
            workers = len(readers)  # remote assets wait on the network: all of them at once
        if workers <= 1:
            return {r.key: r.read(col_offs, row_offs) for r in readers}
        # Each asset has its own dataset handle, so assets decode in parallel (GDAL releases the GIL);
        # no handle is ever used by two threads at once.
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chipper")
        results = self._pool.map(lambda r: r.read(col_offs, row_offs), readers)
        return {r.key: pixels for r, pixels in zip(readers, results)}

    def chip(self, x: int, y: int) -> dict[str, np.ndarray]:
        """Pixels of chip (x, y): {asset: array (bands, chip_size, chip_size)}."""
        return {key: pixels[0] for key, pixels in self.chips([x], [y]).items()}

    def get_pixels_for_asset(self, key: str, x: int, y: int) -> np.ndarray:
        """Pixels of chip (x, y) for one asset (stacchip's method name)."""
        col_offs, row_offs = self.indexer.grid.pixel_offsets(np.array([x]), np.array([y]))
        return self.reader(key).read(col_offs, row_offs)[0]

    # -- the chips of the index -------------------------------------------------------------------
    def _positions(self) -> tuple[np.ndarray, np.ndarray]:
        index = self.indexer.index
        return (
            index.column("chip_index_x").to_numpy().astype(np.int64),
            index.column("chip_index_y").to_numpy().astype(np.int64),
        )

    def __len__(self) -> int:
        return self.indexer.index.num_rows

    def __getitem__(self, index: int) -> tuple[int, int, dict[str, np.ndarray]]:
        xs, ys = self._positions()
        x, y = int(xs[index]), int(ys[index])
        return x, y, self.chip(x, y)

    def __iter__(self) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
        xs, ys = self._positions()
        batch = max(1, self.indexer.grid.x_size)  # about one chip row per read
        for start in range(0, len(xs), batch):
            bx, by = xs[start : start + batch], ys[start : start + batch]
            pixels = self.chips(bx, by)
            for i, (x, y) in enumerate(zip(bx.tolist(), by.tolist())):
                yield x, y, {key: arr[i] for key, arr in pixels.items()}
