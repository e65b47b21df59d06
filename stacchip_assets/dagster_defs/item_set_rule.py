"""The combined index's rule in Dagster terms (the rule itself is `stacchip_assets.index.set_rule`):

**the combined index = the chips of the items currently in the item sets, indexed with the
collection's current chip settings.**

- `rule_metadata`: what an update added, replaced and removed, and why, as combined_index metadata;
- `removal_observations`: a chip_index partition whose item left its set (superseded, withdrawn) or
  was otherwise removed from the combined index gets an observation with ``status: removed`` and the
  reason, so its page in the UI says why its chips are not in the combined index. The partition itself
  stays (deleting a dynamic partition would hide its history, and an item re-published under the same
  id comes back to the same partition);
- `combined_holds_item_sets`: the check that the item ids in the combined index equal the union of
  the item sets, failing with the differing ids.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetKey,
    AssetObservation,
    AssetRecordsFilter,
    MetadataValue,
    asset_check,
)

from stacchip_assets.dagster_defs.resources import StorageResource
from stacchip_assets.index.item_sets import SetChange, reconcile_item_set, settings_fingerprint, source_has
from stacchip_assets.index.set_rule import ADD, REMOVE, REPLACE, WAIT, RulePlan, holds
from stacchip_assets.io.storage import Storage

# the asset keys of dagster_defs.assets (which imports this module)
STAC_ITEMS_KEY, CHIP_INDEX_KEY, COMBINED_INDEX_KEY = AssetKey("stac_items"), AssetKey("chip_index"), AssetKey("combined_index")

#: Ids listed in metadata (counts are exact).
LISTED = 50
RULE = ("the combined index = the chips of the items currently in the item sets, indexed with the "
        "collection's current chip settings")


def item_set_version(summaries: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    """stac_items' data version: the items (id, updated) and the collection's chip settings, so that a
    settings change makes the collection's chip_index partitions stale in Dagster (data versions)."""
    payload = {"items": sorted((s["id"], s["updated"]) for s in summaries), "chip_settings": settings_fingerprint(settings)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def store_item_set(store: Storage, collection: str, items: list, *, search, settings: dict[str, Any], source,
                   listing: dict[str, Any]) -> tuple[SetChange, dict[str, Any]]:
    """What `stac_items` does with a full search: replace the collection's set, record why items left
    (superseded / withdrawn / deselected, see `index.item_sets.reconcile_item_set`); returns the
    change and its metadata."""
    summaries = {entry["id"]: entry for entry in listing.get("items", [])}
    change = reconcile_item_set(store, collection, items, params=search, settings=settings, listing=listing,
                                summaries=summaries, in_source=lambda item_id: source_has(source, collection, item_id))
    lines = change.lines(LISTED)
    return change, {
        "items_added": MetadataValue.int(len(change.added)),
        "items_departed": MetadataValue.int(len(change.departed)),
        "departed": MetadataValue.md("\n".join(f"- {line}" for line in lines) or "none"),
        "chip_settings_version": MetadataValue.text(settings_fingerprint(settings)),
    }


def newest_item_sets(instance) -> int | None:
    """Storage id of the newest stac_items materialization (an item set written), None if none: the
    combined index records the one it applied, the combined trigger compares (combined_trigger.py)."""
    records = instance.fetch_materializations(AssetRecordsFilter(asset_key=STAC_ITEMS_KEY), limit=1).records
    return records[0].storage_id if records else None


def rule_metadata(plan: RulePlan) -> dict[str, Any]:
    """combined_index metadata: counts per action, the changes with their reasons, the waiting items."""
    counts = {a: len(plan.of(a)) for a in (ADD, REPLACE, REMOVE, WAIT)}
    return {
        "rule": MetadataValue.text(RULE),
        "items_added": MetadataValue.int(counts[ADD]),
        "items_replaced": MetadataValue.int(counts[REPLACE]),
        "items_removed": MetadataValue.int(counts[REMOVE]),
        "items_waiting": MetadataValue.int(counts[WAIT]),
        "changes": MetadataValue.json(plan.to_json(LISTED)),
        "item_set_changes": MetadataValue.md(plan.markdown(LISTED)),
    }


def removal_observations(plan: RulePlan) -> list[AssetObservation]:
    """One observation per chip_index partition whose item was removed from the combined index."""
    return [
        AssetObservation(asset_key=CHIP_INDEX_KEY, partition=f"{c.collection}/{c.item_id}",
                         metadata={"status": MetadataValue.text("removed"),
                                   "reason": MetadataValue.text(c.reason),
                                   "combined_index": MetadataValue.text("its chips were removed from the combined index")})
        for c in plan.of(REMOVE)
    ]


@asset_check(asset=COMBINED_INDEX_KEY, description="The item ids in the combined index equal the union of the item "
             "sets ({base}/item_sets/*.json) of the collections that have one: " + RULE + ".")
def combined_holds_item_sets(storage: StorageResource) -> AssetCheckResult:
    passed, differing = holds(storage.storage())
    missing, extra = differing["missing"], differing["extra"]
    return AssetCheckResult(
        # items not in any set are an error; set members not combined yet may just wait for chip_index
        passed=passed, severity=AssetCheckSeverity.ERROR if extra else AssetCheckSeverity.WARN,
        description=("the combined index holds exactly the items of the item sets" if passed else
                     f"{len(missing)} items of the item sets missing, {len(extra)} items not in any item set: "
                     + ", ".join(missing[:10] + extra[:10])),
        metadata={"missing": MetadataValue.json(missing[:LISTED]), "extra": MetadataValue.json(extra[:LISTED]),
                  "missing_count": len(missing), "extra_count": len(extra)},
    )


__all__ = ["RULE", "newest_item_sets", "combined_holds_item_sets", "item_set_version", "removal_observations", "rule_metadata",
           "store_item_set"]
