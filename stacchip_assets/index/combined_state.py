"""The combined index's bookkeeping between two updates: totals, journal cursor, data version.

`combined_index` (the Dagster asset) records a `state` dict in the metadata of each materialization
and hands it back to the next update. This module is what an update does to that state, with no
Dagster in it: the asset only reads the event log (which items changed after `event_cursor`) and
turns the result into metadata.

State keys: ``event_cursor`` (last chip-index event storage id seen), ``journal`` (id of the update
whose journal is accounted for, see `index.combined`), ``items``/``rows`` and ``by_collection``
(exact totals), ``version`` (a rolling hash over the updates: the asset's data version).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from stacchip_assets.index import compaction
from stacchip_assets.index.combined import CombinedIndex, CombineReport
from stacchip_assets.io.storage import Storage

__all__ = [
    "UpdateOutcome", "apply_totals", "compact_pending", "initial_state", "rebuild", "recount_totals",
    "roll_version", "update_incremental",
]


@dataclass
class UpdateOutcome:
    """What one update did: the combine report, the items it changed and their chip-index data versions."""

    report: CombineReport
    changes: list[tuple[str, str]]
    item_versions: dict[str, str] = field(default_factory=dict)


def initial_state(previous: dict[str, Any] | None, full_rebuild: bool) -> dict[str, Any]:
    """The state an update starts from: the previous one, or empty for the first update or a rebuild."""
    state: dict[str, Any] = {"event_cursor": None, "items": 0, "rows": 0, "by_collection": {}, "version": ""}
    if previous is not None and not full_rebuild:
        state.update(previous)
    return state


def _sum_totals(state: dict[str, Any]) -> None:
    state["items"] = sum(e["items"] for e in state["by_collection"].values())
    state["rows"] = sum(e["rows"] for e in state["by_collection"].values())


def apply_totals(state: dict[str, Any], report: CombineReport) -> None:
    """Add an update's changes to the per-collection totals (exact: the report knows each item's before)."""
    by_collection: dict[str, dict[str, int]] = state.setdefault("by_collection", {})
    for (collection, item_id), rows in report.rows_by_item.items():
        entry = by_collection.setdefault(collection, {"items": 0, "rows": 0})
        existed = (collection, item_id) in report.existed_before
        now = (collection, item_id) in report.upserted
        entry["rows"] += rows - report.previous_rows_by_item.get((collection, item_id), 0)
        entry["items"] += int(now) - int(existed)
    _sum_totals(state)


def recount_totals(state: dict[str, Any], combined: CombinedIndex, store: Storage) -> None:
    """Totals recounted from the combined files (their Parquet footers), e.g. after a full rebuild."""
    state["by_collection"] = {}
    for (collection, _item), entry in combined.entries().items():
        totals = state["by_collection"].setdefault(collection, {"items": 0, "rows": 0})
        totals["items"] += 1
        totals["rows"] += store.parquet_num_rows(entry.key)
    _sum_totals(state)


def update_incremental(combined: CombinedIndex, state: dict[str, Any], items: list[tuple[str, str]],
                       item_versions: dict[str, str], last_cursor: int | None, journal: str) -> UpdateOutcome:
    """Combine the items that changed after the state's cursor; move the cursor and the totals."""
    report = combined.update(items, journal=journal, committed=state.get("journal"))
    apply_totals(state, report)
    state["event_cursor"] = last_cursor
    if items:
        state["journal"] = journal
    return UpdateOutcome(report, list(items), dict(item_versions))


def rebuild(combined: CombinedIndex, store: Storage, state: dict[str, Any], last_cursor: int | None,
            journal: str) -> UpdateOutcome:
    """Re-derive the combined index from the files (two folder listings); totals recounted from them."""
    report = combined.sync(journal=journal, committed=state.get("journal"))
    # totals are recounted from the files: whatever journal is there is accounted for
    state.update({"event_cursor": last_cursor, "journal": combined.journal_id()})
    recount_totals(state, combined, store)
    return UpdateOutcome(report, sorted(report.upserted + report.removed))


def roll_version(state: dict[str, Any], outcome: UpdateOutcome, store: Storage) -> str:
    """The data version after an update: a rolling hash over the updates (O(changes)), unchanged
    when nothing changed. An item's part is its chip-index data version, else its index file size."""
    digest = hashlib.sha256(str(state.get("version", "")).encode())
    for collection, item_id in outcome.changes:
        version = outcome.item_versions.get(f"{collection}/{item_id}")
        if not version:
            info = store.info(store.index_key(collection, item_id))
            version = f"size:{info.size if info else -1}"
        rows = outcome.report.rows_by_item.get((collection, item_id), 0)
        digest.update(f"{collection}/{item_id}:{rows}:{version}".encode())
    if outcome.changes or not state.get("version"):
        state["version"] = digest.hexdigest()
    return state["version"]


def compact_pending(store: Storage, mode: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """After an update: fold the items it registered as pending into the compacted tier.

    `mode`: "auto" compacts when the tier is enabled (its manifest exists), "enable" also enables it,
    "off" leaves it alone. Work is proportional to the pending items (plus the merges of the
    partitions they land in, see `compaction.compact`). Returns (report, the tier's status); raises
    StacchipError (the per-item layout is current; the next update compacts what is pending)."""
    report: dict[str, Any] = {"mode": mode, "ran": False}
    manifest = compaction.load_manifest(store) if mode != "off" else None
    enabled = manifest is not None
    if mode == "off":
        report["reason"] = "compaction off for this run"
    elif not enabled and mode == "auto":
        report["reason"] = ("the compacted tier is not enabled for this base (run once with "
                            "`compaction: enable`, or `stacchip_assets.index.compaction.compact(base)`)")
    elif manifest is not None and manifest.pending_count() == 0:
        report["reason"] = "no pending items"
    else:
        result = compaction.compact(store)
        report.update({
            "ran": True, "generation": result.generation, "items_compacted": result.items_compacted,
            "delta_rows": result.delta_rows, "runs_written": len(result.runs_written),
            "runs_replaced": len(result.runs_replaced), "rows_written": result.rows_written,
            "rows_read_from_runs": result.rows_read_from_runs, "merges": result.merges,
            "rewrites": result.rewrites, "tombstones_added": result.tombstones_added,
            "tombstones_dropped": result.tombstones_dropped, "files_deleted": result.files_deleted,
            "partitions": [f"{c}/{y}" for c, y in result.partitions], "seconds": round(result.seconds, 3),
        })
    return report, compaction.status(store)
