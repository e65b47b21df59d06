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
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

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
