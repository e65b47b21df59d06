"""``chip_index``: the chip index of one STAC item (dynamic partition ``{collection}/{item_id}``).

Dagster forbids only ``...`` and control characters in partition keys; ids are validated, so neither
holds ``/``. A run indexes its item (`index.item_index`), writes its GeoParquet and quicklook, and
reports the checks inline (one step per run); a backfill run over many partitions goes to `batch`.
"""

import warnings
from collections.abc import Callable, Iterator
from typing import Any

from dagster import (
    AllPartitionMapping,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    AssetsDefinition,
    BackfillPolicy,
    Backoff,
    BetaWarning,
    DataVersion,
    MaterializeResult,
    PreviewWarning,
    RetryPolicy,
    asset,
)

from stacchip_assets.dagster_defs.assets.batch import index_batch
from stacchip_assets.dagster_defs.assets.common import (
    CHIP_INDEX_CHECKS,
    CHIP_INDEX_CODE_VERSION,
    CHIP_INDEX_KEY,
    INDEX_POOL,
    STAC_ITEMS_KEY,
    failure,
    item_partition_key,
    item_partitions,
    split_item_partition_key,
)
from stacchip_assets.dagster_defs.assets.metadata import chip_index_metadata
from stacchip_assets.dagster_defs.presets import CollectionConfig
from stacchip_assets.dagster_defs.resources import ChipSettingsResource, StacSourceResource, StorageResource
from stacchip_assets.dagster_defs.runtime import CHIP_INDEX_MAX_RUNTIME_SECONDS, protect_run
from stacchip_assets.errors import StacchipError
from stacchip_assets.index.item_index import ItemIndexResult, index_item
from stacchip_assets.io.settings import BACKFILL_PARTITIONS_PER_RUN_ENV, Settings, load_settings  # noqa: F401 (re-exported)

#: Partitions per run of a chip_index backfill (``BackfillPolicy.multi_run``); each run indexes its
#: items one after the other in one process, so 100 items cost one run start instead of 100.
DEFAULT_BACKFILL_PARTITIONS_PER_RUN = Settings().backfill_partitions_per_run


def backfill_partitions_per_run(settings: Settings | None = None) -> int:
    """``STACCHIP_BACKFILL_PARTITIONS_PER_RUN`` (default 100), from `io.settings`, read when the code location loads."""
    return (load_settings() if settings is None else settings).backfill_partitions_per_run


def partition_indexer(context: AssetExecutionContext, by_collection: dict[str, CollectionConfig],
                      stac_source: StacSourceResource, storage: StorageResource,
                      chip_settings: ChipSettingsResource, keys: list[str] | None = None) -> Callable[[str], ItemIndexResult]:
    """A function indexing the item of one partition (raises StacchipError); the STAC source,
    the storage and the href policy are opened once for all the partitions of a run, and the items of
    `keys` (a batch) are fetched up front, a few searches for all (`StacSource.get_items`)."""
    source, store, policy = stac_source.source(), storage.storage(), stac_source.href_policy()
    fetched: dict[str, Any] = {}
    ids_of: dict[str, list[str]] = {}
    for key in keys or []:
        collection, item_id = split_item_partition_key(key)
        ids_of.setdefault(collection, []).append(item_id)
    for collection, item_ids in ids_of.items():
        try:
            items = source.get_items(collection, item_ids)
        except Exception as exc:  # noqa: BLE001 - each item is then fetched (and fails, named) on its own
            context.log.warning("fetching the %d items of %r at once failed, one by one instead: %s",
                                len(item_ids), collection, exc)
            continue
        fetched.update({item_partition_key(collection, i): item for i, item in items.items()})
    if fetched:
        context.log.info("fetched %d items from %s", len(fetched), stac_source.describe())

    def index_partition(key: str) -> ItemIndexResult:
        collection, item_id = split_item_partition_key(key)
        config = by_collection.get(collection)
        if config is None:
            context.log.warning("collection %r is not configured any more: default chip settings", collection)
        settings = chip_settings.for_collection(config)
        item = fetched.pop(key, None) or source.get_item(collection, item_id)
        if isinstance(item, StacchipError):
            raise item
        with storage.gdal_env():  # GDAL settings, S3 endpoint/credentials and href signer of the resource
            return index_item(item, store, settings, collection=collection, href_policy=policy)

    return index_partition


def _index_one(context: AssetExecutionContext, index_one: Callable[[str], ItemIndexResult],
               source: str, image_url_prefix: str | None = None) -> MaterializeResult:
    """A single-partition run: its materialization with the check results inline."""
    collection, item_id = split_item_partition_key(context.partition_key)
    try:
        result = index_one(context.partition_key)
    except Exception as exc:  # noqa: BLE001 (any error: retried only if it says it is transient)
        raise failure(exc, f"indexing {collection}/{item_id}") from exc
    context.log.info("%s: %d chips kept, %d dropped", context.partition_key, result.chips_kept, result.chips_dropped)
    return MaterializeResult(
        metadata=chip_index_metadata(result, source, image_url_prefix),
        check_results=[
            AssetCheckResult(check_name=o.name, passed=o.passed, description=o.description, metadata=o.metadata,
                             severity=AssetCheckSeverity.ERROR)
            for o in result.checks
        ],
        data_version=DataVersion(result.content_hash),
    )


def build_chip_index(by_collection: dict[str, CollectionConfig], settings: Settings | None = None) -> AssetsDefinition:
    """The chip_index asset (per-partition checks, retries for transient errors, batched backfills)."""
    # per-partition check results (preview) and backfill policies (beta) warn in Dagster 1.13
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PreviewWarning)
        warnings.simplefilter("ignore", BetaWarning)
        check_specs = [
            AssetCheckSpec(name, asset=CHIP_INDEX_KEY, description=doc, partitions_def=item_partitions)
            for name, doc in CHIP_INDEX_CHECKS
        ]

        @asset(
            key=CHIP_INDEX_KEY,
            partitions_def=item_partitions,
            deps=[AssetDep(STAC_ITEMS_KEY, partition_mapping=AllPartitionMapping())],
            check_specs=check_specs,
            code_version=CHIP_INDEX_CODE_VERSION,
            # transient errors only (see common.failure); first delay STACCHIP_RETRY_DELAY_SECONDS (5), then doubled
            retry_policy=RetryPolicy(max_retries=2, delay=(load_settings() if settings is None else settings)
                                     .retry_delay_seconds, backoff=Backoff.EXPONENTIAL),
            backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=backfill_partitions_per_run(settings)),
            output_required=False,  # a batch reports its partitions as events (see batch.index_batch)
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
                    index_one = partition_indexer(context, by_collection, stac_source, storage, chip_settings, keys)
                except StacchipError as exc:
                    raise failure(exc, f"opening the STAC source and storage for {len(keys)} partitions") from exc
                yield from index_batch(context, keys, index_one, stac_source.describe(), storage.image_url_prefix)
                return
            # one partition: opening the source counts as indexing the item (same failure, same retries)
            yield _index_one(context, lambda key: partition_indexer(
                context, by_collection, stac_source, storage, chip_settings)(key), stac_source.describe(),
                storage.image_url_prefix)

    return chip_index
