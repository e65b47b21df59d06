"""Asset checks of the combined index (the per-item checks run inline in `chip_index`).

They read the whole combined index (chip ids, geometries, Parquet footers) and the event log, so
they cost O(items); the combined index itself is updated in O(changes).
"""


import numpy as np
import pyarrow.compute as pc
import shapely
from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetRecordsFilter, MetadataValue, asset_check

from stacchip_assets.dagster_defs.assets import CHIP_INDEX_KEY, COMBINED_INDEX_KEY, item_partition_key
from stacchip_assets.dagster_defs.item_set_rule import combined_holds_item_sets
from stacchip_assets.dagster_defs.resources import StorageResource
from stacchip_assets.index.combined import CombinedIndex
from stacchip_assets.index.item_sets import load_item_sets


def _combined_state(context: AssetCheckExecutionContext) -> dict:
    event = context.instance.get_latest_materialization_event(COMBINED_INDEX_KEY)
    if event is None or event.asset_materialization is None or "state" not in event.asset_materialization.metadata:
        return {}
    return dict(event.asset_materialization.metadata["state"].value)


@asset_check(asset=COMBINED_INDEX_KEY, description="(collection, chipid) is unique across the combined index.")
def unique_chip_ids(storage: StorageResource) -> AssetCheckResult:
    table = CombinedIndex(storage.storage()).read(columns=["collection", "chipid"])
    counts = table.group_by(["collection", "chipid"]).aggregate([([], "count_all")])
    duplicated = counts.filter(pc.greater(counts.column("count_all"), 1))
    examples = [f"{c}/{i}" for c, i in zip(duplicated.column("collection").to_pylist()[:10], duplicated.column("chipid").to_pylist()[:10])]
    return AssetCheckResult(
        passed=duplicated.num_rows == 0,
        description=f"{duplicated.num_rows} duplicated chip ids among {table.num_rows} rows",
        metadata={"rows": table.num_rows, "duplicated": duplicated.num_rows, "examples": MetadataValue.json(examples)},
    )


@asset_check(asset=COMBINED_INDEX_KEY, description="Every chip-index partition materialized before the combined "
             "index's last update has its rows in it (unless its item left its item set).")
def every_materialized_item_present(context: AssetCheckExecutionContext, storage: StorageResource) -> AssetCheckResult:
    state = _combined_state(context)
    cursor = state.get("event_cursor")
    expected = (
        context.instance.get_materialized_partitions(CHIP_INDEX_KEY, before_cursor=int(cursor) + 1)
        if cursor is not None else set()
    )
    store = storage.storage()
    present = {item_partition_key(c, i) for c, i in CombinedIndex(store).items()}
    # items that left their item set are not expected (the rule, index.set_rule)
    sets = load_item_sets(store)
    expected = {k for k in expected if k.partition("/")[0] not in sets or k.partition("/")[2] in sets[k.partition("/")[0]].ids}
    missing = sorted(expected - present)
    extra = sorted(present - expected)
    return AssetCheckResult(
        passed=not missing,
        description=f"{len(missing)} of {len(expected)} materialized items missing; {len(extra)} items present "
        "that this instance never materialized (full rebuild or another instance)",
        metadata={"expected": len(expected), "present": len(present), "missing": MetadataValue.json(missing[:50]),
                  "extra": MetadataValue.json(extra[:50])},
    )


@asset_check(asset=COMBINED_INDEX_KEY, description="The combined row count equals the sum of the per-item chip "
             "counts (as materialized) and the total the combined index recorded.")
def row_count_equals_sum(context: AssetCheckExecutionContext, storage: StorageResource) -> AssetCheckResult:
    combined = CombinedIndex(storage.storage())
    entries = combined.entries()
    per_file = {item_partition_key(c, i): combined.storage.parquet_num_rows(e.key) for (c, i), e in entries.items()}
    actual = combined.dataset().count_rows() if entries else 0
    state = _combined_state(context)
    recorded = int(state.get("rows", 0))
    # the row counts chip_index recorded for its latest materialization of each item, up to the cursor
    materialized: dict[str, int] = {}
    cursor = state.get("event_cursor")
    if cursor is not None:
        page_cursor = None
        while True:
            result = context.instance.fetch_materializations(
                AssetRecordsFilter(asset_key=CHIP_INDEX_KEY, before_storage_id=int(cursor) + 1),
                limit=1000, cursor=page_cursor, ascending=True,
            )
            for record in result.records:
                meta = record.asset_materialization.metadata if record.asset_materialization else {}
                if record.partition_key and "dagster/row_count" in meta:
                    materialized[record.partition_key] = int(meta["dagster/row_count"].value)
            if not result.has_more:
                break
            page_cursor = result.cursor
    expected = sum(materialized.get(k, rows) for k, rows in per_file.items())
    mismatched = sorted(k for k, rows in per_file.items() if k in materialized and materialized[k] != rows)
    return AssetCheckResult(
        passed=actual == expected == recorded == sum(per_file.values()),
        description=f"{actual} rows in the dataset; sum of per-item counts {expected}; recorded total {recorded}",
        metadata={"rows": actual, "sum_of_items": expected, "recorded": recorded,
                  "mismatched_items": MetadataValue.json(mismatched[:50])},
    )


@asset_check(asset=COMBINED_INDEX_KEY, description="Every footprint in the combined index is a valid polygon.")
def combined_geometries_valid(storage: StorageResource) -> AssetCheckResult:
    table = CombinedIndex(storage.storage()).read(columns=["chipid", "geometry"])
    geoms = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False)) if table.num_rows else np.empty(0)
    invalid = ~shapely.is_valid(geoms) if table.num_rows else np.zeros(0, dtype=bool)
    examples = np.asarray(table.column("chipid").to_pylist(), dtype=object)[invalid][:10].tolist() if table.num_rows else []
    return AssetCheckResult(
        passed=not invalid.any(),
        description=f"{int(invalid.sum())} invalid footprints among {table.num_rows}",
        metadata={"invalid": int(invalid.sum()), "examples": MetadataValue.json(examples)},
    )


combined_index_checks = [unique_chip_ids, every_materialized_item_present, row_count_equals_sum, combined_geometries_valid,
                         combined_holds_item_sets]

__all__ = ["combined_index_checks"]
