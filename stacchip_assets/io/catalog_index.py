"""What a static catalog's item files said, kept between polls so a tick reads only changed files.

A sensor polls a static catalog every minute; a catalog of 10,000 items would otherwise be read and
parsed whole on every tick (19 s for 10k copies of a NAIP item). The source keeps, per item file, the
file's identity (mtime, ctime, size, inode) and the outcome of checking the item: its id, its
`collection` field and its ordering time, or why it was skipped. A poll stats each linked file and
reuses the outcome when the identity is unchanged; only new or changed files are read.

Rules that keep this correct:

- **Racy files are re-read.** A file whose mtime lies within `RACY_SECONDS` of the moment it was
  looked at may be rewritten within the clock's granularity without its identity changing, so its
  outcome is not reused (git's "racy clean" rule).
- **Times are checked against now at use**, not when cached: an outcome holds the item's time without
  the future check (see :func:`~stacchip_assets.io.source_guards.item_time`); a poll that finds a time
  after now + FUTURE_TOLERANCE re-reads that file to report it exactly as a fresh read would.
- **Skips are remembered and reported again**: a malformed item is reported on every poll, as when
  every file was read.
- Only local files are indexed (a URL has no cheap identity); the index lives in memory in the
  process that polls (the code server), per catalog path, bounded to `MAX_CATALOGS` catalogs.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from stacchip_assets.io.source_guards import (
    FUTURE_TOLERANCE,
    SourceReport,
    canonical,
    checked_item,
    read_item_file,
)

#: A file modified this recently (seconds) is re-read rather than trusted by its identity.
RACY_SECONDS = 2.0
#: Catalogs whose file index is kept (least recently polled dropped first).
MAX_CATALOGS = 16


@dataclass(frozen=True)
class FileOutcome:
    """What checking one item file gave: an item (id, collection field, time) or a skip (name, reason)."""

    item_id: str | None = None
    collection_id: str | None = None
    updated: str | None = None  # ordering time, canonical UTC, without the future check
    skipped: tuple[str, str] | None = None  # (name, reason)


Identity = tuple[int, int, int, int]


def file_identity(path: str) -> tuple[Identity, bool] | None:
    """(identity, racy) of a local file, or None if it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    racy = time.time() - st.st_mtime < RACY_SECONDS
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino), racy


class ItemFileIndex:
    """{(path, time property): (identity, outcome)} of one catalog's item files."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], tuple[Identity, FileOutcome]] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, path: str, prop: str) -> tuple[FileOutcome | None, Identity | None]:
        """(outcome if the file is unchanged since it was stored, the file's identity now)."""
        found = file_identity(path)
        if found is None:
            return None, None
        identity, racy = found
        with self._lock:
            entry = self._entries.get((path, prop))
        if entry is not None and entry[0] == identity and not racy:
            self.hits += 1
            return entry[1], identity
        self.misses += 1
        return None, None if racy else identity

    def put(self, path: str, prop: str, identity: Identity | None, outcome: FileOutcome) -> None:
        """Remember `outcome` for the file as it was (`identity` None: racy or unknown, not kept)."""
        if identity is None:
            return
        with self._lock:
            self._entries[(path, prop)] = (identity, outcome)

    def retain(self, paths: set[str]) -> None:
        """Forget files no longer linked (items removed from the catalog)."""
        with self._lock:
            for key in [k for k in self._entries if k[0] not in paths]:
                del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)


_INDEXES: OrderedDict[str, ItemFileIndex] = OrderedDict()
_INDEXES_LOCK = threading.Lock()


def index_for(catalog_path: str) -> ItemFileIndex:
    """The process's file index of the catalog at `catalog_path` (created on first use)."""
    key = os.path.abspath(catalog_path) if "://" not in catalog_path else catalog_path
    with _INDEXES_LOCK:
        index = _INDEXES.pop(key, None)
        index = ItemFileIndex() if index is None else index
        _INDEXES[key] = index
        while len(_INDEXES) > MAX_CATALOGS:
            _INDEXES.popitem(last=False)
        return index


def _local(href: str) -> str | None:
    if "://" not in href:
        return os.path.abspath(href)
    return os.path.abspath(href[len("file://"):]) if href.startswith("file://") else None


def _check(href: str, report: SourceReport, prop: str, now: dt.datetime | None, context: str) -> FileOutcome | None:
    """Read and check one item file (recording a problem in `report`); None if unreadable."""
    data = read_item_file(href, report, context)
    if data is None:
        return None
    before = report.skipped_count, len(report.skipped)
    checked = checked_item(data, href, report, prop=prop, now=now, context=context, href=href, consume=True)
    if checked is not None:
        item, updated = checked
        return FileOutcome(item_id=item.id, collection_id=item.collection_id, updated=updated)
    if report.skipped_count > before[0] and len(report.skipped) > before[1]:
        return FileOutcome(skipped=report.skipped[-1])
    return None  # skipped but not listed (the report is full): not remembered


def indexed_items(index: ItemFileIndex, hrefs: Iterable[str], report: SourceReport, *, prop: str = "updated",
                  now: dt.datetime | None = None, context: str = "") -> Iterator[tuple[str, FileOutcome]]:
    """(href, outcome) of each valid item of `hrefs`, reading only files `index` does not know as they
    are; skipped items are recorded in `report` (again, when remembered). When the walk is complete
    (``report.truncated`` unset), files no longer linked are forgotten."""
    horizon = canonical(now + FUTURE_TOLERANCE) if now is not None else None
    seen: set[str] = set()
    for href in hrefs:
        path = _local(href)
        outcome, identity = index.get(path, prop) if path is not None else (None, None)
        if outcome is None:
            outcome = _check(href, report, prop, None, context)
            if outcome is None:
                continue
            if path is not None:
                index.put(path, prop, identity, outcome)
        elif outcome.skipped is not None:
            report.skip(outcome.skipped[0], outcome.skipped[1], context)
        if path is not None:
            seen.add(path)
        if outcome.skipped is not None:
            continue
        if horizon is not None and outcome.updated is not None and outcome.updated > horizon:
            # in the future: a fresh read with `now` reports it as before (and it may have come by now)
            outcome = _check(href, report, prop, now, context)
            if outcome is None or outcome.skipped is not None:
                continue
        yield href, outcome
    if report.truncated is None:
        index.retain(seen)


__all__ = ["indexed_items", "FileOutcome", "ItemFileIndex", "MAX_CATALOGS", "RACY_SECONDS", "file_identity", "index_for"]
