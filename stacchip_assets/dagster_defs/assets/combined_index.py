"""``combined_index``: all chip indexes in one GeoParquet dataset, updated incrementally.

Unpartitioned: each run reads from the event log the chip-index materializations after the cursor
its previous materialization recorded and copies only those items' files into ``{base}/combined/``.
The bookkeeping (totals, journal cursor, data version) is `index.combined_state`; this module reads
the event log and turns the outcome into metadata.
"""

import datetime as dt
from typing import Any, Literal

from dagster import (
    AssetExecutionContext,
    AssetRecordsFilter,
    AssetsDefinition,
    Config,
    DataVersion,
    FreshnessPolicy,
    MaterializeResult,
    MetadataValue,
    asset,
)

from stacchip_assets.dagster_defs.assets.common import (
    CHIP_INDEX_KEY,
    COMBINE_POOL,
    COMBINED_INDEX_CODE_VERSION,
    COMBINED_INDEX_KEY,
    failure,
    index_table_schema,
    md_table,
    split_item_partition_key,
)
from stacchip_assets.dagster_defs.item_set_rule import RULE, newest_item_sets, removal_observations, rule_metadata
from stacchip_assets.dagster_defs.pictures import combined_pictures
from stacchip_assets.dagster_defs.resources import StorageResource
from stacchip_assets.errors import StacchipError
from stacchip_assets.index import combined_state
from stacchip_assets.index.combined import CombinedIndex
from stacchip_assets.index.combined_state import UpdateOutcome
from stacchip_assets.io.settings import Settings, load_settings


class CombinedIndexConfig(Config):
    full_rebuild: bool = False
    """Re-derive the combined index from the files (a listing of both folders) instead of the event log."""
    compaction: Literal["auto", "enable", "off"] = "auto"
    """Keep the compacted tier (Hilbert-sorted runs + manifest, `stacchip_assets.index.compaction`) up to date
    after the update: "auto" compacts the pending items when the tier is enabled for the base (its
    manifest exists), "enable" also enables it (the first time compacts the whole per-item layout),
    "off" leaves it alone (queries stay exact: pending items are read from their per-item files)."""


def _previous_metadata(context: AssetExecutionContext) -> dict[str, Any]:
    """The metadata of the latest combined_index materialization (empty before the first)."""
    event = context.instance.get_latest_materialization_event(COMBINED_INDEX_KEY)
    if event is None or event.asset_materialization is None:
        return {}
    return dict(event.asset_materialization.metadata)


def _previous_state(context: AssetExecutionContext) -> dict[str, Any] | None:
    """The state the latest combined_index materialization recorded (None before the first)."""
    state = _previous_metadata(context).get("state")
    return dict(state.value) if state is not None else None


def changed_items_since(instance, after_storage_id: int | None, page: int = 1000) -> tuple[dict[str, str], int | None]:
    """Chip-index partitions materialized after a storage id -> the data version of their latest
    materialization; and the last storage id seen (the next cursor)."""
    changed: dict[str, str] = {}
    last = after_storage_id
    cursor = None
    while True:
        result = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=CHIP_INDEX_KEY, after_storage_id=after_storage_id),
            limit=page, cursor=cursor, ascending=True,
        )
        for record in result.records:
            if record.partition_key:
                materialization = record.asset_materialization
                changed[record.partition_key] = (materialization.tags or {}).get("dagster/data_version", "") if materialization else ""
            last = record.storage_id if last is None else max(last, record.storage_id)
        if not result.has_more:
            return changed, last
        cursor = result.cursor


def compact_combined(context: AssetExecutionContext, store, mode: str) -> dict[str, Any]:
    """After an update: fold the items it registered as pending into the compacted tier
    (`combined_state.compact_pending`). Returns the report, the tier's status and a Markdown line."""
    try:
        report, status = combined_state.compact_pending(store, mode)
    except StacchipError as exc:  # the per-item layout is current; the next run compacts what is pending
        raise failure(exc, "compacting the combined index") from exc
    if report["ran"]:
        summary = (f"Compacted tier: {report['items_compacted']} pending items ({report['delta_rows']} rows) folded into "
                   f"{report['runs_written']} new runs, {report['merges']} merges, generation {report['generation']}; "
                   f"{status['runs']} runs, {status['run_rows']} rows, {status['pending_items']} items pending.")
        context.log.info(summary)
    else:
        summary = f"Compacted tier: not compacted ({report['reason']})."
    return {"report": report, "status": status, "summary": summary}


def _summary(state: dict[str, Any], outcome: UpdateOutcome, uri: str, compacted: dict[str, Any]) -> str:
    """Markdown: totals per collection, what this update changed, how to read the index."""
    report, changes = outcome.report, outcome.changes
    per_collection = md_table(
        ["collection", "items", "chips"],
        [(c, e["items"], e["rows"]) for c, e in sorted(state["by_collection"].items())],
    )
    changed_list = ", ".join(f"{c}/{i}" for c, i in changes[:20]) + (f" and {len(changes) - 20} more" if len(changes) > 20 else "")
    return "\n".join([
        f"**{state['rows']}** chips from **{state['items']}** items in `{uri}`.",
        "",
        per_collection,
        "",
        f"This update: {report.items_changed} items changed ({changed_list or 'none'}), "
        f"{report.rows_added} rows written, {report.rows_removed} replaced or removed.",
        "",
        f"Read it with `geopandas.read_parquet({uri!r})` or "
        "`stacchip_assets.index.combined.read_combined(base)`; pixels with `stacchip_assets.index.reader.read_chip(row)`.",
        "",
        compacted["summary"],
        "",
        f"Item sets ({RULE}):",
        "",
        outcome.plan.markdown(20),
    ])


def update_combined_index(context: AssetExecutionContext, config: CombinedIndexConfig, storage: StorageResource) -> MaterializeResult:
    """One run of combined_index: the items changed since the recorded cursor (or all, with
    `full_rebuild`), copied; the new state recorded in the materialization's metadata."""
    store = storage.storage()
    combined = CombinedIndex(store)
    state = combined_state.initial_state(_previous_state(context), config.full_rebuild)
    item_sets_cursor = newest_item_sets(context.instance)  # read first: a set changed later is the next run's
    if config.full_rebuild:
        _, last = changed_items_since(context.instance, None)
        outcome = combined_state.rebuild(combined, store, state, last, context.run.run_id)
    else:
        changed, last = changed_items_since(context.instance, state.get("event_cursor"))
        items = [split_item_partition_key(k) for k in sorted(changed)]
        outcome = combined_state.update_incremental(combined, state, items, changed, last, context.run.run_id)
    state["item_sets_cursor"] = item_sets_cursor
    for observation in removal_observations(outcome.plan):  # the chip_index partitions of removed items say so
        context.log_event(observation)
    version = combined_state.roll_version(state, outcome, store)
    report = outcome.report
    context.log.info(
        "combined index: %d items changed (%d rows added, %d removed); %d items, %d rows in all",
        report.items_changed, report.rows_added, report.rows_removed, state["items"], state["rows"],
    )
    compacted = compact_combined(context, store, config.compaction)
    return MaterializeResult(
        metadata={
            "dagster/row_count": MetadataValue.int(int(state["rows"])),
            "dagster/column_schema": index_table_schema(),
            "items": MetadataValue.int(int(state["items"])),
            "items_changed": MetadataValue.int(report.items_changed),
            "rows_added": MetadataValue.int(report.rows_added),
            "rows_removed": MetadataValue.int(report.rows_removed),
            "path": MetadataValue.path(combined.uri),
            "summary": MetadataValue.md(_summary(state, outcome, combined.uri, compacted)),
            **rule_metadata(outcome.plan),
            "full_rebuild": MetadataValue.bool(bool(config.full_rebuild)),
            "state": MetadataValue.json(state),
            "compaction": MetadataValue.json(compacted["report"]),
            "compacted_tier": MetadataValue.json(compacted["status"]),
            # column lineage, coverage map, provenance of the items copied (dagster_defs.pictures)
            **combined_pictures(store, int(state["rows"]), outcome.changes, outcome.item_versions,
                                outcome.report.rows_by_item, _previous_metadata(context), storage.image_url_prefix),
        },
        data_version=DataVersion(version),
    )


def build_combined_index(settings: Settings | None = None) -> AssetsDefinition:
    """The combined_index asset (unpartitioned, in the combine pool; runs requested by combined_trigger).
    Its freshness policy (shown in the UI) fails when it was not updated for
    STACCHIP_COMBINED_FRESHNESS_HOURS (default 24: a collection that publishes daily), warns at half."""
    hours = (load_settings() if settings is None else settings).combined_freshness_hours
    freshness = FreshnessPolicy.time_window(fail_window=dt.timedelta(hours=hours),
                                            warn_window=dt.timedelta(hours=hours / 2))

    @asset(
        key=COMBINED_INDEX_KEY,
        deps=[CHIP_INDEX_KEY],
        code_version=COMBINED_INDEX_CODE_VERSION,
        pool=COMBINE_POOL,
        group_name="stacchip",
        kinds={"geoparquet"},
        freshness_policy=freshness,
        description="All chip indexes in one GeoParquet dataset ({base}/combined/{collection}/{item_id}.parquet), "
        "updated incrementally from the chip-index materializations since its previous materialization.",
    )
    def combined_index(context: AssetExecutionContext, config: CombinedIndexConfig, storage: StorageResource) -> MaterializeResult:
        return update_combined_index(context, config, storage)

    return combined_index
