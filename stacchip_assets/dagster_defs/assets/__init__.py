"""The three assets: STAC item sets -> per-item chip indexes -> combined index (one module each).

Wiring only: the work is done by `io.stac_source`, `index.item_index`, `index.combined` and
`index.combined_state`; these modules turn their results into materialization metadata, data
versions and check results.

- `stac_items`: one static partition per configured collection (`stac_items.py`);
- `chip_index`: one dynamic partition per STAC item, key ``{collection}/{item_id}`` (`chip_index.py`;
  a backfill run over many partitions: `batch.py`);
- `combined_index`: unpartitioned, incremental from the event log (`combined_index.py`).
Keys, partitions, code versions and pools are in `common.py`.
"""

from __future__ import annotations

from dagster import AssetsDefinition, StaticPartitionsDefinition

from stacchip_assets.dagster_defs.assets.batch import index_batch
from stacchip_assets.dagster_defs.assets.chip_index import (
    BACKFILL_PARTITIONS_PER_RUN_ENV,  # noqa: F401 (re-exported)
    DEFAULT_BACKFILL_PARTITIONS_PER_RUN,
    backfill_partitions_per_run,
    build_chip_index,
    partition_indexer,
)
from stacchip_assets.dagster_defs.assets.combined_index import (
    CombinedIndexConfig,
    build_combined_index,
    changed_items_since,
    compact_combined,
    update_combined_index,
)
from stacchip_assets.dagster_defs.assets.common import (
    CHIP_INDEX_CHECKS,
    CHIP_INDEX_CODE_VERSION,
    CHIP_INDEX_KEY,
    COLUMN_DOCS,
    COMBINE_POOL,
    COMBINED_INDEX_CODE_VERSION,
    COMBINED_INDEX_KEY,
    INDEX_POOL,
    ITEM_PARTITIONS_NAME,
    STAC_ITEMS_CODE_VERSION,
    STAC_ITEMS_KEY,
    index_table_schema,
    item_partition_key,
    item_partitions,
    split_item_partition_key,
)
from stacchip_assets.dagster_defs.assets.metadata import chip_index_metadata
from stacchip_assets.dagster_defs.assets.stac_items import build_stac_items
from stacchip_assets.dagster_defs.presets import CollectionConfig
from stacchip_assets.io.settings import Settings


def build_assets(collections: list[CollectionConfig], settings: Settings | None = None,
                 ) -> tuple[AssetsDefinition, AssetsDefinition, AssetsDefinition]:
    """The assets for the configured collections: (stac_items, chip_index, combined_index);
    `settings` (default: `load_settings()`) sets the backfill batch size."""
    by_collection = {c.collection: c for c in collections}
    collection_partitions = StaticPartitionsDefinition([c.collection for c in collections])
    return (build_stac_items(by_collection, collection_partitions), build_chip_index(by_collection, settings),
            build_combined_index(settings))


__all__ = [
    "BACKFILL_PARTITIONS_PER_RUN_ENV", "CHIP_INDEX_CHECKS", "CHIP_INDEX_CODE_VERSION", "CHIP_INDEX_KEY", "COLUMN_DOCS",
    "COMBINE_POOL", "COMBINED_INDEX_CODE_VERSION", "COMBINED_INDEX_KEY", "CombinedIndexConfig",
    "DEFAULT_BACKFILL_PARTITIONS_PER_RUN", "INDEX_POOL", "ITEM_PARTITIONS_NAME", "STAC_ITEMS_CODE_VERSION",
    "STAC_ITEMS_KEY", "backfill_partitions_per_run", "build_assets", "changed_items_since", "chip_index_metadata",
    "compact_combined", "index_batch", "index_table_schema", "item_partition_key", "item_partitions",
    "partition_indexer", "split_item_partition_key", "update_combined_index",
]
