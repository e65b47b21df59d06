"""Shard writers: deterministic npz files and Zarr v3 groups, filled from native pixel batches.

``npz`` shards hold ``pixels`` float32 (n, C, H, W) and ``lon_norm``, ``lat_norm``, ``week_norm``,
``hour_norm`` float32 (n, 2), written with a fixed zip timestamp so equal content gives equal bytes.
The ``zarr`` group holds the same five arrays over the whole collection (N samples); ``pixels`` uses
the sharding codec with one inner chunk per chip (random access reads one chip) and one shard file
per ``shard_size`` chips, Blosc-zstd with byte shuffle. Every shard file is written to a temporary
name and renamed, so readers never see a partial shard.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stacchip_assets.errors import StacchipError
from stacchip_assets.io.atomic import atomic_path
from stacchip_assets.io.local_files import HrefPolicy
from stacchip_assets.training.band_stats import CollectionAccumulator
from stacchip_assets.training.config import FORMAT_VERSION, NORM_KEYS, TrainingSetConfig
from stacchip_assets.training.extract import iter_task_pixels
from stacchip_assets.training.layout import CollectionLayout
from stacchip_assets.training.plan import ChipTask

if TYPE_CHECKING:  # zarr is imported where the "zarr" format is used
    import zarr

__all__ = ["ShardSink", "create_zarr_group", "write_npz", "write_task", "zarr_array"]

_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def write_npz(path: Path, arrays: Mapping[str, np.ndarray], level: int) -> int:
    """An npz (np.load-able) written byte-for-byte deterministically (fixed zip timestamps and
    attributes) to a temporary name and renamed; returns its size. Each member carries the zip
    format's CRC-32, which np.load checks."""
    method = zipfile.ZIP_DEFLATED if level > 0 else zipfile.ZIP_STORED
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=method) as zf:
            for name, arr in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
                info.compress_type = method
                info.external_attr = 0o644 << 16
                if level > 0:  # ZipInfo.compress_level from Python 3.13, _compresslevel before
                    setattr(info, "compress_level" if hasattr(zipfile.ZipInfo, "compress_level") else "_compresslevel", level)
                with zf.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)
        return os.path.getsize(tmp)


def _zarr_codecs(level: int) -> dict[str, Any]:
    from zarr.codecs import BloscCodec

    return {"compressors": [BloscCodec(cname="zstd", clevel=max(level, 1), shuffle="shuffle", typesize=4, blocksize=0)]}


def create_zarr_group(path: Path, layout: CollectionLayout, n: int, config: TrainingSetConfig) -> None:
    """The empty Zarr v3 group of one collection (arrays sized for ``n`` samples)."""
    import zarr

    cs, c = layout.chip_size, layout.num_channels
    group = zarr.open_group(str(path), mode="w", zarr_format=3, attributes={
        "stacchip_assets_training_set": FORMAT_VERSION,
        "collection": layout.collection,
        "channels": [ch.name for ch in layout.channels],
        "layout": layout.to_dict(),
        "shard_size": int(config.shard_size),
    })
    group.create_array(
        "pixels", shape=(n, c, cs, cs), dtype="float32", chunks=(1, c, cs, cs),
        shards=(int(config.shard_size), c, cs, cs), fill_value=0.0,
        dimension_names=("sample", "channel", "y", "x"), **_zarr_codecs(config.compress_level),
    )
    for key in NORM_KEYS:
        group.create_array(
            key, shape=(n, 2), dtype="float32", chunks=(int(config.shard_size), 2), fill_value=0.0,
            dimension_names=("sample", "sincos"), **_zarr_codecs(config.compress_level),
        )


def zarr_array(group: zarr.Group, key: str) -> zarr.Array:
    """Array ``key`` of a collection's Zarr group (:func:`create_zarr_group` makes only arrays)."""
    import zarr

    member = group[key]
    if not isinstance(member, zarr.Array):
        raise StacchipError(f"{group.store_path}/{key} is a Zarr group, not an array: not a training set's group")
    return member


class ShardSink:
    """Fills shard buffers in place from native pixel batches and writes each shard when full.

    Writes (deflate / Blosc compression and file I/O, which release the GIL) run in background
    threads (one per CPU, at most 4) while the next chips are read, with at most one more shard
    waiting than there are writers; the bytes of a shard do not depend on that timing.
    """

    WRITERS = max(1, min(4, os.cpu_count() or 1))
    MAX_PENDING = WRITERS + 1

    def __init__(self, task: ChipTask, layout: CollectionLayout, config: TrainingSetConfig, root: Path, total: int):
        self.task, self.layout, self.config, self.root = task, layout, config, Path(root)
        self.total = total  # samples of the collection (the last shard may be short)
        self.buffers: dict[int, np.ndarray] = {}
        self.filled: dict[int, int] = {}
        self.written: list[dict[str, Any]] = []
        self.slices = layout.asset_channels()
        self._zarr: zarr.Group | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def _shard_len(self, shard: int) -> int:
        size = self.config.shard_size
        return min(size, self.total - shard * size)

    def add(self, rows: np.ndarray, pixels: Mapping[str, np.ndarray]) -> None:
        size = self.config.shard_size
        index = self.task.first_index + rows
        shards, slots = index // size, index % size
        for shard in np.unique(shards).tolist():
            sel = np.flatnonzero(shards == shard)
            buf = self.buffers.get(shard)
            if buf is None:
                cs = self.layout.chip_size
                buf = self.buffers[shard] = np.empty((self._shard_len(shard), self.layout.num_channels, cs, cs), np.float32)
                self.filled[shard] = 0
            dest = slots[sel]
            contiguous = bool(np.all(np.diff(dest) == 1) and np.all(np.diff(sel) == 1))
            for asset, c0, nc in self.slices:
                src = pixels[asset]
                if contiguous:  # one cast-and-copy into the buffer, no fancy-index temporaries
                    np.copyto(buf[dest[0] : dest[-1] + 1, c0 : c0 + nc], src[sel[0] : sel[-1] + 1], casting="unsafe")
                else:
                    buf[dest, c0 : c0 + nc] = src[sel]
            self.filled[shard] += len(sel)
            if self.filled[shard] == len(buf):
                self._submit(shard)

    def _norms(self, shard: int) -> dict[str, np.ndarray]:
        start = shard * self.config.shard_size - self.task.first_index
        stop = start + self._shard_len(shard)
        return {k: self.task.norms[k][start:stop] for k in NORM_KEYS}

    def _submit(self, shard: int) -> None:
        buf = self.buffers.pop(shard)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.WRITERS, thread_name_prefix="shard-writer")
        if self.config.format == "zarr" and self._zarr is None:  # opened here, not raced by two writers
            import zarr

            self._zarr = zarr.open_group(str(self.root / f"{self.layout.collection}.zarr"), mode="r+")
        while len(self._pending) >= self.MAX_PENDING:
            self._pending.pop(0).result()
        self._pending.append(self._pool.submit(self._write, shard, buf, self._norms(shard)))

    def _write(self, shard: int, buf: np.ndarray, norms: Mapping[str, np.ndarray]) -> None:
        collection = self.layout.collection
        if self.config.format == "npz":
            rel = f"{collection}/shard_{shard:06d}.npz"
            size = write_npz(self.root / rel, {"pixels": buf, **norms}, int(self.config.compress_level))
            self.written.append({"collection": collection, "shard": shard, "path": rel, "samples": len(buf), "bytes": size})
        else:
            group = self._zarr
            assert group is not None  # _submit opens it before the first write
            start = shard * self.config.shard_size
            zarr_array(group, "pixels")[start : start + len(buf)] = buf  # whole shards: one file each, atomic
            for key, values in norms.items():
                zarr_array(group, key)[start : start + len(buf)] = values
            self.written.append({"collection": collection, "shard": shard, "path": f"{collection}.zarr",
                                 "samples": len(buf)})

    def close(self, *, failed: bool = False) -> None:
        """Wait for the pending writes (re-raising their errors) and check every shard was filled."""
        try:
            for future in self._pending:
                if failed:
                    future.cancel()
                else:
                    future.result()
        finally:
            self._pending = []
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
        if not failed and self.buffers:
            raise StacchipError(f"{self.layout.collection}: shards {sorted(self.buffers)} were not filled "
                                f"({self.filled}): the plan and the reads disagree")


def write_task(task: ChipTask, *, root: str, layout: CollectionLayout, config: TrainingSetConfig, total: int,
               mountpath: str | None = None, statistics: bool = False,
               href_policy: HrefPolicy | None = None) -> dict[str, Any]:
    """Read a task's chips and write its shards (runs in this process or on a Dask worker)."""
    sink = ShardSink(task, layout, config, Path(root), total)
    stats = None
    if statistics:
        stats = CollectionAccumulator(layout)
    try:
        for rows, pixels, chipper in iter_task_pixels(task, layout, mountpath=mountpath, href_policy=href_policy):
            sink.add(rows, pixels)
            if stats is not None:
                stats.update(pixels, chipper)
    except BaseException:
        sink.close(failed=True)
        raise
    sink.close()
    return {"shards": sorted(sink.written, key=lambda s: s["shard"]), "statistics": stats}
