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

from typing import Any

from dagster import AssetCheckResult, AssetCheckSeverity, AssetObservation, MetadataValue, asset_check

from stacchip_assets.dagster_defs.assets import CHIP_INDEX_KEY, COMBINED_INDEX_KEY, item_partition_key
from stacchip_assets.dagster_defs.resources import StorageResource
from stacchip_assets.index.set_rule import ADD, REMOVE, REPLACE, WAIT, RulePlan, holds

#: Ids listed in metadata (counts are exact).
LISTED = 50
RULE = ("the combined index = the chips of the items currently in the item sets, indexed with the "
        "collection's current chip settings")


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
        AssetObservation(asset_key=CHIP_INDEX_KEY, partition=item_partition_key(c.collection, c.item_id),
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


__all__ = ["RULE", "combined_holds_item_sets", "removal_observations", "rule_metadata"]
