"""Remote COG windows read by range requests, decoded in parallel: a rasterio-like dataset.

:func:`open_asset` is :func:`stacchip_assets.io.raster.open_asset` for http(s) and s3 TIFF hrefs: it
parses the COG header once (kept per URL for a few minutes, so many ``read_chip`` calls on one item
do not re-read it), then :meth:`RemoteRaster.read_windows` fetches the tiles under many windows with
up to ``max_in_flight`` requests at once (adjacent tiles merged into one request), and each request's
tiles are decoded (imagecodecs: deflate, LZW, ZSTD, predictors 2 and 3) by the thread that fetched
them while other requests are still in the air. Pixels equal GDAL's read of the same window.
Anything else -- another scheme, a TIFF this reader does not decode exactly (JPEG, strips, ...), a
disabled config -- goes to GDAL unchanged (:func:`stacchip_assets.io.raster.open_asset`).
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from functools import cached_property

import numpy as np
from rasterio.crs import CRS
from rasterio.windows import Window

from stacchip_assets.core.hrefs import gdal_syntax_problem, strip_credentials
from stacchip_assets.core.limits import ReadLimits
from stacchip_assets.errors import AssetReadError
from stacchip_assets.io.cog_header import CogHeader, UnsupportedTiff, parse_header
from stacchip_assets.io.local_files import HrefPolicy
from stacchip_assets.io.malloc_tuning import tune_malloc
from stacchip_assets.io.raster import describe_error, sign_href
from stacchip_assets.io.raster import open_asset as gdal_open_asset
from stacchip_assets.io.settings import read_limits

try:
    import imagecodecs

    _HAVE_IMAGECODECS = True
except ImportError:  # without the "remote" extra, remote COGs are read by GDAL
    _HAVE_IMAGECODECS = False

from stacchip_assets.io.range_reader import (
    ByteBudget,
    RangeError,
    RangeSource,
    RemoteReadConfig,
    current_config,
    fetch_pool,
    merge_ranges,
)

#: Parsed headers by URL (unsigned), kept this many seconds.
HEADER_TTL = 300.0
_headers: OrderedDict[tuple, tuple[float, CogHeader]] = OrderedDict()
_headers_lock = threading.Lock()


def is_remote(href: str) -> bool:
    return href.split("://", 1)[0].lower() in ("http", "https", "s3") and "://" in href


def open_asset(href: str, *, item_id: str | None = None, asset_key: str | None = None,
               policy: HrefPolicy | None = None, limits: ReadLimits | None = None):
    """A :class:`RemoteRaster` for an http(s)/s3 tiled TIFF this reader decodes exactly, else the
    GDAL dataset of :func:`stacchip_assets.io.raster.open_asset` (same errors: AssetReadError; same
    refusals: GDAL syntax in the href, tiles over ``limits.max_tile_pixels``)."""
    config = current_config()
    tune_malloc()  # also done by GDAL's open below; here for the range reader
    if not config.enabled or not _HAVE_IMAGECODECS or not is_remote(href) or gdal_syntax_problem(href):
        return gdal_open_asset(href, item_id=item_id, asset_key=asset_key, policy=policy, limits=limits)
    try:
        raster = RemoteRaster(href, config.with_gdal_environment(), item_id=item_id, asset_key=asset_key)
    except UnsupportedTiff:
        return gdal_open_asset(href, item_id=item_id, asset_key=asset_key, policy=policy, limits=limits)
    (limits or read_limits()).check_tile(raster.block_shapes[0], item_id=item_id, asset_key=asset_key,
                                         href=raster.href)
    return raster


def prefetch_headers(hrefs: Sequence[str]) -> None:
    """Read the headers of these remote COGs concurrently into the header cache, so that opening
    them one after another (:func:`open_asset`) costs one round trip in all instead of one each.
    Nothing is raised here: a header that fails is fetched again by its open, which reports it."""
    config = current_config()
    if len(hrefs) < 2 or not config.enabled or not _HAVE_IMAGECODECS:
        return
    config = config.with_gdal_environment()  # read in this thread: rasterio environments are thread-local
    todo = []
    for href in hrefs:
        if not is_remote(href) or gdal_syntax_problem(href):
            continue
        try:
            source = RangeSource(sign_href(href), config)
        except Exception:  # noqa: BLE001 - the open reports it, naming item and asset
            continue
        key = _header_key(strip_credentials(href), source)
        if _cached_header(key) is None:
            todo.append((key, source))
    if len(todo) > 1:
        pool = fetch_pool(config.max_in_flight)
        wait([pool.submit(_read_header, key, source, quiet=True) for key, source in todo])


def _header_key(href: str, source: RangeSource) -> tuple:
    # s3://bucket/key names different objects on different endpoints
    return href, source.config.gdal_options.get("AWS_S3_ENDPOINT") if source.scheme == "s3" else None


def _cached_header(key: tuple) -> CogHeader | None:
    """The header cached under `key` if it is younger than HEADER_TTL (then most recently used)."""
    with _headers_lock:
        hit = _headers.get(key)
        if hit is None or time.monotonic() - hit[0] >= HEADER_TTL:
            return None
        _headers.move_to_end(key)
        return hit[1]


def _read_header(key: tuple, source: RangeSource, quiet: bool = False) -> CogHeader | None:
    """The parsed header of `source`, from the cache (kept HEADER_TTL seconds) or read and cached;
    `quiet`: None instead of the error."""
    now = time.monotonic()
    cached = _cached_header(key)
    if cached is not None:
        return cached
    try:
        header = parse_header(lambda offset, length: bytes(source.get(offset, length, allow_short=True)))
    except (RangeError, ValueError, UnsupportedTiff):
        if quiet:
            return None
        raise
    with _headers_lock:
        _headers[key] = (now, header)
        while len(_headers) > 512:
            _headers.popitem(last=False)
    return header


class RemoteRaster:
    """The first image of a remote COG: rasterio-like attributes and reads of many windows at once."""

    def __init__(self, href: str, config: RemoteReadConfig, *, item_id: str | None = None,
                 asset_key: str | None = None) -> None:
        self.href = strip_credentials(href)
        self.item_id, self.asset_key = item_id, asset_key
        self.config = config
        self.budget = ByteBudget(config.max_inflight_bytes)
        opened = sign_href(href)
        self._opened = opened
        try:
            self.source = RangeSource(opened, config)
        except ValueError as exc:
            raise UnsupportedTiff(str(exc)) from exc
        except RangeError as exc:  # no S3 credentials
            raise self._error("open", exc) from exc
        self.header = self._header()
        h = self.header
        self.width, self.height, self.count = h.width, h.height, h.count
        self.dtypes = (np.dtype(h.dtype).newbyteorder("=").name,) * h.count
        self.nodata = h.nodata
        self.block_shapes = [(h.tile_height, h.tile_width)] * h.count
        self.transform = h.transform
        self.epsg = h.epsg  # masks compare it with the grid's CRS (see `crs`)
        self.name = self.href
        self.closed = False
        # Decoded tiles, most recently used last, at most config.tile_cache_bytes: consecutive calls
        # (iteration chip row by chip row, chip() one by one) share the tiles under neighbouring chips.
        self._tiles: OrderedDict[int, np.ndarray] = OrderedDict()
        self._tiles_bytes = 0
        self._tiles_lock = threading.Lock()

    def _error(self, what: str, exc: BaseException) -> AssetReadError:
        return AssetReadError(f"cannot {what} {self.href}: {describe_error(exc, self.href, self._opened)}",
                              item_id=self.item_id, asset_key=self.asset_key)

    def _header(self) -> CogHeader:
        try:
            header = _read_header(_header_key(self.href, self.source), self.source)
        except (RangeError, ValueError) as exc:
            raise self._error("open", exc) from exc
        assert header is not None
        return header

    # -- rasterio-like surface ---------------------------------------------------------------------
    @cached_property
    def crs(self) -> CRS | None:
        """rasterio's CRS of the EPSG code, made on first use (GDAL's first CRS costs ~10 ms)."""
        return CRS.from_epsg(self.epsg) if self.epsg else None

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def bounds(self):
        from rasterio.coords import BoundingBox

        t = self.transform
        left, top = t.c, t.f
        right, bottom = t * (self.width, self.height)
        return BoundingBox(min(left, right), min(top, bottom), max(left, right), max(top, bottom))

    def close(self) -> None:
        self.closed = True
        with self._tiles_lock:
            self._tiles.clear()
            self._tiles_bytes = 0

    def __enter__(self) -> RemoteRaster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(self, indexes: int | Sequence[int] | None = None, window: Window | None = None) -> np.ndarray:
        """rasterio's ``read``: (bands, rows, cols), or (rows, cols) for an int index."""
        if window is None:
            window = Window(0, 0, self.width, self.height)
        data = self.read_windows([window])[0]
        if indexes is None:
            return data
        if isinstance(indexes, int):
            return data[indexes - 1]
        return data[[i - 1 for i in indexes]]

    # -- many windows at once -----------------------------------------------------------------------
    def read_windows(self, windows: Sequence[Window]) -> list[np.ndarray]:
        """Pixels (bands, rows, cols) of each window (inside the raster), all tiles fetched concurrently."""
        h = self.header
        boxes = []
        outs = []
        for w in windows:
            c0, r0 = int(w.col_off), int(w.row_off)
            c1, r1 = c0 + int(w.width), r0 + int(w.height)
            if c0 < 0 or r0 < 0 or c1 > h.width or r1 > h.height or c1 <= c0 or r1 <= r0:
                raise AssetReadError(f"window {w} is outside {self.href} ({h.width}x{h.height})",
                                     item_id=self.item_id, asset_key=self.asset_key)
            boxes.append((r0, r1, c0, c1))
            outs.append(np.empty((h.count, r1 - r0, c1 - c0), dtype=self.dtypes[0]))
        # Every (tile, plane) needed once, with the windows it feeds.
        needs: dict[int, list[int]] = {}
        for k, (r0, r1, c0, c1) in enumerate(boxes):
            rows = range(r0 // h.tile_height, (r1 - 1) // h.tile_height + 1)
            cols = range(c0 // h.tile_width, (c1 - 1) // h.tile_width + 1)
            planes = range(h.count if h.planar == 2 else 1)
            for p in planes:
                for tr in rows:
                    for tc in cols:
                        needs.setdefault(h.tile_index(tr, tc, p), []).append(k)
        with self._tiles_lock:
            cached = {t: self._tiles[t] for t in needs if t in self._tiles}
            for t in cached:
                self._tiles.move_to_end(t)
        for t, tile in cached.items():
            self._place(t, None, needs[t], boxes, outs, tile=tile)
        tiles = np.fromiter((t for t in needs if t not in cached), dtype=np.int64)
        sparse = tiles[(h.byte_counts[tiles] == 0)]
        for t in sparse.tolist():
            self._place(int(t), None, needs[int(t)], boxes, outs)
        present = tiles[h.byte_counts[tiles] > 0]
        # Requests of at least 1 MB (each request has its own cost at the server), and at least two per
        # core, so that the tiles of a large read decode on every core while others are fetched.
        total = int(h.byte_counts[present].sum())
        request_bytes = min(self.config.max_request_bytes, max(1024 * 1024, total // (2 * (os.cpu_count() or 1))))
        groups = merge_ranges(h.offsets[present], h.byte_counts[present], self.config.merge_gap, request_bytes)
        pool = fetch_pool(self.config.max_in_flight)
        futures = []
        failed = threading.Event()  # a failed request stops the submission of the others

        def stop_on_error(f: Future) -> None:
            if f.exception() is not None:
                failed.set()

        if len(groups) == 1:  # one request: fetched by this thread, no hand-over to the pool
            offset, length, members = groups[0]
            self.budget.acquire(length)
            self._fetch_group(offset, length, [int(present[m]) for m in members], needs, boxes, outs)
            return outs
        try:
            for offset, length, members in groups:
                self.budget.acquire(length)  # blocks while the budget is spent: the memory bound
                if failed.is_set():
                    self.budget.release(length)
                    break
                futures.append(pool.submit(self._fetch_group, offset, length,
                                           [int(present[m]) for m in members], needs, boxes, outs))
                futures[-1].add_done_callback(stop_on_error)
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for f in done:
                exc = f.exception()
                if exc is not None:
                    raise exc
        finally:
            wait(futures)
        return outs

    def _fetch_group(self, offset: int, length: int, tiles: list[int], needs, boxes, outs) -> None:
        try:
            try:
                data = self.source.get(offset, length)
            except RangeError as exc:
                raise self._error(f"read bytes {offset}-{offset + length - 1} of", exc) from exc
            view = memoryview(data)
            h = self.header
            for t in tiles:
                start = int(h.offsets[t]) - offset
                self._place(t, view[start:start + int(h.byte_counts[t])], needs[t], boxes, outs)
        finally:
            self.budget.release(length)

    def _decode(self, raw) -> np.ndarray:
        """One tile's pixels, (tile_h, tile_w, samples) in native byte order."""
        h = self.header
        spp = h.count if h.planar == 1 else 1
        size = h.tile_width * h.tile_height * spp * h.dtype.itemsize
        try:
            if h.compression == "deflate":
                buf = imagecodecs.deflate_decode(raw, out=bytearray(size))
            elif h.compression == "lzw":
                buf = imagecodecs.lzw_decode(raw, out=size)
            elif h.compression == "zstd":
                buf = imagecodecs.zstd_decode(raw, out=bytearray(size))
            else:
                buf = bytes(raw)
        except Exception as exc:  # imagecodecs raises its own error types per codec
            raise self._error("decode a tile of", exc) from exc
        if len(buf) != size:
            raise self._error("decode a tile of", ValueError(f"tile has {len(buf)} bytes, {size} expected"))
        tile = np.frombuffer(buf, dtype=h.dtype).reshape(h.tile_height, h.tile_width, spp)
        if h.predictor == 2:  # horizontal differencing, undone in place in native order
            tile = tile.astype(h.dtype.newbyteorder("="), copy=not tile.flags.writeable)
            imagecodecs.delta_decode(tile, axis=1, out=tile)
        elif h.predictor == 3:
            tile = imagecodecs.floatpred_decode(tile, axis=-2)
        return tile.astype(h.dtype.newbyteorder("="), copy=False)

    def _keep(self, t: int, tile: np.ndarray) -> None:
        """Put a decoded tile in the cache, dropping the least recently used beyond the limit."""
        limit = self.config.tile_cache_bytes
        if tile.nbytes > limit:
            return
        with self._tiles_lock:
            if t not in self._tiles:
                self._tiles[t] = tile
                self._tiles_bytes += tile.nbytes
            while self._tiles_bytes > limit:
                self._tiles_bytes -= self._tiles.popitem(last=False)[1].nbytes

    def _place(self, t: int, raw, members: list[int], boxes, outs, tile: np.ndarray | None = None) -> None:
        """Decode tile `t` (or take the decoded `tile`; neither: a sparse tile, filled like GDAL)
        into every window it overlaps."""
        h = self.header
        plane, rest = divmod(t, h.tiles_across * h.tiles_down)
        tr, tc = divmod(rest, h.tiles_across)
        if raw is not None:
            tile = self._decode(raw)
            self._keep(t, tile)
        y0, x0 = tr * h.tile_height, tc * h.tile_width
        for k in members:
            r0, r1, c0, c1 = boxes[k]
            ra, rb = max(r0, y0), min(r1, y0 + h.tile_height)
            ca, cb = max(c0, x0), min(c1, x0 + h.tile_width)
            if ra >= rb or ca >= cb:
                continue
            target = outs[k][:, ra - r0:rb - r0, ca - c0:cb - c0]
            if tile is None:
                bands = slice(None) if h.planar == 1 else slice(plane, plane + 1)
                target[bands] = h.nodata if h.nodata is not None else 0
            elif h.planar == 1:
                target[...] = np.moveaxis(tile[ra - y0:rb - y0, ca - x0:cb - x0], -1, 0)
            else:
                target[plane] = tile[ra - y0:rb - y0, ca - x0:cb - x0, 0]
