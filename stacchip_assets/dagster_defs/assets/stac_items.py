"""``stac_items``: the STAC items a collection's search selects, one static partition per collection.

Stored as ``{base}/{collection}/{item_id}/stac_item.json`` plus an item-set listing in
``{base}/item_sets/``. Wiring only: the search is `io.stac_source`, the pruning `index.item_index`.
"""

import json
from typing import Any

from dagster import AssetExecutionContext, AssetsDefinition, DataVersion, MaterializeResult, MetadataValue, asset

from stacchip_assets.dagster_defs.assets.common import STAC_ITEMS_CODE_VERSION, STAC_ITEMS_KEY, failure, md_table
from stacchip_assets.dagster_defs.item_set_rule import item_set_version, store_item_set
from stacchip_assets.dagster_defs.presets import CollectionConfig
from stacchip_assets.dagster_defs.resources import ChipSettingsResource, StacSourceResource, StorageResource
from stacchip_assets.errors import StacchipError
from stacchip_assets.index.item_index import prune_assets
from stacchip_assets.io.source_guards import SourceReport
from stacchip_assets.io.stac_source import item_summary, params_json


def build_stac_items(by_collection: dict[str, CollectionConfig], partitions_def) -> AssetsDefinition:
    """The stac_items asset over the configured collections (`partitions_def`: one key per collection)."""

    @asset(
        key=STAC_ITEMS_KEY,
        partitions_def=partitions_def,
        code_version=STAC_ITEMS_CODE_VERSION,
        group_name="stacchip",
        kinds={"stac"},
        description="The STAC items a collection's search selects (one partition per configured collection), "
        "stored as {base}/{collection}/{item_id}/stac_item.json; the item set is listed in {base}/item_sets/.",
    )
    def stac_items(
        context: AssetExecutionContext,
        stac_source: StacSourceResource,
        storage: StorageResource,
        chip_settings: ChipSettingsResource,
    ) -> MaterializeResult:
        config = by_collection[context.partition_key]
        store = storage.storage()
        settings = chip_settings.for_collection(config)
        report = SourceReport()  # malformed items skipped, unlinked item files (untrusted sources)
        try:
            items = stac_source.source().search(config.collection, config.search, report=report)
            for item in items:
                store.write_item(prune_assets(item, settings.assets, settings.indexer), config.collection)
        except StacchipError as exc:
            raise failure(exc, f"item set of {config.collection}") from exc
        summaries = [item_summary(i) for i in items]
        listing = {
            "collection": config.collection,
            "source": stac_source.describe(),
            "search": json.loads(params_json(config.search)),
            "items": [{**s, "stored": store.uri(store.item_key(config.collection, s["id"]))} for s in summaries],
        }
        try:  # the set replaces the previous one; why items left is recorded (index.item_sets)
            _, set_metadata = store_item_set(store, config.collection, items, search=config.search,
                                             settings=settings.to_dict(), source=stac_source.source(), listing=listing)
        except StacchipError as exc:
            raise failure(exc, f"item set of {config.collection}") from exc
        listing_uri = store.uri(store.item_set_key(config.collection))
        context.log.info("%s: %d items selected from %s", config.collection, len(items), stac_source.describe())
        result = item_set_result(config, summaries, report, stac_source.describe(), listing_uri, settings.to_dict())
        return MaterializeResult(metadata={**dict(result.metadata or {}), **set_metadata}, data_version=result.data_version)

    return stac_items


def item_set_result(config: CollectionConfig, summaries: list[dict[str, Any]], report: SourceReport, source: str,
                    listing_uri: str, settings: dict[str, Any] | None = None) -> MaterializeResult:
    """The materialization of one item set: counts, time span, a table of the first 100 items, and a
    data version that changes when an item is added, removed or updated, or the collection's chip
    settings change (then Dagster shows its chip_index partitions stale)."""
    times = sorted(s["datetime"] for s in summaries if s["datetime"])
    span = f"{times[0]} .. {times[-1]}" if times else "no items"
    version = item_set_version(summaries, settings or {})
    table = md_table(
        ["item", "datetime", "cloud cover %", "tile", "updated"],
        [(s["id"], s["datetime"], s["cloud_cover"], s["tile"], s["updated"]) for s in summaries[:100]],
    )
    more = f"\n\n... and {len(summaries) - 100} more (see {listing_uri})" if len(summaries) > 100 else ""
    return MaterializeResult(
        metadata={
            "count": MetadataValue.int(len(summaries)),
            "dagster/row_count": MetadataValue.int(len(summaries)),
            "time_span": MetadataValue.text(span),
            "start": MetadataValue.text(times[0] if times else ""),
            "end": MetadataValue.text(times[-1] if times else ""),
            "source": MetadataValue.text(source),
            "search": MetadataValue.json(json.loads(params_json(config.search))),
            "selection": MetadataValue.text(config.search.selection),
            "preset": MetadataValue.text(config.preset or ""),
            "path": MetadataValue.path(listing_uri),
            "items": MetadataValue.md(f"**{len(summaries)} items**, {span}\n\n{table}{more}"),
            "skipped_items": MetadataValue.int(report.skipped_count),
            "source_problems": MetadataValue.md("\n".join(f"- {line}" for line in report.lines(100)) or "none"),
        },
        data_version=DataVersion(version),
    )
