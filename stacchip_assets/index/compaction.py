"""The combined index at scale: per-item files as the write path, compacted sorted runs as the read path.

An LSM-style second tier under the combined index of :mod:`stacchip_assets.index.combined`. Nothing of the
per-item layout changes: ``{base}/combined/{collection}/{item_id}.parquet`` stays the write path and
the complete, plain-folder view of the index (``CombinedIndex``, ``geopandas.read_parquet(folder)``).
Next to it, in a folder that Parquet readers skip (leading underscore)::

    {base}/combined/_lsm/manifest.json                                         the state, one JSON
    {base}/combined/_lsm/runs/{collection}/{year}/g{gen:08d}-{uid}.parquet     a compacted run
    {base}/combined/_lsm/runs/{collection}/{year}/g{gen:08d}-{uid}.items.json  its items (row counts)

**Runs.** Each run holds the chips of one collection and one year (from the ``date`` column), in
:data:`~stacchip_assets.io.geoparquet.INDEX_SCHEMA` with GeoParquet ``geo`` metadata, **sorted by the
Hilbert index of the chip's bbox centre** (then date), written in row groups of
``row_group_rows`` (64 Ki) rows with statistics on ``bbox.xmin/ymin/xmax/ymax``, ``date``,
``cloud_cover_percentage`` and ``nodata_percentage``. A query touches only the runs of its
collections and years whose bbox and date range (from the manifest) overlap it, and within a run only
the row groups whose statistics overlap (a 1 degree box hits one or two row groups per run).

**Manifest** (``manifest.json``, rewritten atomically: temporary file + rename, one PUT on S3)::

    {"format": "stacchip-assets/combined-lsm", "version": 1, "generation": 12, "seq": 3456,
     "runs": [{"key": ..., "collection": ..., "year": 2021, "gen": 12, "rows": ..., "bytes": ...,
               "items": ..., "bbox": [xmin, ymin, xmax, ymax], "dates": ["2021-01-03", "2021-12-30"],
               "created": epoch, "source_time": epoch}, ...],
     "pending": {collection: {item_id: {"seq": 3455, "replaced": true|false|null}}},
     "tombstones": {collection: {item_id: gen}},
     "garbage": [{"key": ..., "since": epoch}], "settings": {...}, "updated": iso}

**Reads** (:mod:`stacchip_assets.index.query`): the rows of the runs, minus the rows of *pending* items (in
every run) and minus the rows of *tombstoned* items in runs older than the tombstone (``run.gen <
tombstone``), plus the per-item files of the pending items that exist. That is exactly the per-item
layout, whatever the state of compaction.

**Writes.** ``CombinedIndex.update/upsert/remove/sync`` register the items they touch as *pending* (once
a manifest exists): before copying (so a crash in between leaves the item read from its per-item file,
which is always current) and again after (a new ``seq``, so a compaction that read the old file does not
retire the newer one). That is two rewrites of a small JSON per update, whatever the size of the index.
Replacing and removing an item are the same operation: pending until the next compaction, which writes
the item's current rows (none if removed) into a new run and leaves a tombstone ``{item: gen}`` hiding
its older rows in older runs.

**Compaction** (:func:`compact`): the pending items' files are read, split by (collection, year),
sorted and written as new runs (generation ``g``); then in each partition that got a new run, runs
of the same size tier (``base_rows * fanout**k``) are merged once ``fanout`` of them exist, up to
``seal_rows`` (size-tiered, so a chip is rewritten O(log_fanout(seal_rows / base_rows)) times in all).
Tombstones are applied whenever a run is rewritten, a run whose dead fraction passes ``dead_fraction``
is rewritten on its own, and a tombstone is dropped once no older run holds the item (read from the
runs' ``.items.json``). The cost is that of the pending rows plus the merges in the partitions they land
in -- never a rewrite of the whole index. Replaced runs stay on disk for ``grace_seconds`` (readers that
loaded the previous manifest finish), then are deleted.

One compaction at a time (a lock file on local storage; in Dagster the combined-index run queue limit).
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import json
import math
import os
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from stacchip_assets.index.combined import CombinedIndex, CombineReport, _folder, combined_key
from stacchip_assets.errors import StorageError
from stacchip_assets.io.geoparquet import INDEX_SCHEMA, with_geo_metadata
from stacchip_assets.core.ids import validate_id
from stacchip_assets.io.storage import COMBINED_DIR, FileEntry, Storage

FORMAT = "stacchip-assets/combined-lsm"
FORMAT_VERSION = 1
LSM_DIR = f"{COMBINED_DIR}/_lsm"
MANIFEST_KEY = f"{LSM_DIR}/manifest.json"
RUNS_DIR = f"{LSM_DIR}/runs"

#: Columns that get Parquet min/max statistics (the ones queries filter on, plus cheap ones).
STATS_COLUMNS = [
    "chipid", "date", "chip_index_x", "chip_index_y", "cloud_cover_percentage", "nodata_percentage",
    "bbox.xmin", "bbox.ymin", "bbox.xmax", "bbox.ymax", "collection", "item_id", "datetime",
    "chip_size", "chip_stride",
]
#: Columns dictionary-encoded (few distinct values per row group).
DICTIONARY_COLUMNS = ["date", "collection", "item_id", "datetime", "item_href", "chip_size", "chip_stride"]


@dataclass(frozen=True)
class CompactionSettings:
    """How runs are laid out and merged."""

    #: rows per Parquet row group of a run (the unit of pruning)
    row_group_rows: int = 65536
    #: runs below this size are all tier 0; tier k holds runs of base_rows * fanout**(k-1) ... * fanout**k
    base_rows: int = 65536
    #: merge the runs of a tier once this many exist
    fanout: int = 4
    #: runs of at least this many rows are no longer merged (bounds merge memory and rewrite cost)
    seal_rows: int = 1 << 20
    #: rows of pending per-item files buffered per partition before they are written as a run
    read_batch_rows: int = 1 << 20
    #: a run whose tombstoned rows pass this fraction is rewritten on its own
    dead_fraction: float = 0.25
    #: replaced runs are deleted this long after the manifest stopped listing them
    grace_seconds: float = 300.0

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "CompactionSettings":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (values or {}).items() if k in names})


@dataclass
class Run:
    """One compacted file: the chips of one collection and one year, sorted by a spatial key."""

    key: str
    collection: str
    year: int
    gen: int
    rows: int
    bytes: int
    items: int
    bbox: list[float]
    dates: list[str]
    created: float
    source_time: float

    @property
    def items_key(self) -> str:
        return self.key[: -len(".parquet")] + ".items.json"

    def overlaps(self, boxes: list[tuple[float, float, float, float]] | None, start: dt.date | None, end: dt.date | None) -> bool:
        if start is not None and self.dates[1] < start.isoformat():
            return False
        if end is not None and self.dates[0] > end.isoformat():
            return False
        if boxes is None:
            return True
        xmin, ymin, xmax, ymax = self.bbox
        return any(xmax >= b[0] and xmin <= b[2] and ymax >= b[1] and ymin <= b[3] for b in boxes)


@dataclass
class Manifest:
    """The state of the compacted tier (see the module docstring for the JSON)."""

    generation: int = 0
    seq: int = 0
    runs: list[Run] = field(default_factory=list)
    #: collection -> item_id -> {"seq": int, "replaced": bool | None}
    pending: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    #: collection -> item_id -> generation: the item's rows in runs with gen < this are dead
    tombstones: dict[str, dict[str, int]] = field(default_factory=dict)
    garbage: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    updated: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": FORMAT_VERSION, "generation": self.generation, "seq": self.seq,
            "runs": [asdict(r) for r in self.runs], "pending": self.pending, "tombstones": self.tombstones,
            "garbage": self.garbage, "settings": self.settings, "updated": self.updated,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Manifest":
        if data.get("format") != FORMAT or int(data.get("version", 0)) > FORMAT_VERSION:
            raise StorageError(f"not a combined-index manifest this version can read (format {data.get('format')!r}, version {data.get('version')!r})")
        return cls(
            generation=int(data["generation"]), seq=int(data["seq"]), runs=[Run(**r) for r in data.get("runs", [])],
            pending=data.get("pending", {}), tombstones=data.get("tombstones", {}), garbage=data.get("garbage", []),
            settings=data.get("settings", {}), updated=data.get("updated", ""),
        )

    # -- helpers ---------------------------------------------------------------------------------
    def pending_items(self) -> set[tuple[str, str]]:
        return {(c, i) for c, items in self.pending.items() for i in items}

    def pending_count(self) -> int:
        return sum(len(items) for items in self.pending.values())

    def mark_pending(self, items: Iterable[tuple[str, str]], replaced: dict[tuple[str, str], bool | None] | None = None) -> None:
        """Give each item a new seq. ``replaced``: True if the item may have rows in runs (its next
        compaction leaves a tombstone), False if it certainly has none, None if unknown (treated as
        True); True is sticky until the item is compacted. Without ``replaced`` the value is kept."""
        for collection, item_id in items:
            self.seq += 1
            entries = self.pending.setdefault(collection, {})
            previous = entries.get(item_id, {}).get("replaced")
            if replaced is None:
                value = previous
            else:
                value = replaced.get((collection, item_id))
                if previous is True:
                    value = True
            entries[item_id] = {"seq": self.seq, "replaced": value}

    def runs_in(self, collection: str, year: int | None = None) -> list[Run]:
        return [r for r in self.runs if r.collection == collection and (year is None or r.year == year)]


# --------------------------------------------------------------------------------------------------
# manifest storage
# --------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _file_lock(storage: Storage, name: str) -> Iterator[None]:
    """An exclusive lock between processes on local storage (no-op on S3: one writer is the rule)."""
    if not storage.is_local:
        yield
        return
    import fcntl

    path = Path(storage.path(f"{LSM_DIR}/.{name}.lock"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def manifest_exists(storage: Storage) -> bool:
    return storage.exists(MANIFEST_KEY)


def load_manifest(storage: Storage) -> Manifest | None:
    """The manifest, or None if the compacted tier is not enabled for this base."""
    try:
        raw = storage.read_bytes(MANIFEST_KEY)
    except StorageError:
        if not storage.exists(MANIFEST_KEY):
            return None
        raise
    try:
        return Manifest.from_json(json.loads(raw))
    except (ValueError, KeyError, TypeError) as exc:
        raise StorageError(f"{storage.uri(MANIFEST_KEY)} is not a valid manifest: {exc}") from exc


def save_manifest(storage: Storage, manifest: Manifest) -> str:
    """Write the manifest atomically (temporary file + rename locally, one PUT on S3)."""
    manifest.updated = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
    data = (json.dumps(manifest.to_json(), separators=(",", ":"), sort_keys=True) + "\n").encode()
    return storage.write_bytes(MANIFEST_KEY, data)


@contextlib.contextmanager
def _editing(storage: Storage) -> Iterator[Manifest | None]:
    """Read-modify-write of the manifest under the manifest lock; saved if the block succeeds."""
    with _file_lock(storage, "manifest"):
        manifest = load_manifest(storage)
        yield manifest
        if manifest is not None:
            save_manifest(storage, manifest)


def enable(storage: Storage, settings: CompactionSettings | None = None) -> Manifest:
    """Create the manifest (if absent) with every item of the per-item layout pending.

    From then on :class:`~stacchip_assets.index.combined.CombinedIndex` registers its updates in it. The
    empty manifest is written before the listing, so an update running meanwhile is not missed.
    """
    with _file_lock(storage, "manifest"):
        manifest = load_manifest(storage)
        if manifest is not None:
            return manifest
        manifest = Manifest(settings=asdict(settings or CompactionSettings()))
        save_manifest(storage, manifest)
    items = sorted(CombinedIndex(storage).items())
    with _editing(storage) as manifest:
        assert manifest is not None
        manifest.mark_pending(items, {k: False for k in items})
    return manifest


def register_items(
    storage: Storage,
    upserted: Iterable[tuple[str, str]] = (),
    removed: Iterable[tuple[str, str]] = (),
    *,
    new: Iterable[tuple[str, str]] = (),
) -> bool:
    """Record items whose per-item combined file was written or deleted by someone other than
    ``CombinedIndex`` (which registers its own updates). ``new`` items are known never to have been
    compacted (no tombstone needed). Returns False if the compacted tier is not enabled."""
    upserted, removed, new = list(upserted), list(removed), set(new)
    for c, i in [*upserted, *removed, *new]:
        combined_key(c, i)  # validates
    with _editing(storage) as manifest:
        if manifest is None:
            return False
        everything = list(dict.fromkeys([*upserted, *removed, *new]))
        manifest.mark_pending(everything, {k: (k not in new) for k in everything})
    return True


class DeltaLog:
    """How :class:`~stacchip_assets.index.combined.CombinedIndex` registers its updates (two manifest writes
    per update call: before and after the copies)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    @classmethod
    def if_enabled(cls, storage: Storage) -> "DeltaLog | None":
        return cls(storage) if manifest_exists(storage) else None

    def begin(self, items: list[tuple[str, str]]) -> None:
        """Before the copies: the items become pending (read from their per-item files from now on)."""
        with _editing(self.storage) as manifest:
            if manifest is None:
                return
            #: what each item's entry said before this update ("absent" if it was not pending)
            self._before = {(c, i): manifest.pending.get(c, {}).get(i, {"replaced": "absent"}).get("replaced") for c, i in items}
            manifest.mark_pending(items)

    def commit(self, items: list[tuple[str, str]], reports: list[CombineReport]) -> None:
        """After the copies: a new seq for each item, and whether it can have rows in runs."""
        before = getattr(self, "_before", {})
        known: dict[tuple[str, str], bool | None] = {}
        for item in items:
            seen = [r for r in reports if item in r.previous_rows_by_item]
            if any(item in r.existed_before for r in seen):
                known[item] = True
            elif seen and before.get(item, None) in ("absent", False):
                known[item] = False  # no per-item file before, and no unknown earlier registration
            else:
                known[item] = None
        with _editing(self.storage) as manifest:
            if manifest is not None:
                manifest.mark_pending(items, known)


# --------------------------------------------------------------------------------------------------
# sort key and run files
# --------------------------------------------------------------------------------------------------

def hilbert_index(x: np.ndarray, y: np.ndarray, order: int = 16) -> np.ndarray:
    """Hilbert curve index of integer cell coordinates in [0, 2**order) (vectorized)."""
    n = np.uint64(1 << order)
    x = x.astype(np.uint64).copy()
    y = y.astype(np.uint64).copy()
    d = np.zeros(len(x), dtype=np.uint64)
    s = np.uint64(1 << (order - 1))
    one = np.uint64(1)
    while s > 0:
        rx = (x & s) > 0
        ry = (y & s) > 0
        d += s * s * ((np.uint64(3) * rx.astype(np.uint64)) ^ ry.astype(np.uint64))
        # rotate the quadrant
        flip = (~ry) & rx
        x = np.where(flip, n - one - x, x)
        y = np.where(flip, n - one - y, y)
        swap = ~ry
        x, y = np.where(swap, y, x), np.where(swap, x, y)
        s = s // np.uint64(2)
    return d


def spatial_key(table: pa.Table, order: int = 16) -> np.ndarray:
    """The sort key of a run: Hilbert index of each chip's bbox centre on a 2**order grid over the globe."""
    bbox = table.column("bbox").combine_chunks() if table.num_rows else None
    if bbox is None:
        return np.zeros(0, dtype=np.uint64)
    cx = (bbox.field("xmin").to_numpy() + bbox.field("xmax").to_numpy()) / 2
    cy = (bbox.field("ymin").to_numpy() + bbox.field("ymax").to_numpy()) / 2
    cells = float(1 << order)
    ix = np.clip(((cx + 180.0) / 360.0 * cells).astype(np.int64), 0, (1 << order) - 1)
    iy = np.clip(((cy + 90.0) / 180.0 * cells).astype(np.int64), 0, (1 << order) - 1)
    return hilbert_index(ix, iy, order)


def sort_run(table: pa.Table) -> pa.Table:
    """Rows in run order: spatial key, then date, then chip id (deterministic)."""
    if table.num_rows <= 1:
        return table
    key = spatial_key(table)
    date = table.column("date").combine_chunks().cast(pa.int32()).to_numpy(zero_copy_only=False)
    order = np.lexsort((date, key))
    return table.take(pa.array(order))


def years_of(table: pa.Table) -> np.ndarray:
    days = table.column("date").combine_chunks().cast(pa.int32()).to_numpy(zero_copy_only=False)
    return days.astype("datetime64[D]").astype("datetime64[Y]").astype(np.int64) + 1970


def _run_key(collection: str, year: int, gen: int) -> str:
    return f"{RUNS_DIR}/{_folder(collection)}/{int(year):04d}/g{gen:08d}-{uuid.uuid4().hex[:12]}.parquet"


def _encode(table: pa.Table, sink: Any, row_group_rows: int) -> None:
    pq.write_table(
        table, sink, compression="zstd", row_group_size=row_group_rows,
        write_statistics=STATS_COLUMNS, use_dictionary=DICTIONARY_COLUMNS,
    )


def _write_parquet(storage: Storage, key: str, table: pa.Table, row_group_rows: int) -> int:
    """Write a run file atomically; returns its size in bytes."""
    try:
        if storage.is_local:
            target = Path(storage.path(key))
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            os.close(fd)
            try:
                _encode(table, tmp, row_group_rows)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            return target.stat().st_size
        sink = pa.BufferOutputStream()
        _encode(table, sink, row_group_rows)
        data = sink.getvalue().to_pybytes()
        storage.write_bytes(key, data)
        return len(data)
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"cannot write the run {storage.uri(key)}: {exc}") from exc


def _date_text(days: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=int(days))).isoformat()


def write_run(storage: Storage, table: pa.Table, collection: str, year: int, gen: int,
              settings: CompactionSettings, source_time: float) -> Run:
    """Sort a partition's rows and write them as one run (+ its ``.items.json``)."""
    table = sort_run(table.select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA))
    bbox = table.column("bbox").combine_chunks()
    overall = [
        float(pc.min(bbox.field("xmin")).as_py()), float(pc.min(bbox.field("ymin")).as_py()),
        float(pc.max(bbox.field("xmax")).as_py()), float(pc.max(bbox.field("ymax")).as_py()),
    ]
    table = with_geo_metadata(table, overall)
    key = _run_key(collection, year, gen)
    days = table.column("date").combine_chunks().cast(pa.int32())
    counts = pc.value_counts(table.column("item_id").combine_chunks())
    items = dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))
    storage.write_bytes(key[: -len(".parquet")] + ".items.json", json.dumps({"items": items}, sort_keys=True).encode())
    size = _write_parquet(storage, key, table, settings.row_group_rows)
    return Run(
        key=key, collection=collection, year=int(year), gen=gen, rows=table.num_rows, bytes=size, items=len(items),
        bbox=overall, dates=[_date_text(pc.min(days).as_py()), _date_text(pc.max(days).as_py())],
        created=time.time(), source_time=source_time,
    )


def read_run_items(storage: Storage, run: Run) -> dict[str, int]:
    """item_id -> rows of one run (its ``.items.json``)."""
    return dict(storage.read_json(run.items_key)["items"])


# --------------------------------------------------------------------------------------------------
# compaction
# --------------------------------------------------------------------------------------------------

@dataclass
class CompactionReport:
    generation: int = 0
    items_compacted: int = 0
    delta_rows: int = 0
    runs_written: list[str] = field(default_factory=list)
    runs_replaced: list[str] = field(default_factory=list)
    rows_written: int = 0
    rows_read_from_runs: int = 0
    merges: int = 0
    rewrites: int = 0
    tombstones_added: int = 0
    tombstones_dropped: int = 0
    files_deleted: int = 0
    partitions: list[tuple[str, int]] = field(default_factory=list)
    seconds: float = 0.0


def _tier(rows: int, settings: CompactionSettings) -> int:
    if rows < settings.base_rows:
        return 0
    return 1 + int(math.floor(math.log(rows / settings.base_rows, settings.fanout) + 1e-9))


def _dead_items(run: Run, tombstones: dict[str, dict[str, int]]) -> list[str]:
    return [i for i, t in tombstones.get(run.collection, {}).items() if t > run.gen]


def _read_runs(storage: Storage, runs: list[Run], tombstones: dict[str, dict[str, int]]) -> pa.Table:
    """The live rows of some runs (tombstoned rows dropped)."""
    tables = []
    for run in runs:
        try:
            table = pq.read_table(storage.path(run.key), filesystem=storage.fs, schema=INDEX_SCHEMA)
        except (OSError, pa.ArrowException) as exc:
            raise StorageError(f"cannot read the run {storage.uri(run.key)}: {exc}") from exc
        dead = _dead_items(run, tombstones)
        if dead:
            table = table.filter(pc.invert(pc.is_in(table.column("item_id"), value_set=pa.array(dead, pa.string()))))
        tables.append(table.replace_schema_metadata(None))
    return pa.concat_tables(tables) if tables else INDEX_SCHEMA.empty_table()


def _existing(storage: Storage, keys: list[str]) -> list[str]:
    if not keys:
        return []
    try:
        infos = storage.fs.get_file_info([storage.path(k) for k in keys])
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"cannot stat the per-item files of the combined index: {exc}") from exc
    return [k for k, info in zip(keys, infos) if info.type == pafs.FileType.File]


def _read_files(storage: Storage, keys: list[str]) -> pa.Table:
    try:
        dataset = pads.dataset([storage.path(k) for k in keys], schema=INDEX_SCHEMA, format="parquet", filesystem=storage.fs)
        return dataset.to_table().replace_schema_metadata(None)
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"cannot read per-item files of the combined index: {exc}") from exc


def _list_run_files(storage: Storage) -> list[FileEntry]:
    """Every run file under ``_lsm/runs/`` (``Storage.list_files`` hides the whole ``_lsm`` folder,
    as it hides every ``_`` or ``.`` name); temporaries (``.name.*.tmp``) are skipped."""
    selector = pafs.FileSelector(storage.path(RUNS_DIR), recursive=True, allow_not_found=True)
    try:
        infos = storage.fs.get_file_info(selector)
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"cannot list the runs under {storage.uri(RUNS_DIR)}: {exc}") from exc
    prefix = storage.path(RUNS_DIR).rstrip("/") + "/"
    out = []
    for info in infos:
        if info.type != pafs.FileType.File or not info.path.endswith(".parquet") or not info.path.startswith(prefix):
            continue
        relative = info.path[len(prefix):]
        if any(part.startswith(".") for part in relative.split("/")):
            continue
        mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
        out.append(FileEntry(key=f"{RUNS_DIR}/{relative}", size=int(info.size or 0), mtime=mtime))
    return out


def compact(
    storage: Storage | str | None = None,
    collections: Iterable[str] | None = None,
    *,
    full: bool = False,
    settings: CompactionSettings | None = None,
) -> CompactionReport:
    """Fold the pending per-item files into sorted runs and merge runs where a tier is full.

    ``collections`` limits the work to those collections; ``full`` merges every run of the touched
    collections' partitions into as few runs as ``seal_rows`` allows (memory proportional to a
    partition; drops every tombstone). The first call on a base enables the compacted tier
    (:func:`enable`) and compacts the whole per-item layout.
    """
    storage = storage if isinstance(storage, Storage) else Storage(storage)
    started = time.time()
    report = CompactionReport()
    with _file_lock(storage, "compact"):
        manifest = load_manifest(storage) or enable(storage, settings)
        settings = settings or CompactionSettings.from_dict(manifest.settings)
        wanted = None if collections is None else {validate_id(c, "collection") for c in collections}
        gen = manifest.generation + 1
        report.generation = gen
        snapshot = {
            (c, i): dict(entry) for c, items in manifest.pending.items() if wanted is None or c in wanted
            for i, entry in items.items()
        }
        tombstones = copy.deepcopy(manifest.tombstones)
        for (c, i), entry in snapshot.items():
            if entry.get("replaced") is not False:
                tombstones.setdefault(c, {})[i] = max(gen, tombstones.get(c, {}).get(i, 0))
                report.tombstones_added += 1
        report.items_compacted = len(snapshot)

        runs = list(manifest.runs)
        new_runs: list[Run] = []
        obsolete: list[Run] = []

        # 1. pending per-item files -> new runs, partition by partition
        touched: set[tuple[str, int]] = set()
        by_collection: dict[str, list[str]] = {}
        for c, i in sorted(snapshot):
            by_collection.setdefault(c, []).append(i)
        for collection, item_ids in by_collection.items():
            keys = _existing(storage, [combined_key(collection, i) for i in item_ids])
            buffers: dict[int, list[pa.Table]] = {}
            buffered: dict[int, int] = {}

            def flush(year: int) -> None:
                table = pa.concat_tables(buffers.pop(year))
                buffered.pop(year)
                run = write_run(storage, table, collection, year, gen, settings, started)
                new_runs.append(run)
                touched.add((collection, year))
                report.rows_written += run.rows

            batch: list[str] = []
            for n, key in enumerate(keys):
                batch.append(key)
                if len(batch) < 256 and n < len(keys) - 1:
                    continue
                table = _read_files(storage, batch)
                batch = []
                report.delta_rows += table.num_rows
                years = years_of(table)
                for year in np.unique(years):
                    part = table.filter(pa.array(years == year)) if len(np.unique(years)) > 1 else table
                    buffers.setdefault(int(year), []).append(part)
                    buffered[int(year)] = buffered.get(int(year), 0) + part.num_rows
                    if buffered[int(year)] >= settings.read_batch_rows:
                        flush(int(year))
            for year in sorted(buffers):
                flush(year)
        if full:
            touched |= {(r.collection, r.year) for r in runs if wanted is None or r.collection in wanted}
        # removed items may live in partitions no new run lands in: their dead fraction is checked below

        # 2. merges in the touched partitions
        def merge(group: list[Run], collection: str, year: int) -> list[Run]:
            table = _read_runs(storage, group, tombstones)
            report.rows_read_from_runs += sum(r.rows for r in group)
            out: list[Run] = []
            if table.num_rows:
                table = sort_run(table)
                # a merge larger than seal_rows is cut into several sealed runs along the curve
                pieces = max(1, math.ceil(table.num_rows / max(settings.seal_rows, 1))) if full else 1
                step = math.ceil(table.num_rows / pieces)
                for start in range(0, table.num_rows, step):
                    run = write_run(storage, table.slice(start, step), collection, year, gen, settings, started)
                    out.append(run)
                    report.rows_written += run.rows
            obsolete.extend(group)
            return out

        for collection, year in sorted(touched):
            current = [r for r in runs + new_runs if r.collection == collection and r.year == year and r not in obsolete]
            if full:
                if len(current) > 1 or any(_dead_items(r, tombstones) for r in current):
                    new_runs.extend(merge(current, collection, year))
                    report.merges += 1
                continue
            while True:
                current = [r for r in runs + new_runs if r.collection == collection and r.year == year and r not in obsolete]
                tiers: dict[int, list[Run]] = {}
                for r in current:
                    if r.rows < settings.seal_rows:
                        tiers.setdefault(_tier(r.rows, settings), []).append(r)
                full_tiers = [t for t, group in tiers.items() if len(group) >= settings.fanout]
                if not full_tiers:
                    break
                tier = min(full_tiers)
                new_runs.extend(merge(sorted(tiers[tier], key=lambda r: r.gen), collection, year))
                report.merges += 1
            report.partitions.append((collection, year))
        if full:
            report.partitions = sorted(touched)

        # 3. tombstones: rewrite runs that are mostly dead, drop tombstones no older run needs
        live = [r for r in runs + new_runs if r not in obsolete]
        membership: dict[str, dict[str, int]] = {}

        def items_of(run: Run) -> dict[str, int]:
            if run.key not in membership:
                membership[run.key] = read_run_items(storage, run)
            return membership[run.key]

        for collection, tombs in tombstones.items():
            if not tombs:
                continue
            newest = max(tombs.values())
            for run in [r for r in live if r.collection == collection and r.gen < newest]:
                dead = [i for i in _dead_items(run, tombstones) if i in items_of(run)]
                dead_rows = sum(items_of(run)[i] for i in dead)
                if dead_rows and dead_rows >= settings.dead_fraction * run.rows:
                    new_runs.extend(merge([run], collection, run.year))
                    report.rewrites += 1
        live = [r for r in runs + new_runs if r not in obsolete]
        dropped: dict[str, dict[str, int]] = {}
        for collection, tombs in tombstones.items():
            older = [r for r in live if r.collection == collection]
            for item_id, tomb in list(tombs.items()):
                if not any(r.gen < tomb and item_id in items_of(r) for r in older):
                    dropped.setdefault(collection, {})[item_id] = tomb
        report.tombstones_dropped = sum(len(v) for v in dropped.values())

        # 4. commit: one atomic manifest write
        report.runs_written = [r.key for r in new_runs if r not in obsolete]
        report.runs_replaced = [r.key for r in obsolete if r in runs]
        orphans = [r for r in obsolete if r not in runs]  # written and merged again in this compaction
        now = time.time()
        with _editing(storage) as current_manifest:
            if current_manifest is None:
                raise StorageError(f"{storage.uri(MANIFEST_KEY)} disappeared during compaction")
            obsolete_keys = {r.key for r in obsolete}
            current_manifest.runs = [r for r in current_manifest.runs if r.key not in obsolete_keys]
            current_manifest.runs += [r for r in new_runs if r.key not in obsolete_keys]
            for (c, i), entry in snapshot.items():
                now_entry = current_manifest.pending.get(c, {}).get(i)
                if now_entry is not None and now_entry.get("seq") == entry.get("seq"):
                    del current_manifest.pending[c][i]
                    if not current_manifest.pending[c]:
                        del current_manifest.pending[c]
            # only compactions (one at a time) change tombstones: ours are the current ones
            current_manifest.tombstones = {
                c: kept for c, tombs in tombstones.items()
                if (kept := {i: t for i, t in tombs.items() if dropped.get(c, {}).get(i) != t})
            }
            current_manifest.generation = gen
            current_manifest.settings = asdict(settings)
            current_manifest.garbage += [{"key": r.key, "since": now} for r in obsolete if r in runs]
            expired = [g for g in current_manifest.garbage if now - g["since"] >= settings.grace_seconds]
            current_manifest.garbage = [g for g in current_manifest.garbage if now - g["since"] < settings.grace_seconds]
        # 5. delete what no manifest lists any more (after the commit), and files of crashed compactions
        listed = {r.key for r in current_manifest.runs} | {g["key"] for g in current_manifest.garbage}
        leftovers = [
            e.key for e in _list_run_files(storage)
            if e.key not in listed and now - e.mtime >= max(settings.grace_seconds, 0.0) and e.key not in report.runs_written
        ]
        for key in [g["key"] for g in expired] + [r.key for r in orphans] + leftovers:
            for k in (key, key[: -len(".parquet")] + ".items.json"):
                report.files_deleted += int(storage.delete(k))
    report.seconds = time.time() - started
    return report


def refresh(storage: Storage | str | None = None) -> list[tuple[str, str]]:
    """Repair: mark pending every item whose per-item file changed or disappeared behind the
    manifest's back (written without ``CombinedIndex``). A listing of the per-item layout plus the
    runs' ``.items.json``: O(items). Returns the items marked."""
    storage = storage if isinstance(storage, Storage) else Storage(storage)
    manifest = load_manifest(storage)
    if manifest is None:
        return []
    entries = CombinedIndex(storage).entries()
    newest: dict[tuple[str, str], Run] = {}
    for run in manifest.runs:
        for item_id in read_run_items(storage, run):
            key = (run.collection, item_id)
            if manifest.tombstones.get(run.collection, {}).get(item_id, 0) > run.gen:
                continue
            if key not in newest or run.gen > newest[key].gen:
                newest[key] = run
    pending = manifest.pending_items()
    margin = 0.0 if storage.is_local else 1.0  # S3 LastModified is truncated to the second
    stale = []
    for key, entry in entries.items():
        if key in pending:
            continue
        run = newest.get(key)
        if run is None or entry.mtime >= run.source_time - margin:
            stale.append(key)
    stale += [key for key in newest if key not in entries and key not in pending]
    stale = sorted(set(stale))
    if stale:
        with _editing(storage) as current:
            if current is not None:
                current.mark_pending(stale, {k: k in newest for k in stale})
    return stale


def status(storage: Storage | str | None = None) -> dict[str, Any]:
    """A summary of the compacted tier (for logs and asset metadata)."""
    storage = storage if isinstance(storage, Storage) else Storage(storage)
    manifest = load_manifest(storage)
    if manifest is None:
        return {"enabled": False}
    return {
        "enabled": True, "generation": manifest.generation, "runs": len(manifest.runs),
        "run_rows": sum(r.rows for r in manifest.runs), "run_bytes": sum(r.bytes for r in manifest.runs),
        "pending_items": manifest.pending_count(),
        "tombstones": sum(len(v) for v in manifest.tombstones.values()),
        "partitions": len({(r.collection, r.year) for r in manifest.runs}),
    }


__all__ = [
    "CompactionReport", "CompactionSettings", "DeltaLog", "MANIFEST_KEY", "Manifest", "Run", "compact", "enable",
    "hilbert_index", "load_manifest", "refresh", "register_items", "save_manifest", "sort_run", "spatial_key", "status",
]
