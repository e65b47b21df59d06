"""The combined chip index: every per-item index in one GeoParquet dataset, updated incrementally.

Layout (one file per item, plain folders, no hive ``key=value`` segments)::

    {base}/combined/{collection}/{item_id}.parquet

Each file is a byte copy of ``{base}/index/{collection}/{item_id}/index_{item_id}.parquet`` taken when
the combined index was last brought up to date, so the combined index is a consistent snapshot that
changes only when it is updated (not while an item is being re-indexed). Adding or replacing an
item's rows writes exactly one file (atomically) and reads nothing else: the cost of an update does
not grow with the number of items already combined. Removing an item deletes one file.

The folder is readable as one table as it is: ``geopandas.read_parquet(folder)``,
``pyarrow.dataset.dataset(folder)``, DuckDB ``read_parquet('folder/*/*.parquet')``, and
:func:`read_combined` here. Folders are not hive-partitioned on purpose: the files already carry a
``collection`` column, and ``collection=...`` folders make pyarrow's ParquetDataset (which geopandas
uses) fail with a type clash between the two. A collection id containing ``=`` is stored as ``%3D``.

At scale (100k items, 10M chips) a query should not open every item's footer: the optional compacted
tier of :mod:`stacchip_assets.index.compaction` (sorted runs under ``combined/_lsm/``, hidden from the
plain-folder readers above) serves :mod:`stacchip_assets.index.query`. Once it is enabled, the updates here
register the items they touch in its manifest; without it they do exactly what they did before.

Which items changed is decided by the caller (the Dagster asset reads it from the event log, O(changes));
:func:`plan_sync` finds them without Dagster by comparing modification times of the two folders
(a listing, no file reads).

Totals kept by a caller (rows and items per collection) are updated by the differences an update
reports. An update that dies half-way (kill -9, a crash after its copies) has copied files whose
rows nobody counted; the next update would then take those files as "already there" and under-count.
``update(..., journal=run_id, committed=last_recorded_run_id)`` prevents that: before copying, the
update writes ``combined/_journal.json`` with what each item had *before* (existed, rows); a later
update that finds a journal other than the last recorded one takes its items' "before" from it, not
from the files. One small file, proportional to the changes since the last recorded update.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.dataset as pads

from stacchip_assets.errors import StorageError
from stacchip_assets.index.combined_layout import (  # noqa: F401  (re-exported: their old home)
    JOURNAL_KEY,
    CombineReport,
    collection_folder,
    collection_of_folder,
    combined_key,
)
from stacchip_assets.index.lsm_manifest import DeltaLog
from stacchip_assets.io.geoparquet import INDEX_SCHEMA, empty_index_table, with_geo_metadata
from stacchip_assets.io.storage import COMBINED_DIR, FileEntry, Storage


class CombinedIndex:
    """The combined index of a storage base."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._registering = False

    @contextlib.contextmanager
    def _registered(self, items: list[tuple[str, str]]) -> Iterator[list[CombineReport]]:
        """Once the compacted tier is enabled (``combined/_lsm/manifest.json`` exists, see
        :mod:`stacchip_assets.index.compaction`), record the items an update touches as pending there:
        before the copies and after them. Without a manifest this does nothing (one stat)."""
        reports: list[CombineReport] = []
        if self._registering or not items:
            yield reports
            return
        log = DeltaLog.if_enabled(self.storage)
        if log is None:
            yield reports
            return
        log.begin(items)
        self._registering = True
        try:
            yield reports
        finally:
            self._registering = False
            log.commit(items, reports)

    @property
    def uri(self) -> str:
        """Where the combined dataset is (a folder or an s3:// prefix)."""
        return self.storage.uri(COMBINED_DIR)

    def item_uri(self, collection: str, item_id: str) -> str:
        return self.storage.uri(combined_key(collection, item_id))

    # -- updates ---------------------------------------------------------------------------------
    def _before(self, key: str, item: tuple[str, str], report: CombineReport) -> int:
        """Rows of an item's combined file before this update (0 if none), recorded in the report
        (already there when a journal supplied it)."""
        if item in report.previous_rows_by_item:
            return report.previous_rows_by_item[item]
        exists, rows = self._current(key)
        report.previous_rows_by_item[item] = rows
        if exists:
            report.existed_before.add(item)
        return rows

    def _current(self, key: str) -> tuple[bool, int]:
        """(exists, rows) of a combined file now (rows from its footer)."""
        exists = self.storage.exists(key)
        return exists, self.storage.parquet_num_rows(key) if exists else 0

    def upsert(self, collection: str, item_id: str, report: CombineReport | None = None) -> CombineReport:
        """Replace one item's rows with its current per-item index (delete them if it has none).

        Reads the footer of the item's previous combined file (its row count) and copies one file.
        """
        report = report if report is not None else CombineReport()
        src = Storage.index_key(collection, item_id)
        dst = combined_key(collection, item_id)
        with self._registered([(collection, item_id)]) as reports:
            reports.append(report)
            before = self._before(dst, (collection, item_id), report)
            if not self.storage.exists(src):
                if self.storage.delete(dst):
                    report.removed.append((collection, item_id))
                    report.rows_removed += before
                report.missing_sources.append((collection, item_id))
                report.rows_by_item[(collection, item_id)] = 0
                return report
            self.storage.copy(src, dst)
            after = self.storage.parquet_num_rows(dst)
            report.upserted.append((collection, item_id))
            report.rows_added += after
            report.rows_removed += before
            report.rows_by_item[(collection, item_id)] = after
        return report

    def remove(self, collection: str, item_id: str, report: CombineReport | None = None) -> CombineReport:
        """Remove one item's rows."""
        report = report if report is not None else CombineReport()
        dst = combined_key(collection, item_id)
        with self._registered([(collection, item_id)]) as reports:
            reports.append(report)
            before = self._before(dst, (collection, item_id), report)
            if self.storage.delete(dst):
                report.removed.append((collection, item_id))
                report.rows_removed += before
            report.rows_by_item[(collection, item_id)] = 0
        return report

    def _journal_baselines(self, keys: list[tuple[str, str]], journal: str, committed: str | None,
                           report: CombineReport) -> None:
        """Fill the report's "before" of each key, from an unrecorded update's journal where it has
        the item, else from the files; then write this update's journal (atomically) before any copy."""
        before: dict[str, list] = {}
        if self.storage.exists(JOURNAL_KEY):
            previous = self.storage.read_json(JOURNAL_KEY)
            if previous.get("id") != committed:  # an update (or an earlier attempt of this one) never recorded
                before = dict(previous.get("before", {}))
        for collection, item_id in keys:
            name = f"{collection}/{item_id}"
            if name not in before:
                before[name] = list(self._current(combined_key(collection, item_id)))
            existed, rows = before[name]
            report.previous_rows_by_item[(collection, item_id)] = int(rows)
            if existed:
                report.existed_before.add((collection, item_id))
        self.storage.write_json(JOURNAL_KEY, {"id": journal, "before": before})

    def journal_id(self) -> str | None:
        """The id of the update that wrote the current journal (None if there is none)."""
        return self.storage.read_json(JOURNAL_KEY).get("id") if self.storage.exists(JOURNAL_KEY) else None

    def update(self, items: Iterable[tuple[str, str]], *, remove: Iterable[tuple[str, str]] = (),
               journal: str | None = None, committed: str | None = None) -> CombineReport:
        """Bring the given items up to date (upsert each; items without a per-item index are removed)
        and remove the items of `remove` (whether or not they have a per-item index).

        With `journal` (an id of this update, e.g. the run id) and `committed` (the id of the last
        update whose report the caller recorded), what each item had before is journaled first, so a
        caller's totals stay exact after an update that died half-way (see the module docstring).
        """
        report = CombineReport()
        removals = list(dict.fromkeys(remove))
        removing = set(removals)
        keys = [k for k in dict.fromkeys(items) if k not in removing]  # de-duplicated, order kept
        if journal is not None and (keys or removals):
            self._journal_baselines(keys + removals, journal, committed, report)
        with self._registered(keys + removals) as reports:
            reports.append(report)
            for collection, item_id in keys:
                self.upsert(collection, item_id, report)
            for collection, item_id in removals:
                self.remove(collection, item_id, report)
        return report

    def plan_sync(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """(items whose per-item index is newer than their combined copy or not combined yet,
        items combined whose per-item index is gone) -- from two folder listings, no file reads."""
        sources = {(c, i): e for c, i, e in self.storage.indexed_items()}
        combined = self.entries()
        changed = [k for k, e in sources.items() if k not in combined or e.mtime > combined[k].mtime or e.size != combined[k].size]
        orphans = [k for k in combined if k not in sources]
        return sorted(changed), sorted(orphans)

    def sync(self, *, journal: str | None = None, committed: str | None = None) -> CombineReport:
        """Update every item whose per-item index changed and drop items whose index is gone
        (an item without a per-item index is removed by ``update``)."""
        changed, orphans = self.plan_sync()
        return self.update(changed + orphans, journal=journal, committed=committed)

    # -- reading ---------------------------------------------------------------------------------
    def entries(self) -> dict[tuple[str, str], FileEntry]:
        """(collection, item_id) -> FileEntry of every item file in the combined index."""
        out = {}
        for entry in self.storage.list_files(COMBINED_DIR, suffix=".parquet"):
            parts = entry.key.split("/")
            if len(parts) == 3:
                out[(collection_of_folder(parts[1]), parts[2][: -len(".parquet")])] = entry
        return out

    def items(self) -> set[tuple[str, str]]:
        return set(self.entries())

    def num_rows(self) -> int:
        """Total rows, from the Parquet footers."""
        return sum(self.storage.parquet_num_rows(e.key) for e in self.entries().values())

    def dataset(self) -> pads.Dataset:
        """The combined index as a pyarrow dataset (lazy; filter and project before reading)."""
        files = [self.storage.path(e.key) for e in self.entries().values()]
        try:
            return pads.dataset(files, schema=INDEX_SCHEMA, format="parquet", filesystem=self.storage.fs)
        except (OSError, pa.ArrowException) as exc:
            raise StorageError(f"cannot open the combined index {self.uri}: {exc}") from exc

    def read(self, columns: list[str] | None = None, filter: pads.Expression | None = None) -> pa.Table:  # noqa: A002
        """The whole combined index (or the given columns / rows) as one table with GeoParquet metadata."""
        if not self.entries():
            table = empty_index_table()
            return table.select(columns) if columns else table
        try:
            table = self.dataset().to_table(columns=columns, filter=filter)
        except (OSError, pa.ArrowException) as exc:
            raise StorageError(f"cannot read the combined index {self.uri}: {exc}") from exc
        return with_geo_metadata(table) if columns is None else table


def read_combined(base: str | Storage | None = None, columns: list[str] | None = None) -> pa.Table:
    """The combined index of a storage base (default: :func:`stacchip_assets.io.storage.default_base`)."""
    storage = base if isinstance(base, Storage) else Storage(base)
    return CombinedIndex(storage).read(columns=columns)
