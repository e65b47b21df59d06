"""The manifest of the compacted tier of the combined index: its runs, pending items and tombstones.

The state of :mod:`stacchip_assets.index.compaction` (whose module docstring describes the JSON and
the protocol), read and written atomically under a file lock; :class:`DeltaLog` is how
:class:`~stacchip_assets.index.combined.CombinedIndex` registers its updates in it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from stacchip_assets.errors import StorageError
from stacchip_assets.index.combined_layout import CombineReport
from stacchip_assets.io.storage import COMBINED_DIR, Storage

FORMAT = "stacchip-assets/combined-lsm"
FORMAT_VERSION = 1
LSM_DIR = f"{COMBINED_DIR}/_lsm"
MANIFEST_KEY = f"{LSM_DIR}/manifest.json"
RUNS_DIR = f"{LSM_DIR}/runs"


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
    def from_dict(cls, values: dict[str, Any] | None) -> CompactionSettings:
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
    def from_json(cls, data: dict[str, Any]) -> Manifest:
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


class DeltaLog:
    """How :class:`~stacchip_assets.index.combined.CombinedIndex` registers its updates (two manifest writes
    per update call: before and after the copies)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    @classmethod
    def if_enabled(cls, storage: Storage) -> DeltaLog | None:
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
