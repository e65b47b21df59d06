"""The three assets: STAC item sets -> per-item chip indexes -> combined index.

Wiring only: the work is done by `stac_source`, `pipeline`, `combine` and `storage`; this module
turns their results into materialization metadata, data versions and check results.

- ``stac_items``: one static partition per configured collection; the items its search selects,
  stored as ``{base}/{collection}/{item_id}/stac_item.json`` plus an item-set listing.
- ``chip_index``: one dynamic partition per STAC item, key ``{collection}/{item_id}`` (Dagster
  forbids only ``...`` and control characters in keys; ids are validated, so neither holds ``/``).
  Indexes the item, writes its GeoParquet and quicklook, checks run inline (one step per run).
- ``combined_index``: unpartitioned, incremental: it reads from the event log the chip-index
  materializations after the cursor its previous materialization recorded and copies only those
  items' files into ``{base}/combined/``.
"""


import base64
import hashlib
import json
import os
import re
import warnings
from typing import Any, Iterable, Iterator, Literal

from dagster import (
    AllPartitionMapping,
    AssetCheckEvaluation,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetRecordsFilter,
    BackfillPolicy,
    Backoff,
    BetaWarning,
    Config,
    DagsterEventType,
    DataVersion,
    DynamicPartitionsDefinition,
    Failure,
    MaterializeResult,
    MetadataValue,
    Output,
    PreviewWarning,
    RetryPolicy,
    StaticPartitionsDefinition,
    TableColumn,
    TableSchema,
    asset,
)

from stacchip_assets.index import compaction
from stacchip_assets.index.combined import CombinedIndex, CombineReport
from stacchip_assets.errors import StacchipError
from stacchip_assets.io.geoparquet import INDEX_SCHEMA
from stacchip_assets.core.ids import validate_id
from stacchip_assets.index.item_index import ItemIndexResult, index_item, prune_assets
from stacchip_assets.io.source_guards import SourceReport
from stacchip_assets.io.stac_source import item_summary, params_json
from stacchip_assets.dagster_defs.presets import CollectionConfig
from stacchip_assets.dagster_defs.resources import ChipSettingsResource, StacSourceResource, StorageResource
from stacchip_assets.dagster_defs.runtime import CHIP_INDEX_MAX_RUNTIME_SECONDS, protect_run

STAC_ITEMS_KEY = AssetKey("stac_items")
CHIP_INDEX_KEY = AssetKey("chip_index")
COMBINED_INDEX_KEY = AssetKey("combined_index")

#: Concurrency pools (limits set in the instance: deploy/*.yaml `concurrency.pools`, or
#: `dagster instance concurrency set <pool> <n>`; unlimited when the instance sets none).
INDEX_POOL = "stacchip_index"
COMBINE_POOL = "stacchip_combine"

#: Name of the dynamic partitions definition of chip_index (one partition per STAC item).
ITEM_PARTITIONS_NAME = "stac_items_dynamic"
item_partitions = DynamicPartitionsDefinition(name=ITEM_PARTITIONS_NAME)

# Bump when the output of an asset changes for the same input (Dagster then marks it stale).
STAC_ITEMS_CODE_VERSION = "1"
CHIP_INDEX_CODE_VERSION = "1"
COMBINED_INDEX_CODE_VERSION = "1"

#: combined_index has no automation condition: the `combined_index_trigger` sensor (combined_trigger.py)
#: requests its runs from the cursor each combined materialization records (issue 16).

CHIP_INDEX_CHECKS = (
    ("non_empty_or_explained", "The index has rows, or the metadata says why not (grid smaller than a chip, all chips nodata)."),
    ("geometries_valid_and_inside_footprint", "Footprints are valid polygons that lie in the item footprint (up to the nodata allowance)."),
    ("stats_in_unit_interval", "cloud_cover_percentage and nodata_percentage are fractions in [0, 1], nodata within chip_max_nodata."),
)

COLUMN_DOCS = {
    "chipid": "{item_id}-{x}-{y}; unique with collection",
    "date": "the item's date",
    "chip_index_x": "chip column (east)",
    "chip_index_y": "chip row (south)",
    "cloud_cover_percentage": "cloud fraction in [0, 1]",
    "nodata_percentage": "nodata fraction in [0, 1]",
    "geometry": "footprint, WKB polygon in OGC:CRS84",
    "bbox": "GeoParquet 1.1 covering bbox",
    "collection": "STAC collection id",
    "item_id": "STAC item id",
    "datetime": "the item's datetime (UTC)",
    "item_href": "stored item JSON (enough to read the pixels back)",
    "chip_size": "chip size in pixels",
    "chip_stride": "pixels between chip origins",
}


def item_partition_key(collection: str, item_id: str) -> str:
    """The chip_index partition key of an item: ``{collection}/{item_id}``."""
    return f"{validate_id(collection, 'collection')}/{validate_id(item_id, 'item')}"


def split_item_partition_key(key: str) -> tuple[str, str]:
    collection, sep, item_id = key.partition("/")
    if not sep:
        raise StacchipError(f"partition key {key!r} is not of the form collection/item_id")
    return validate_id(collection, "collection"), validate_id(item_id, "item")


def index_table_schema() -> TableSchema:
    return TableSchema(columns=[TableColumn(f.name, str(f.type), description=COLUMN_DOCS.get(f.name)) for f in INDEX_SCHEMA])


def _md_table(header: list[str], rows: Iterable[Iterable[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(v).replace("|", "\\|") if v is not None else ""

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _path_or_url(value: str | None) -> MetadataValue:
    if not value:
        return MetadataValue.text("")
    return MetadataValue.url(value) if re.match(r"^https?://", value) else MetadataValue.path(value)


def _failure(exc: BaseException, what: str) -> Failure:
    """A Dagster Failure; retried (RetryPolicy) only when the error says it may be transient.

    The decision is the error's type (`StacchipError.transient`), never its message: bad metadata,
    a 404, refused credentials stay what they are. Outside the StacchipError family only network
    and OS errors (ConnectionError, TimeoutError, OSError) are retried; anything else is a bug or
    an unforeseen input, which a retry would only repeat.
    """
    text = str(exc)
    transient = bool(exc.transient) if isinstance(exc, StacchipError) else isinstance(exc, OSError)
    return Failure(description=f"{what}: {type(exc).__name__}: {text}",
                   metadata={"error": text, "transient": transient}, allow_retries=transient)


#: Partitions per run of a chip_index backfill (``BackfillPolicy.multi_run``); each run indexes its
#: items one after the other in one process, so 100 items cost one run start instead of 100.
BACKFILL_PARTITIONS_PER_RUN_ENV = "STACCHIP_BACKFILL_PARTITIONS_PER_RUN"
DEFAULT_BACKFILL_PARTITIONS_PER_RUN = 100


def backfill_partitions_per_run() -> int:
    """``STACCHIP_BACKFILL_PARTITIONS_PER_RUN`` (default 100), read when the code location loads."""
    raw = os.environ.get(BACKFILL_PARTITIONS_PER_RUN_ENV, "").strip()
    if not raw:
        return DEFAULT_BACKFILL_PARTITIONS_PER_RUN
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise StacchipError(f"{BACKFILL_PARTITIONS_PER_RUN_ENV}={raw!r} must be a whole number of at least 1")
    return value


class CombinedIndexConfig(Config):
    full_rebuild: bool = False
    """Re-derive the combined index from the files (a listing of both folders) instead of the event log."""
    compaction: Literal["auto", "enable", "off"] = "auto"
    """Keep the compacted tier (Hilbert-sorted runs + manifest, `stacchip_assets.index.compaction`) up to date
    after the update: "auto" compacts the pending items when the tier is enabled for the base (its
    manifest exists), "enable" also enables it (the first time compacts the whole per-item layout),
    "off" leaves it alone (queries stay exact: pending items are read from their per-item files)."""


def build_assets(collections: list[CollectionConfig]):
    """The assets for the configured collections: (stac_items, chip_index, combined_index)."""
    by_collection = {c.collection: c for c in collections}
    collection_partitions = StaticPartitionsDefinition([c.collection for c in collections])

    @asset(
        key=STAC_ITEMS_KEY,
        partitions_def=collection_partitions,
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
            raise _failure(exc, f"item set of {config.collection}") from exc
        summaries = [item_summary(i) for i in items]
        listing = {
            "collection": config.collection,
            "source": stac_source.describe(),
            "search": json.loads(params_json(config.search)),
            "items": [{**s, "stored": store.uri(store.item_key(config.collection, s["id"]))} for s in summaries],
        }
        listing_uri = store.write_json(store.item_set_key(config.collection), listing)
        times = sorted(s["datetime"] for s in summaries if s["datetime"])
        span = f"{times[0]} .. {times[-1]}" if times else "no items"
        version = hashlib.sha256(json.dumps(sorted((s["id"], s["updated"]) for s in summaries)).encode()).hexdigest()
        table = _md_table(
            ["item", "datetime", "cloud cover %", "tile", "updated"],
            [(s["id"], s["datetime"], s["cloud_cover"], s["tile"], s["updated"]) for s in summaries[:100]],
        )
        more = f"\n\n... and {len(summaries) - 100} more (see {listing_uri})" if len(summaries) > 100 else ""
        context.log.info("%s: %d items selected from %s", config.collection, len(items), stac_source.describe())
        return MaterializeResult(
            metadata={
                "count": MetadataValue.int(len(items)),
                "dagster/row_count": MetadataValue.int(len(items)),
                "time_span": MetadataValue.text(span),
                "start": MetadataValue.text(times[0] if times else ""),
                "end": MetadataValue.text(times[-1] if times else ""),
                "source": MetadataValue.text(stac_source.describe()),
                "search": MetadataValue.json(json.loads(params_json(config.search))),
                "selection": MetadataValue.text(config.search.selection),
                "preset": MetadataValue.text(config.preset or ""),
                "path": MetadataValue.path(listing_uri),
                "items": MetadataValue.md(f"**{len(items)} items**, {span}\n\n{table}{more}"),
                "skipped_items": MetadataValue.int(report.skipped_count),
                "source_problems": MetadataValue.md("\n".join(f"- {line}" for line in report.lines(100)) or "none"),
            },
            data_version=DataVersion(version),
        )

    def partition_indexer(context: AssetExecutionContext, stac_source: StacSourceResource, storage: StorageResource,
                          chip_settings: ChipSettingsResource):
        """A function indexing the item of one partition (raises StacchipError); the STAC source,
        the storage and the href policy are opened once for all the partitions of a run."""
        source, store, policy = stac_source.source(), storage.storage(), stac_source.href_policy()

        def index_partition(key: str) -> ItemIndexResult:
            collection, item_id = split_item_partition_key(key)
            config = by_collection.get(collection)
            if config is None:
                context.log.warning("collection %r is not configured any more: default chip settings", collection)
            settings = chip_settings.for_collection(config)
            item = source.get_item(collection, item_id)
            with storage.gdal_env():  # GDAL settings, S3 endpoint/credentials and href signer of the resource
                return index_item(item, store, settings, collection=collection, href_policy=policy)

        return index_partition

    # per-partition check results (preview) and backfill policies (beta) warn in Dagster 1.13
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PreviewWarning)
        warnings.simplefilter("ignore", BetaWarning)
        chip_index_check_specs = [
            AssetCheckSpec(name, asset=CHIP_INDEX_KEY, description=doc, partitions_def=item_partitions)
            for name, doc in CHIP_INDEX_CHECKS
        ]

        @asset(
            key=CHIP_INDEX_KEY,
            partitions_def=item_partitions,
            deps=[AssetDep(STAC_ITEMS_KEY, partition_mapping=AllPartitionMapping())],
            check_specs=chip_index_check_specs,
            code_version=CHIP_INDEX_CODE_VERSION,
            retry_policy=RetryPolicy(max_retries=2, delay=5, backoff=Backoff.EXPONENTIAL),
            backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=backfill_partitions_per_run()),
            output_required=False,  # a batch reports its partitions as events (see index_batch)
            pool=INDEX_POOL,
            group_name="stacchip",
            kinds={"geoparquet"},
            description="The chip index of one STAC item (dynamic partition `collection/item_id`): "
            "{base}/index/{collection}/{item_id}/index_{item_id}.parquet, with a quicklook PNG. "
            "Backfills run up to STACCHIP_BACKFILL_PARTITIONS_PER_RUN items per run.",
        )
        def chip_index(
            context: AssetExecutionContext,
            stac_source: StacSourceResource,
            storage: StorageResource,
            chip_settings: ChipSettingsResource,
        ) -> Iterator[Any]:
            # runs of the implicit asset job (UI Materialize, backfills) get chip_index_job's limit too
            protect_run(context, CHIP_INDEX_KEY, CHIP_INDEX_MAX_RUNTIME_SECONDS)
            keys = list(context.partition_keys)
            # a backfill run over a range of partitions (even a range of one: Dagster then records
            # check results without their partition, so the batch path reports them itself)
            if context.has_partition_key_range or len(keys) > 1:
                try:
                    index_partition = partition_indexer(context, stac_source, storage, chip_settings)
                except StacchipError as exc:
                    raise _failure(exc, f"opening the STAC source and storage for {len(keys)} partitions") from exc
                yield from index_batch(context, keys, index_partition, stac_source.describe())
                return
            collection, item_id = split_item_partition_key(context.partition_key)
            try:
                result = partition_indexer(context, stac_source, storage, chip_settings)(context.partition_key)
            except Exception as exc:  # noqa: BLE001 (any error: retried only if it says it is transient)
                raise _failure(exc, f"indexing {collection}/{item_id}") from exc
            context.log.info("%s: %d chips kept, %d dropped", context.partition_key, result.chips_kept, result.chips_dropped)
            yield MaterializeResult(
                metadata=chip_index_metadata(result, stac_source.describe()),
                check_results=[
                    AssetCheckResult(check_name=o.name, passed=o.passed, description=o.description, metadata=o.metadata,
                                     severity=AssetCheckSeverity.ERROR)
                    for o in result.checks
                ],
                data_version=DataVersion(result.content_hash),
            )

    @asset(
        key=COMBINED_INDEX_KEY,
        deps=[CHIP_INDEX_KEY],
        code_version=COMBINED_INDEX_CODE_VERSION,
        pool=COMBINE_POOL,
        group_name="stacchip",
        kinds={"geoparquet"},
        description="All chip indexes in one GeoParquet dataset ({base}/combined/{collection}/{item_id}.parquet), "
        "updated incrementally from the chip-index materializations since its previous materialization.",
    )
    def combined_index(context: AssetExecutionContext, config: CombinedIndexConfig, storage: StorageResource) -> MaterializeResult:
        return update_combined_index(context, config, storage)

    return stac_items, chip_index, combined_index


def chip_index_metadata(result: ItemIndexResult, source: str) -> dict[str, Any]:
    cloud = result.distribution("cloud_cover_percentage")
    nodata = result.distribution("nodata_percentage")
    png64 = base64.b64encode(result.quicklook_png).decode()
    dist_rows = [(k, cloud.get(k), nodata.get(k)) for k in ("min", "p10", "p25", "p50", "p75", "p90", "max", "mean")] if cloud else []
    summary = "\n".join(
        [
            f"### {result.collection} / {result.item_id}",
            f"**{result.chips_kept}** chips kept, **{result.chips_dropped}** dropped (nodata above "
            f"{result.settings.chip_max_nodata:.0%}) of {result.chips_total} "
            f"({result.grid_chips[0]} x {result.grid_chips[1]} chips of {result.settings.chip_size} px on a "
            f"{result.grid_shape[0]} x {result.grid_shape[1]} px grid, {result.indexer_class}).",
            "" if result.explanation is None else f"\n**Empty index:** {result.explanation}.",
            "",
            _md_table(["statistic", "cloud", "nodata"], dist_rows) if dist_rows else "",
            "",
            f"Item updated {result.item_updated}; index at `{result.index_uri}`.",
        ]
    )
    return {
        "dagster/row_count": MetadataValue.int(result.chips_kept),
        "dagster/column_schema": index_table_schema(),
        "chips_kept": MetadataValue.int(result.chips_kept),
        "chips_dropped": MetadataValue.int(result.chips_dropped),
        "chips_total": MetadataValue.int(result.chips_total),
        "cloud_cover_distribution": MetadataValue.json(cloud),
        "nodata_distribution": MetadataValue.json(nodata),
        "path": MetadataValue.path(result.index_uri),
        "summary": MetadataValue.md(summary),
        "quicklook": MetadataValue.md(f"![quicklook](data:image/png;base64,{png64})"),
        "quicklook_path": MetadataValue.path(result.quicklook_uri),
        "collection": MetadataValue.text(result.collection),
        "stac_item_id": MetadataValue.text(result.item_id),
        "stac_item_updated": MetadataValue.text(result.item_updated),
        "stac_item_href": _path_or_url(result.source_href),
        "stored_item": MetadataValue.path(result.item_uri),
        "stac_source": MetadataValue.text(source),
        "chip_settings": MetadataValue.json(result.settings.to_dict()),
        "indexer": MetadataValue.text(result.indexer_class),
        "explanation": MetadataValue.text(result.explanation or ""),
        "content_hash": MetadataValue.text(result.content_hash),
    }


# --------------------------------------------------------------------------------------------------
# chip_index: a run over many partitions (batched backfill)
# --------------------------------------------------------------------------------------------------

def _provenance_tags(context: AssetExecutionContext) -> dict[str, str]:
    """The tags Dagster puts on an output's materialization (code version, the input data versions
    and event pointers of the upstream assets), without the data version: a batch reports each
    partition as its own AssetMaterialization with its own data version, which the output path
    cannot do (one data version per output). Built with Dagster's own helpers, so the UI's
    staleness of a batch-materialized partition is the same as after a single-partition run."""
    from dagster._core.execution.plan.execute_step import _build_data_version_tags, _get_input_provenance_data

    step = context.get_step_execution_context()
    provenance = _get_input_provenance_data(CHIP_INDEX_KEY, step)
    tags = _build_data_version_tags(DataVersion("-"), CHIP_INDEX_CODE_VERSION, provenance, True)
    return {k: v for k, v in tags.items() if k != "dagster/data_version"}


def _materialized_in_run(context: AssetExecutionContext) -> set[str]:
    """chip_index partitions this run has already materialized (a retried step skips them)."""
    done: set[str] = set()
    for entry in context.instance.all_logs(context.run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION):
        event = entry.dagster_event
        if event is not None and event.asset_key == CHIP_INDEX_KEY and event.partition:
            done.add(event.partition)
    return done


def _target(context: AssetExecutionContext, key: str):
    """The materialization a check result of partition `key` refers to (the one this run just logged)."""
    from dagster._core.definitions.asset_checks.asset_check_evaluation import (
        AssetCheckEvaluationTargetMaterializationData,
    )

    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=CHIP_INDEX_KEY, asset_partitions=[key]), limit=1
    ).records
    if not records or records[0].run_id != context.run.run_id:
        return None
    return AssetCheckEvaluationTargetMaterializationData(
        storage_id=records[0].storage_id, run_id=records[0].run_id, timestamp=records[0].timestamp
    )


def index_batch(context: AssetExecutionContext, keys: list[str], index_one, source: str) -> Iterator[Any]:
    """Index the partitions of a backfill run one by one and report each as it is done.

    Every partition that indexes gets its own materialization (its metadata, its data version = the
    hash of its index, Dagster's provenance tags) and its own check results, logged as events right
    away. A failing item does not stop the batch: the others are indexed, then the step fails with a
    `Failure` that names every failed item and its error. Dagster's asset backfill counts the
    partitions a failed ranged run did materialize and marks only the rest failed, so re-executing
    the backfill's failed partitions redoes only those. A step retry (RetryPolicy, only when a
    failure may be transient) skips the partitions this run already materialized.
    """
    done = _materialized_in_run(context) if context.retry_number > 0 else set()
    if done:
        context.log.info("retry %d: %d of %d partitions already materialized by this run, skipped",
                         context.retry_number, len(done & set(keys)), len(keys))
    tags = _provenance_tags(context)
    failures: dict[str, Failure] = {}
    indexed = chips = 0
    for key in keys:
        if key in done:
            continue
        collection, item_id = split_item_partition_key(key)
        try:
            result = index_one(key)
        except Exception as exc:  # noqa: BLE001 (one broken item must not stop the other 99; reported below)
            failures[key] = _failure(exc, f"indexing {collection}/{item_id}")
        if key in failures:
            context.log.error("%s failed: %s", key, failures[key].description)
            continue
        indexed += 1
        chips += result.chips_kept
        yield AssetMaterialization(
            asset_key=CHIP_INDEX_KEY, partition=key, metadata=chip_index_metadata(result, source),
            tags={**tags, "dagster/data_version": result.content_hash},
        )
        target = _target(context, key)
        for outcome in result.checks:
            yield AssetCheckEvaluation(
                asset_key=CHIP_INDEX_KEY, check_name=outcome.name, passed=outcome.passed, metadata=outcome.metadata,
                description=outcome.description, severity=AssetCheckSeverity.ERROR, blocking=False, partition=key,
                target_materialization_data=target,
            )
    context.log.info("batch of %d partitions: %d indexed (%d chips), %d already done, %d failed",
                     len(keys), indexed, chips, len(done & set(keys)), len(failures))
    for output_name in context.assets_def.check_specs_by_output_name:  # the checks' (Nothing) outputs
        yield Output(None, output_name=output_name)
    if failures:
        listing = "; ".join(f"{k}: {f.description}" for k, f in failures.items())
        raise Failure(
            description=f"{len(failures)} of {len(keys)} items failed (the other {len(keys) - len(failures)} are "
            f"materialized; re-run the failed partitions only): {listing}",
            metadata={
                "failed_partitions": MetadataValue.json(sorted(failures)),
                "materialized_partitions": MetadataValue.int(len(keys) - len(failures)),
                "errors": MetadataValue.json({k: f.description for k, f in failures.items()}),
            },
            allow_retries=any(f.allow_retries for f in failures.values()),
        )


# --------------------------------------------------------------------------------------------------
# combined_index: incremental update from the event log
# --------------------------------------------------------------------------------------------------

def _previous_state(context: AssetExecutionContext) -> dict[str, Any] | None:
    event = context.instance.get_latest_materialization_event(COMBINED_INDEX_KEY)
    if event is None or event.asset_materialization is None:
        return None
    meta = event.asset_materialization.metadata
    state = meta.get("state")
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


def _apply_totals(state: dict[str, Any], report: CombineReport) -> None:
    by_collection: dict[str, dict[str, int]] = state.setdefault("by_collection", {})
    for (collection, item_id), rows in report.rows_by_item.items():
        entry = by_collection.setdefault(collection, {"items": 0, "rows": 0})
        existed = (collection, item_id) in report.existed_before
        now = (collection, item_id) in report.upserted
        entry["rows"] += rows - report.previous_rows_by_item.get((collection, item_id), 0)
        entry["items"] += int(now) - int(existed)
    state["items"] = sum(e["items"] for e in by_collection.values())
    state["rows"] = sum(e["rows"] for e in by_collection.values())


def compact_combined(context: AssetExecutionContext, store, mode: str) -> dict[str, Any]:
    """After an update: fold the items it registered as pending into the compacted tier.

    Work is proportional to the pending items (plus the merges of the partitions they land in,
    see `compaction.compact`); with nothing pending nothing is done. Returns the report, the tier's
    status and a Markdown line for the metadata."""
    report: dict[str, Any] = {"mode": mode, "ran": False}
    try:
        manifest = compaction.load_manifest(store) if mode != "off" else None
        enabled = manifest is not None
        if mode == "off":
            reason = "compaction off for this run"
        elif not enabled and mode == "auto":
            reason = ("the compacted tier is not enabled for this base (run once with "
                      "`compaction: enable`, or `stacchip_assets.index.compaction.compact(base)`)")
        elif enabled and manifest.pending_count() == 0:
            reason = "no pending items"
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
            reason = ""
        status = compaction.status(store)
    except StacchipError as exc:  # the per-item layout is current; the next run compacts what is pending
        raise _failure(exc, "compacting the combined index") from exc
    if report["ran"]:
        summary = (f"Compacted tier: {report['items_compacted']} pending items ({report['delta_rows']} rows) folded into "
                   f"{report['runs_written']} new runs, {report['merges']} merges, generation {report['generation']}; "
                   f"{status['runs']} runs, {status['run_rows']} rows, {status['pending_items']} items pending.")
        context.log.info(summary)
    else:
        report["reason"] = reason
        summary = f"Compacted tier: not compacted ({reason})."
    return {"report": report, "status": status, "summary": summary}


def update_combined_index(context: AssetExecutionContext, config: CombinedIndexConfig, storage: StorageResource) -> MaterializeResult:
    store = storage.storage()
    combined = CombinedIndex(store)
    previous = _previous_state(context)
    rebuild = config.full_rebuild
    state: dict[str, Any] = {"event_cursor": None, "items": 0, "rows": 0, "by_collection": {}, "version": ""}
    if previous is not None and not config.full_rebuild:
        state.update(previous)
    committed = state.get("journal")  # the combined journal of the last recorded update (see combine.py)
    if rebuild:
        _, last = changed_items_since(context.instance, None)
        report = combined.sync(journal=context.run_id, committed=committed)
        # totals are recounted from the files below: whatever journal is there is accounted for
        state.update({"event_cursor": last, "by_collection": {}, "journal": combined.journal_id()})
        for (collection, _item), entry in combined.entries().items():
            totals = state["by_collection"].setdefault(collection, {"items": 0, "rows": 0})
            totals["items"] += 1
            totals["rows"] += store.parquet_num_rows(entry.key)
        state["items"] = sum(e["items"] for e in state["by_collection"].values())
        state["rows"] = sum(e["rows"] for e in state["by_collection"].values())
        changes = sorted(report.upserted + report.removed)
        item_versions: dict[str, str] = {}
    else:
        changed, last = changed_items_since(context.instance, state.get("event_cursor"))
        item_versions = changed
        keys = [split_item_partition_key(k) for k in sorted(changed)]
        report = combined.update(keys, journal=context.run_id, committed=committed)
        _apply_totals(state, report)
        state["event_cursor"] = last
        if keys:
            state["journal"] = context.run_id
        changes = keys
    # data version: a rolling hash over the updates (O(changes)); unchanged when nothing changed
    digest = hashlib.sha256(str(state.get("version", "")).encode())
    for collection, item_id in changes:
        info = store.info(store.index_key(collection, item_id))
        version = item_versions.get(f"{collection}/{item_id}") or f"size:{info.size if info else -1}"
        digest.update(f"{collection}/{item_id}:{report.rows_by_item.get((collection, item_id), 0)}:{version}".encode())
    state["version"] = digest.hexdigest() if changes or not state.get("version") else state["version"]
    context.log.info(
        "combined index: %d items changed (%d rows added, %d removed); %d items, %d rows in all",
        report.items_changed, report.rows_added, report.rows_removed, state["items"], state["rows"],
    )
    compacted = compact_combined(context, store, config.compaction)
    per_collection = _md_table(
        ["collection", "items", "chips"],
        [(c, e["items"], e["rows"]) for c, e in sorted(state["by_collection"].items())],
    )
    changed_list = ", ".join(f"{c}/{i}" for c, i in changes[:20]) + (f" and {len(changes) - 20} more" if len(changes) > 20 else "")
    summary = "\n".join([
        f"**{state['rows']}** chips from **{state['items']}** items in `{combined.uri}`.",
        "",
        per_collection,
        "",
        f"This update: {report.items_changed} items changed ({changed_list or 'none'}), "
        f"{report.rows_added} rows written, {report.rows_removed} replaced or removed.",
        "",
        f"Read it with `geopandas.read_parquet({combined.uri!r})` or "
        "`stacchip_assets.index.combined.read_combined(base)`; pixels with `stacchip_assets.index.reader.read_chip(row)`.",
        "",
        compacted["summary"],
    ])
    return MaterializeResult(
        metadata={
            "dagster/row_count": MetadataValue.int(int(state["rows"])),
            "dagster/column_schema": index_table_schema(),
            "items": MetadataValue.int(int(state["items"])),
            "items_changed": MetadataValue.int(report.items_changed),
            "rows_added": MetadataValue.int(report.rows_added),
            "rows_removed": MetadataValue.int(report.rows_removed),
            "path": MetadataValue.path(combined.uri),
            "summary": MetadataValue.md(summary),
            "full_rebuild": MetadataValue.bool(bool(rebuild)),
            "state": MetadataValue.json(state),
            "compaction": MetadataValue.json(compacted["report"]),
            "compacted_tier": MetadataValue.json(compacted["status"]),
        },
        data_version=DataVersion(state["version"]),
    )


__all__ = [
    "CHIP_INDEX_KEY", "COMBINED_INDEX_KEY", "CombinedIndexConfig", "ITEM_PARTITIONS_NAME",
    "STAC_ITEMS_KEY", "build_assets", "changed_items_since", "item_partition_key", "item_partitions",
    "split_item_partition_key",
]
