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

import copy
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from stacchip_assets.core.ids import validate_id
from stacchip_assets.errors import StorageError
from stacchip_assets.index.combined import CombinedIndex, combined_key
from stacchip_assets.index.lsm_manifest import (  # noqa: F401  (re-exported: public names of the tier)
    FORMAT,
    FORMAT_VERSION,
    LSM_DIR,
    MANIFEST_KEY,
    RUNS_DIR,
    CompactionSettings,
    DeltaLog,
    Manifest,
    Run,
    _editing,
    _file_lock,
    load_manifest,
    manifest_exists,
    save_manifest,
)
from stacchip_assets.index.lsm_runs import (  # noqa: F401  (re-exported)
    DICTIONARY_COLUMNS,
    STATS_COLUMNS,
    _dead_items,
    _existing,
    _list_run_files,
    _read_files,
    _read_runs,
    hilbert_index,
    read_run_items,
    sort_run,
    spatial_key,
    write_run,
    years_of,
)
from stacchip_assets.io.storage import Storage


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


@dataclass
class _Pass:
    """The working state of one compaction: what it took from the manifest and what it wrote."""

    storage: Storage
    settings: CompactionSettings
    gen: int
    started: float
    full: bool
    wanted: set[str] | None
    #: (collection, item_id) -> the pending entry this compaction folds (its seq decides the commit)
    snapshot: dict[tuple[str, str], dict[str, Any]]
    tombstones: dict[str, dict[str, int]]
    runs: list[Run]
    report: CompactionReport
    new_runs: list[Run] = field(default_factory=list)
    obsolete: list[Run] = field(default_factory=list)
    membership: dict[str, dict[str, int]] = field(default_factory=dict)

    def live(self) -> list[Run]:
        return [r for r in self.runs + self.new_runs if r not in self.obsolete]

    def partition(self, collection: str, year: int) -> list[Run]:
        return [r for r in self.live() if r.collection == collection and r.year == year]

    def items_of(self, run: Run) -> dict[str, int]:
        """item_id -> rows of a run (its ``.items.json``, read once per compaction)."""
        if run.key not in self.membership:
            self.membership[run.key] = read_run_items(self.storage, run)
        return self.membership[run.key]


def _plan(storage: Storage, manifest: Manifest, collections: Iterable[str] | None, full: bool,
          settings: CompactionSettings, started: float) -> _Pass:
    """Snapshot the pending items (of `collections`) and the tombstones their compaction adds."""
    wanted = None if collections is None else {validate_id(c, "collection") for c in collections}
    gen = manifest.generation + 1
    report = CompactionReport(generation=gen)
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
    return _Pass(storage=storage, settings=settings, gen=gen, started=started, full=full, wanted=wanted,
                 snapshot=snapshot, tombstones=tombstones, runs=list(manifest.runs), report=report)


def _fold_collection(job: _Pass, collection: str, item_ids: list[str]) -> set[tuple[str, int]]:
    """Step 1 for one collection: its pending per-item files, read 256 at a time, buffered per year
    and written as new runs of at most about ``read_batch_rows`` rows. Returns the partitions touched."""
    keys = _existing(job.storage, [combined_key(collection, i) for i in item_ids])
    buffers: dict[int, list[pa.Table]] = {}
    buffered: dict[int, int] = {}
    touched: set[tuple[str, int]] = set()

    def flush(year: int) -> None:
        table = pa.concat_tables(buffers.pop(year))
        buffered.pop(year)
        run = write_run(job.storage, table, collection, year, job.gen, job.settings, job.started)
        job.new_runs.append(run)
        touched.add((collection, year))
        job.report.rows_written += run.rows

    for start in range(0, len(keys), 256):
        table = _read_files(job.storage, keys[start:start + 256])
        job.report.delta_rows += table.num_rows
        years = years_of(table)
        distinct = np.unique(years)
        for year in (int(y) for y in distinct):
            part = table.filter(pa.array(years == year)) if len(distinct) > 1 else table
            buffers.setdefault(year, []).append(part)
            buffered[year] = buffered.get(year, 0) + part.num_rows
            if buffered[year] >= job.settings.read_batch_rows:
                flush(year)
    for year in sorted(buffers):
        flush(year)
    return touched


def _fold_pending(job: _Pass) -> set[tuple[str, int]]:
    """Step 1: pending per-item files -> new runs, collection by collection; the partitions touched
    (with ``full``, every partition of the wanted collections)."""
    by_collection: dict[str, list[str]] = {}
    for c, i in sorted(job.snapshot):
        by_collection.setdefault(c, []).append(i)
    touched: set[tuple[str, int]] = set()
    for collection, item_ids in by_collection.items():
        touched |= _fold_collection(job, collection, item_ids)
    if job.full:
        touched |= {(r.collection, r.year) for r in job.runs if job.wanted is None or r.collection in job.wanted}
    # removed items may live in partitions no new run lands in: their dead fraction is checked later
    return touched


def _merge(job: _Pass, group: list[Run], collection: str, year: int) -> None:
    """Rewrite `group` as new runs of its live rows (tombstoned rows dropped); `group` becomes obsolete.
    With ``full``, a merge larger than ``seal_rows`` is cut into several sealed runs along the curve."""
    table = _read_runs(job.storage, group, job.tombstones)
    job.report.rows_read_from_runs += sum(r.rows for r in group)
    if table.num_rows:
        table = sort_run(table)
        pieces = max(1, math.ceil(table.num_rows / max(job.settings.seal_rows, 1))) if job.full else 1
        step = math.ceil(table.num_rows / pieces)
        for start in range(0, table.num_rows, step):
            run = write_run(job.storage, table.slice(start, step), collection, year, job.gen, job.settings, job.started)
            job.new_runs.append(run)
            job.report.rows_written += run.rows
    job.obsolete.extend(group)


def _merge_tiers(job: _Pass, collection: str, year: int) -> None:
    """Size-tiered merging of one partition: merge the lowest full tier (``fanout`` runs below
    ``seal_rows``) until no tier is full."""
    while True:
        tiers: dict[int, list[Run]] = {}
        for r in job.partition(collection, year):
            if r.rows < job.settings.seal_rows:
                tiers.setdefault(_tier(r.rows, job.settings), []).append(r)
        full_tiers = [t for t, group in tiers.items() if len(group) >= job.settings.fanout]
        if not full_tiers:
            return
        _merge(job, sorted(tiers[min(full_tiers)], key=lambda r: r.gen), collection, year)
        job.report.merges += 1


def _merge_partitions(job: _Pass, touched: set[tuple[str, int]]) -> None:
    """Step 2: merges in the touched partitions (``full``: each partition into as few runs as sealing allows)."""
    for collection, year in sorted(touched):
        if job.full:
            current = job.partition(collection, year)
            if len(current) > 1 or any(_dead_items(r, job.tombstones) for r in current):
                _merge(job, current, collection, year)
                job.report.merges += 1
            continue
        _merge_tiers(job, collection, year)
        job.report.partitions.append((collection, year))
    if job.full:
        job.report.partitions = sorted(touched)


def _apply_tombstones(job: _Pass) -> dict[str, dict[str, int]]:
    """Step 3: rewrite the runs that are mostly dead; returns the tombstones no older run needs."""
    for collection, tombs in job.tombstones.items():
        if not tombs:
            continue
        newest = max(tombs.values())
        for run in [r for r in job.live() if r.collection == collection and r.gen < newest]:
            dead = [i for i in _dead_items(run, job.tombstones) if i in job.items_of(run)]
            dead_rows = sum(job.items_of(run)[i] for i in dead)
            if dead_rows and dead_rows >= job.settings.dead_fraction * run.rows:
                _merge(job, [run], collection, run.year)
                job.report.rewrites += 1
    live = job.live()
    dropped: dict[str, dict[str, int]] = {}
    for collection, tombs in job.tombstones.items():
        older = [r for r in live if r.collection == collection]
        for item_id, tomb in list(tombs.items()):
            if not any(r.gen < tomb and item_id in job.items_of(r) for r in older):
                dropped.setdefault(collection, {})[item_id] = tomb
    job.report.tombstones_dropped = sum(len(v) for v in dropped.values())
    return dropped


def _commit(job: _Pass, dropped: dict[str, dict[str, int]], now: float) -> tuple[Manifest, list[dict[str, Any]]]:
    """Step 4: one atomic manifest write (runs swapped, folded pending entries cleared unless updated
    meanwhile, tombstones, garbage). Returns the manifest written and the garbage now expired."""
    job.report.runs_written = [r.key for r in job.new_runs if r not in job.obsolete]
    job.report.runs_replaced = [r.key for r in job.obsolete if r in job.runs]
    obsolete_keys = {r.key for r in job.obsolete}
    with _editing(job.storage) as manifest:
        if manifest is None:
            raise StorageError(f"{job.storage.uri(MANIFEST_KEY)} disappeared during compaction")
        manifest.runs = [r for r in manifest.runs if r.key not in obsolete_keys]
        manifest.runs += [r for r in job.new_runs if r.key not in obsolete_keys]
        for (c, i), entry in job.snapshot.items():
            now_entry = manifest.pending.get(c, {}).get(i)
            if now_entry is not None and now_entry.get("seq") == entry.get("seq"):
                del manifest.pending[c][i]
                if not manifest.pending[c]:
                    del manifest.pending[c]
        # only compactions (one at a time) change tombstones: ours are the current ones
        manifest.tombstones = {
            c: kept for c, tombs in job.tombstones.items()
            if (kept := {i: t for i, t in tombs.items() if dropped.get(c, {}).get(i) != t})
        }
        manifest.generation = job.gen
        manifest.settings = asdict(job.settings)
        manifest.garbage += [{"key": r.key, "since": now} for r in job.obsolete if r in job.runs]
        grace = job.settings.grace_seconds
        expired = [g for g in manifest.garbage if now - g["since"] >= grace]
        manifest.garbage = [g for g in manifest.garbage if now - g["since"] < grace]
    return manifest, expired


def _delete_unlisted(job: _Pass, manifest: Manifest, expired: list[dict[str, Any]], now: float) -> None:
    """Step 5 (after the commit): delete expired garbage, runs written and merged again in this
    compaction, and run files no manifest lists (left by crashed compactions) older than the grace."""
    orphans = [r.key for r in job.obsolete if r not in job.runs]
    listed = {r.key for r in manifest.runs} | {g["key"] for g in manifest.garbage}
    leftovers = [
        e.key for e in _list_run_files(job.storage)
        if e.key not in listed and now - e.mtime >= max(job.settings.grace_seconds, 0.0)
        and e.key not in job.report.runs_written
    ]
    for key in [g["key"] for g in expired] + orphans + leftovers:
        for k in (key, key[: -len(".parquet")] + ".items.json"):
            job.report.files_deleted += int(job.storage.delete(k))


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
    with _file_lock(storage, "compact"):
        manifest = load_manifest(storage) or enable(storage, settings)
        settings = settings or CompactionSettings.from_dict(manifest.settings)
        job = _plan(storage, manifest, collections, full, settings, started)
        _merge_partitions(job, _fold_pending(job))
        dropped = _apply_tombstones(job)
        now = time.time()
        written, expired = _commit(job, dropped, now)
        _delete_unlisted(job, written, expired, now)
    job.report.seconds = time.time() - started
    return job.report


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
        compacted = newest.get(key)
        if compacted is None or entry.mtime >= compacted.source_time - margin:
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
