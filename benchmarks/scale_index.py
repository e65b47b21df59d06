#!/usr/bin/env python
"""The combined index at 1M and 10M chips: query time, bytes read, cost of adding one item.

    python benchmarks/scale_index.py                       # 1M then 10M rows (about 15 min, ~4 GB disk)
    python benchmarks/scale_index.py --rows 2000000 --small-rows 500000   # a quicker look

Synthetic per-item chip indexes (NoStats-like rows, in ``INDEX_SCHEMA``, built vectorized with numpy:
no indexer runs): each item is a Sentinel-2-tile-like grid of up to 40 x 40 chips of 2.56 km at a
random place on the globe (|lat| < 72), a date over 2019-2023, a cloud fraction per chip (clear, mixed
and cloudy scenes) and, for a third of the items, a nodata wedge (chips over half nodata dropped, as
the indexer does). 75 % ``sentinel-2-l2a``, 25 % ``landsat-c2-l2``.

Steps (one process, one storage base under ``--workdir``):

1. ``--small-rows`` rows of items are written straight into the per-item layout
   (``combined/{collection}/{item}.parquet``, what ``CombinedIndex.update`` produces), then
   ``compaction.compact`` enables and builds the compacted tier.
2. Queries at that size (``query_chips``: a ~1 degree bbox + one calendar month + ``max_cloud=0.3`` +
   one collection, around a random existing item): median of ``--repeat`` runs, each with a fresh
   ``pyarrow.dataset``; page cache warm, and cold (``posix_fadvise(DONTNEED)`` on every file of the
   index before each run); bytes read through a counting ``pyarrow.fs`` wrapper (every byte pyarrow
   asks the filesystem for, footers included) against the bytes of the index; row groups read against
   the row groups of the files the query opened. The same query on the per-item layout
   (``layout="per-item"``, every item file's footer opened) for contrast.
3. Adding one item, ``--adds`` times: ``Storage.write_index`` + ``CombinedIndex.update([item])`` (the
   per-item file and the manifest registration: what a Dagster update does), then ``compact()`` of the
   pending item (a new small run, plus whatever merges its partition's tiers call for).
4. The index grows to ``--rows`` (the new items written as per-item files, registered with
   ``register_items``, one ``compact()``: incremental, in proportion to the new rows), and 2-3 again.

Results: printed, and written to ``<workdir>/results_scale.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import random
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from stacchip_assets import compaction  # noqa: E402
from stacchip_assets.index.combined import CombinedIndex, combined_key  # noqa: E402
from stacchip_assets.index.query import plan_query, query_chips  # noqa: E402
from stacchip_assets.io.geoparquet import BBOX_TYPE, INDEX_SCHEMA, with_geo_metadata, write_index  # noqa: E402
from stacchip_assets.io.storage import Storage  # noqa: E402

COLLECTIONS = [("sentinel-2-l2a", 0.75, "S2X"), ("landsat-c2-l2", 0.25, "LC0X")]
GRID = 40
CHIP_M = 2560.0
START, DAYS = dt.date(2019, 1, 1), 5 * 365
EPOCH = dt.date(1970, 1, 1)


# =================================================================================================
# Synthetic per-item indexes
# =================================================================================================
def _binary(values: np.ndarray, width: int) -> pa.Array:
    """A binary array of fixed-width values (an (n, width) uint8 array) from buffers."""
    n = len(values)
    offsets = np.arange(n + 1, dtype=np.int32) * width
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(values))])


def _strings(values: list[str]) -> pa.Array:
    return pa.array(values, pa.string())


def wkb_quads(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Little-endian WKB polygons of 4 corners each ((n, 4) lon/lat arrays, ring closed here): (n, 93) uint8."""
    n = len(lon)
    out = np.empty((n, 93), dtype=np.uint8)
    out[:, 0] = 1
    out[:, 1:13] = np.frombuffer(np.array([3, 1, 5], dtype="<u4").tobytes(), dtype=np.uint8)
    ring = [0, 1, 2, 3, 0]
    coords = np.stack([v for k in ring for v in (lon[:, k], lat[:, k])], axis=1).astype("<f8")
    out[:, 13:] = coords.view(np.uint8).reshape(n, 80)
    return out


_TRANSFORMERS: dict[int, object] = {}


def _to_lonlat(epsg: int):
    if epsg not in _TRANSFORMERS:
        import pyproj

        _TRANSFORMERS[epsg] = pyproj.Transformer.from_crs(epsg, 4326, always_xy=True)
    return _TRANSFORMERS[epsg]


def _from_lonlat(epsg: int):
    key = -epsg
    if key not in _TRANSFORMERS:
        import pyproj

        _TRANSFORMERS[key] = pyproj.Transformer.from_crs(4326, epsg, always_xy=True)
    return _TRANSFORMERS[key]


def synthetic_item(rng: np.random.Generator, number: int, year: int | None = None) -> tuple[str, str, pa.Table]:
    """One item's index; ``year`` pins the item to Sentinel-2 and that year (one partition)."""
    pick = 0.0 if year is not None else rng.random()
    collection, prefix = COLLECTIONS[0][0], COLLECTIONS[0][2]
    for name, share, code in COLLECTIONS:
        if pick < share:
            collection, prefix = name, code
            break
        pick -= share
    if year is None:
        date = START + dt.timedelta(days=int(rng.integers(0, DAYS)))
    else:
        date = dt.date(year, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365)))
    item_id = f"{prefix}_{number:06d}_{date:%Y%m%d}"
    lat0 = float(np.degrees(np.arcsin(rng.uniform(np.sin(np.radians(-56)), np.sin(np.radians(70))))))
    lon0 = float(rng.uniform(-180.0, 180.0))
    # a UTM tile as the indexer sees it: chips of 2.56 km in the item's UTM zone, corners reprojected
    zone = min(int((lon0 + 180) // 6) + 1, 60)
    epsg = (32600 if lat0 >= 0 else 32700) + zone
    east0, north0 = _from_lonlat(epsg).transform(lon0, lat0)
    east0, north0 = round(east0 / 10) * 10, round(north0 / 10) * 10
    cx, cy = np.meshgrid(np.arange(GRID + 1), np.arange(GRID + 1))
    clon, clat = _to_lonlat(epsg).transform(east0 + cx.ravel() * CHIP_M, north0 - cy.ravel() * CHIP_M)
    clon, clat = np.asarray(clon).reshape(GRID + 1, GRID + 1), np.asarray(clat).reshape(GRID + 1, GRID + 1)
    if clon.max() - clon.min() > 180:  # across the antimeridian: keep one polygon, longitudes past 180
        clon = np.where(clon < 0, clon + 360.0, clon)
    xs, ys = np.meshgrid(np.arange(GRID), np.arange(GRID))
    xs, ys = xs.ravel(), ys.ravel()
    nodata = np.zeros(len(xs))
    if rng.random() < 0.33:  # a swath edge: a diagonal nodata wedge
        k, c = rng.uniform(-1, 1), rng.uniform(0.3, 0.9) * GRID
        nodata = np.clip((xs + k * ys - c) / 6.0, 0.0, 1.0)
    keep = nodata <= 0.5
    xs, ys, nodata = xs[keep], ys[keep], nodata[keep]
    n = len(xs)
    # corners counter-clockwise: lower-left, lower-right, upper-right, upper-left
    lon = np.stack([clon[ys + 1, xs], clon[ys + 1, xs + 1], clon[ys, xs + 1], clon[ys, xs]], axis=1)
    lat = np.stack([clat[ys + 1, xs], clat[ys + 1, xs + 1], clat[ys, xs + 1], clat[ys, xs]], axis=1)
    xmin, xmax, ymin, ymax = lon.min(axis=1), lon.max(axis=1), lat.min(axis=1), lat.max(axis=1)
    base = rng.choice([0.0, rng.uniform(0, 0.3), rng.uniform(0.3, 1.0)], p=[0.4, 0.35, 0.25])
    cloud = np.clip(base + rng.normal(0, 0.15, n) * (base > 0), 0, 1)
    cloud = (np.round(cloud * 4096) / 4096).astype(np.float32)
    days = (date - EPOCH).days
    micros = days * 86_400_000_000 + int(rng.integers(9 * 3600, 12 * 3600)) * 1_000_000
    href = f"s3://bucket/stacchip/{collection}/{item_id}/stac_item.json"
    arrays = [
        _strings([f"{item_id}-{x}-{y}" for x, y in zip(xs.tolist(), ys.tolist())]),
        pa.array(np.full(n, days, dtype=np.int32)).cast(pa.date32()),
        pa.array(xs.astype(np.uint16)),
        pa.array(ys.astype(np.uint16)),
        pa.array(cloud),
        pa.array(nodata.astype(np.float32)),
        _binary(wkb_quads(lon, lat), 93),
        pa.StructArray.from_arrays([pa.array(xmin), pa.array(ymin), pa.array(xmax), pa.array(ymax)], fields=list(BBOX_TYPE)),
        pa.DictionaryArray.from_arrays(np.zeros(n, np.int32), [collection]).cast(pa.string()),
        pa.DictionaryArray.from_arrays(np.zeros(n, np.int32), [item_id]).cast(pa.string()),
        pa.array(np.full(n, micros, dtype=np.int64)).cast(pa.timestamp("us", tz="UTC")),
        pa.DictionaryArray.from_arrays(np.zeros(n, np.int32), [href]).cast(pa.string()),
        pa.array(np.full(n, 256, dtype=np.uint16)),
        pa.array(np.full(n, 256, dtype=np.uint16)),
    ]
    table = pa.Table.from_arrays(arrays, schema=INDEX_SCHEMA)
    overall = [float(xmin.min()), float(ymin.min()), float(xmax.max()), float(ymax.max())]
    return collection, item_id, with_geo_metadata(table, overall)


def write_deltas(storage: Storage, rng: np.random.Generator, rows: int, first: int,
                 year: int | None = None) -> tuple[list[tuple[str, str]], int, float]:
    """Items straight into the per-item layout until ``rows`` rows; (items, rows, seconds)."""
    started, written, items = time.perf_counter(), 0, []
    number = first
    while written < rows:
        collection, item_id, table = synthetic_item(rng, number, year)
        write_index(table, storage.path(combined_key(collection, item_id)))
        items.append((collection, item_id))
        written += table.num_rows
        number += 1
    return items, written, time.perf_counter() - started


# =================================================================================================
# Measuring
# =================================================================================================
class CountingHandler(pafs.FileSystemHandler):
    """A local filesystem that counts the bytes read through it (what an object store would serve)."""

    def __init__(self) -> None:
        self.fs = pafs.LocalFileSystem()
        self.bytes = 0
        self.reads = 0
        self.files: set[str] = set()

    def __eq__(self, other):
        return self is other

    def __ne__(self, other):
        return self is not other

    def get_type_name(self):
        return "counting"

    def normalize_path(self, path):
        return path

    def get_file_info(self, paths):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise NotImplementedError

    def delete_file(self, path):
        self.fs.delete_file(path)

    def move(self, src, dest):
        self.fs.move(src, dest)

    def copy_file(self, src, dest):
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path):
        handler = self

        class Counting:
            def __init__(self, raw):
                self.raw = raw
                self.closed = False

            def read(self, n=-1):
                data = self.raw.read() if n is None or n < 0 else self.raw.read(n)
                handler.bytes += len(data)
                handler.reads += 1
                return data

            def seek(self, pos, whence=0):
                return self.raw.seek(pos, whence)

            def tell(self):
                return self.raw.tell()

            def size(self):
                return self.raw.size()

            def close(self):
                self.closed = True
                self.raw.close()

            def readable(self):
                return True

            def seekable(self):
                return True

            def writable(self):
                return False

        self.files.add(path)
        return pa.PythonFile(Counting(self.fs.open_input_file(path)), mode="r")

    def open_input_file(self, path):
        return self.open_input_stream(path)

    def open_output_stream(self, path, metadata):
        return self.fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        return self.fs.open_append_stream(path, metadata=metadata)


def rchar() -> int:
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def drop_cache(paths: list[str]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def index_files(storage: Storage, layout: str) -> list[str]:
    if layout == "per-item":
        return [storage.path(e.key) for e in CombinedIndex(storage).entries().values()]
    manifest = compaction.load_manifest(storage)
    pending = [storage.path(combined_key(c, i)) for c, i in manifest.pending_items()]
    return [storage.path(r.key) for r in manifest.runs] + [p for p in pending if os.path.exists(p)]


def row_groups(storage: Storage, query: dict, layout: str) -> dict:
    """Row groups of the files the query opens, and how many of them its filter keeps."""
    plan = plan_query(storage, layout=layout, **query)
    total = kept = kept_bytes = 0
    import pyarrow.dataset as pads

    for scan in plan.scans:
        dataset = pads.dataset([storage.path(k) for k in scan.keys], schema=INDEX_SCHEMA, format="parquet")
        for fragment in dataset.get_fragments():
            meta = fragment.metadata
            total += meta.num_row_groups
            for piece in fragment.split_by_row_group(filter=scan.filter, schema=INDEX_SCHEMA):
                kept += 1
                rg = meta.row_group(piece.row_groups[0].id)
                kept_bytes += sum(rg.column(i).total_compressed_size for i in range(rg.num_columns))
    return {"files_opened": len(plan.keys), "runs_total": plan.runs_total, "row_groups_in_opened_files": total,
            "row_groups_read": kept, "row_group_bytes_read": kept_bytes}


def measure_query(storage: Storage, query: dict, layout: str, repeat: int) -> dict:
    files = index_files(storage, layout)
    total_bytes = sum(os.path.getsize(p) for p in files)
    out: dict = {"layout": layout, "index_files": len(files), "index_bytes": total_bytes}
    for mode in ("warm", "cold"):
        times = []
        for _ in range(repeat):
            if mode == "cold":
                drop_cache(files)
            else:
                query_chips(storage, layout=layout, **query)  # warm-up (also the one before each warm run)
            before = rchar()
            t0 = time.perf_counter()
            table = query_chips(storage, layout=layout, **query)
            times.append(time.perf_counter() - t0)
            out[f"{mode}_rchar"] = rchar() - before
        out[f"{mode}_seconds_median"] = statistics.median(times)
        out[f"{mode}_seconds_all"] = [round(t, 4) for t in times]
    out["rows_returned"] = table.num_rows
    handler = CountingHandler()
    counting = Storage(storage.root, pafs.PyFileSystem(handler))
    check = query_chips(counting, layout=layout, **query)
    assert check.num_rows == table.num_rows
    out["bytes_read"] = handler.bytes
    out["read_calls"] = handler.reads
    out["bytes_read_fraction"] = handler.bytes / total_bytes
    out.update(row_groups(storage, query, layout))
    return out


def pick_queries(storage: Storage, items: list[tuple[str, str]], count: int, seed: int) -> list[dict]:
    """Queries around random existing Sentinel-2 items: a 1 x 1 degree box near the item's centre, the
    calendar month of its date, max_cloud 0.3; only queries that return at least 50 chips are kept."""
    rng = random.Random(seed)
    s2 = [it for it in items if it[0] == "sentinel-2-l2a"]
    rng.shuffle(s2)
    out = []
    for collection, item_id in s2:
        meta = json.loads(pq.read_schema(storage.path(combined_key(collection, item_id))).metadata[b"geo"])
        xmin, ymin, xmax, ymax = meta["columns"]["geometry"]["bbox"]
        cx, cy = (xmin + xmax) / 2 + rng.uniform(-0.4, 0.4), (ymin + ymax) / 2 + rng.uniform(-0.4, 0.4)
        day = item_id.rsplit("_", 1)[1]
        date = dt.date(int(day[:4]), int(day[4:6]), 1)
        end = (date.replace(day=28) + dt.timedelta(days=4)).replace(day=1) - dt.timedelta(days=1)
        query = {
            "collections": [collection], "bbox": (cx - 0.5, cy - 0.5, cx + 0.5, cy + 0.5),
            "date_range": (date.isoformat(), end.isoformat()), "max_cloud": 0.3,
        }
        if query_chips(storage, columns=["chipid"], **query).num_rows >= 50:
            out.append(query)
        if len(out) == count:
            return out
    return out


def add_one(storage: Storage, rng: np.random.Generator, number: int) -> dict:
    collection, item_id, table = synthetic_item(rng, number)
    t0 = time.perf_counter()
    storage.write_index(table, collection, item_id)
    CombinedIndex(storage).update([(collection, item_id)])
    t1 = time.perf_counter()
    report = compaction.compact(storage)
    t2 = time.perf_counter()
    return {"item": f"{collection}/{item_id}", "rows": table.num_rows, "delta_seconds": t1 - t0,
            "compact_seconds": t2 - t1, "merges": report.merges, "rows_rewritten": report.rows_written}


def add_items(storage: Storage, rng: np.random.Generator, count: int, first: int) -> dict:
    adds = [add_one(storage, rng, first + k) for k in range(count)]
    return {
        "count": count,
        "delta_seconds_median": statistics.median(a["delta_seconds"] for a in adds),
        "delta_seconds_max": max(a["delta_seconds"] for a in adds),
        "compact_seconds_median": statistics.median(a["compact_seconds"] for a in adds),
        "compact_seconds_max": max(a["compact_seconds"] for a in adds),
        "merges": sum(a["merges"] for a in adds),
        "all": adds,
    }


def du(path: str) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def stage(storage: Storage, label: str, queries: list[dict], repeat: int, rng, number: int, adds: int,
          per_item: bool) -> dict:
    print(f"\n== {label}: {compaction.status(storage)}", flush=True)
    main = measure_query(storage, queries[0], "auto", repeat)
    print(f"query (compacted): warm {main['warm_seconds_median']:.3f} s, cold {main['cold_seconds_median']:.3f} s, "
          f"{main['rows_returned']} rows, {main['bytes_read'] / 1e6:.1f} MB read of {main['index_bytes'] / 1e6:.0f} MB "
          f"({100 * main['bytes_read_fraction']:.2f} %), row groups {main['row_groups_read']}/{main['row_groups_in_opened_files']} "
          f"in {main['files_opened']} of {main['runs_total']} runs", flush=True)
    others = [measure_query(storage, q, "auto", 1) for q in queries[1:]]
    if others:
        print(f"other queries (1 run each, warm): median {statistics.median(o['warm_seconds_median'] for o in others):.3f} s, "
              f"max {max(o['warm_seconds_median'] for o in others):.3f} s; bytes fraction median "
              f"{100 * statistics.median(o['bytes_read_fraction'] for o in others):.2f} %", flush=True)
    contrast = None
    if per_item:
        contrast = measure_query(storage, queries[0], "per-item", max(1, min(repeat, 3)))
        print(f"query (per-item layout): warm {contrast['warm_seconds_median']:.3f} s, cold {contrast['cold_seconds_median']:.3f} s, "
              f"{contrast['bytes_read'] / 1e6:.1f} MB read ({100 * contrast['bytes_read_fraction']:.2f} %), "
              f"{contrast['files_opened']} files opened", flush=True)
        assert contrast["rows_returned"] == main["rows_returned"]
    added = add_items(storage, rng, adds, number)
    print(f"add 1 item x{adds}: delta+manifest median {added['delta_seconds_median']:.3f} s (max {added['delta_seconds_max']:.3f}), "
          f"compaction median {added['compact_seconds_median']:.3f} s (max {added['compact_seconds_max']:.3f}, {added['merges']} merges)",
          flush=True)
    return {"status": compaction.status(storage), "query": main, "other_queries": others, "per_item_query": contrast,
            "add_one_item": added}


def print_summary(results: dict) -> None:
    """The figures as a Markdown table (what benchmarks/README.md shows)."""
    print("\n| | " + " | ".join(f"{results[k]['status']['run_rows'] / 1e6:.1f}M rows" for k in ("small", "large")) + " |")
    print("|---|---|---|")

    def row(label, fn):
        cells = []
        for k in ("small", "large"):
            try:
                cells.append(fn(results[k]))
            except (KeyError, TypeError):
                cells.append("-")
        print(f"| {label} | " + " | ".join(cells) + " |")

    row(f"query, warm page cache (median of {results['args']['repeat']})", lambda r: f"{r['query']['warm_seconds_median']:.3f} s")
    row("query, cold (fadvise DONTNEED)", lambda r: f"{r['query']['cold_seconds_median']:.3f} s")
    row("rows returned", lambda r: str(r["query"]["rows_returned"]))
    row("bytes read / index bytes", lambda r: f"{r['query']['bytes_read'] / 1e6:.1f} MB / {r['query']['index_bytes'] / 1e6:.0f} MB "
        f"({100 * r['query']['bytes_read_fraction']:.2f} %)")
    row("row groups read / in the files opened", lambda r: f"{r['query']['row_groups_read']} / {r['query']['row_groups_in_opened_files']}")
    row("files opened / runs", lambda r: f"{r['query']['files_opened']} / {r['query']['runs_total']}")
    row("other queries: median time, median bytes fraction", lambda r: (
        f"{statistics.median(o['warm_seconds_median'] for o in r['other_queries']):.3f} s, "
        f"{100 * statistics.median(o['bytes_read_fraction'] for o in r['other_queries']):.2f} %"))
    row("same query, per-item layout (warm / cold)", lambda r: (
        f"{r['per_item_query']['warm_seconds_median']:.3f} s / {r['per_item_query']['cold_seconds_median']:.3f} s, "
        f"{r['per_item_query']['files_opened']} files, {100 * r['per_item_query']['bytes_read_fraction']:.1f} % of bytes"))
    row("add 1 item: per-item file + manifest (median / max)", lambda r: (
        f"{r['add_one_item']['delta_seconds_median']:.3f} / {r['add_one_item']['delta_seconds_max']:.3f} s"))
    row("add 1 item: compaction of it (median / max)", lambda r: (
        f"{r['add_one_item']['compact_seconds_median']:.3f} / {r['add_one_item']['compact_seconds_max']:.3f} s"))


def worst_merge(workdir: Path, rows: int, seed: int) -> dict:
    """The largest merge the default settings allow: ``fanout`` runs just under ``seal_rows`` in one
    partition, the last compaction merging them (its time is the worst case of adding one item)."""
    settings = compaction.CompactionSettings()
    base = workdir / "merge"
    if base.exists():
        shutil.rmtree(base)
    storage = Storage(base)
    rng = np.random.default_rng(seed + 1)
    per_run = min(rows // settings.fanout, int(settings.seal_rows * 0.9))
    number, timings = 0, []
    for k in range(settings.fanout):
        items, written, _ = write_deltas(storage, rng, per_run, number, year=2021)
        number += len(items)
        if k:
            compaction.register_items(storage, new=items)
        t0 = time.perf_counter()
        report = compaction.compact(storage)
        timings.append({"rows": written, "seconds": time.perf_counter() - t0, "merges": report.merges,
                        "rows_written": report.rows_written, "rows_read_from_runs": report.rows_read_from_runs})
        print(f"compaction {k + 1}: {written} new rows, {timings[-1]['seconds']:.1f} s, {report.merges} merges, "
              f"{report.rows_read_from_runs} rows re-read, max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB",
              flush=True)
    runs = compaction.load_manifest(storage).runs
    shutil.rmtree(base)
    return {"per_run_rows": per_run, "compactions": timings, "runs_after": [r.rows for r in runs],
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=str(HERE / ".cache" / "scale"))
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--small-rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--queries", type=int, default=10, help="queries per size (the first one is repeated)")
    parser.add_argument("--adds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-item-at-large", action="store_true", help="also time the per-item layout at --rows")
    parser.add_argument("--keep", action="store_true", help="keep the storage base afterwards")
    parser.add_argument("--worst-merge", action="store_true",
                        help="only measure the largest merge the default settings allow (4 runs of ~0.9M rows)")
    args = parser.parse_args()
    if args.worst_merge:
        result = worst_merge(Path(args.workdir), 4_000_000, args.seed)
        out = Path(args.workdir) / "results_merge.json"
        out.write_text(json.dumps(result, indent=1))
        print(f"results: {out}")
        return

    base = Path(args.workdir) / "base"
    if base.exists():
        shutil.rmtree(base)
    storage = Storage(base)
    rng = np.random.default_rng(args.seed)
    load = os.getloadavg()
    results: dict = {"args": vars(args), "cpus": os.cpu_count(), "loadavg_before": load, "pyarrow": pa.__version__,
                     "settings": dataclasses.asdict(compaction.CompactionSettings())}

    items, rows, seconds = write_deltas(storage, rng, args.small_rows, 0)
    print(f"wrote {len(items)} per-item files, {rows} rows, in {seconds:.1f} s ({du(storage.path('combined')) / 1e6:.0f} MB)", flush=True)
    t0 = time.perf_counter()
    report = compaction.compact(storage)
    first = {"items": len(items), "rows": rows, "write_seconds": seconds, "compact_seconds": time.perf_counter() - t0,
             "runs": len(report.runs_written)}
    print(f"first compaction: {first['compact_seconds']:.1f} s, {first['runs']} runs", flush=True)
    queries = pick_queries(storage, items, args.queries, args.seed)
    results["queries"] = queries
    results["small"] = {"build": first, **stage(storage, f"{rows} rows", queries, args.repeat, rng, 10_000_000, args.adds, True)}

    more, more_rows, seconds = write_deltas(storage, rng, args.rows - rows, len(items))
    t0 = time.perf_counter()
    compaction.register_items(storage, new=more)
    register_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = compaction.compact(storage)
    grow = {"items": len(more), "rows": more_rows, "write_seconds": seconds, "register_seconds": register_seconds,
            "compact_seconds": time.perf_counter() - t0, "merges": report.merges, "rows_written": report.rows_written,
            "rows_read_from_runs": report.rows_read_from_runs}
    print(f"\ngrew by {len(more)} items / {more_rows} rows: per-item files {seconds:.1f} s, register {register_seconds:.2f} s, "
          f"compaction {grow['compact_seconds']:.1f} s ({report.merges} merges, {report.rows_written} rows written, "
          f"{report.rows_read_from_runs} rows re-read from runs)", flush=True)
    total_rows = rows + more_rows
    results["large"] = {"grow": grow, **stage(storage, f"{total_rows} rows", queries, args.repeat, rng, 20_000_000, args.adds,
                                               args.per_item_at_large)}
    results["disk"] = {"per_item_files_bytes": sum(e.size for e in CombinedIndex(storage).entries().values()),
                       "runs_bytes": compaction.status(storage)["run_bytes"], "base_bytes": du(storage.root)}
    results["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["loadavg_after"] = os.getloadavg()
    print(f"\ndisk: per-item files {results['disk']['per_item_files_bytes'] / 1e9:.2f} GB, runs {results['disk']['runs_bytes'] / 1e9:.2f} GB; "
          f"max RSS {results['max_rss_mb']:.0f} MB; load average before {load[0]:.2f}, after {results['loadavg_after'][0]:.2f}")
    print_summary(results)
    out = Path(args.workdir) / "results_scale.json"
    out.write_text(json.dumps(results, indent=1, default=str))
    print(f"results: {out}")
    if not args.keep:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
