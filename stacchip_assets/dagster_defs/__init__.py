"""The Dagster layer of stacchip_assets: assets, checks, sensors, resources and jobs (wiring only).

`build_definitions()` assembles a `Definitions` for a list of collections (default: the configured
ones, see `presets`); `stacchip_assets.definitions.defs` is the code location's object.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dagster import AssetSelection, Definitions, ExecutorDefinition, define_asset_job, in_process_executor  # noqa: F401

from stacchip_assets.dagster_defs.assets import (
    CHIP_INDEX_KEY,
    COMBINED_INDEX_KEY,
    ITEM_PARTITIONS_NAME,
    STAC_ITEMS_KEY,
    build_assets,
    item_partition_key,
    item_partitions,
    split_item_partition_key,
)
from stacchip_assets.dagster_defs.checks import combined_index_checks
from stacchip_assets.dagster_defs.combined_trigger import all_indexed_items_combined, build_combined_trigger
from stacchip_assets.dagster_defs.presets import CollectionConfig, load_collections
from stacchip_assets.dagster_defs.query import chip_query_job
from stacchip_assets.dagster_defs.resources import (
    ChipSettingsResource,
    StacSourceResource,
    StorageResource,
    default_resources,
)
from stacchip_assets.dagster_defs.runtime import (
    CHIP_INDEX_MAX_RUNTIME_SECONDS,
    COMBINED_INDEX_MAX_RUNTIME_SECONDS,
    max_runtime_tags,
)
from stacchip_assets.dagster_defs.sensors import COMBINE_TAG, build_sensors
from stacchip_assets.dagster_defs.training import build_training_assets, default_dask_resource
from stacchip_assets.io import settings as settings_module
from stacchip_assets.io.settings import Settings, load_settings

#: Environment variable that chooses the executor of every job (read by `io.settings` when the code location loads).
EXECUTOR_ENV = settings_module.EXECUTOR_ENV
#: STACCHIP_EXECUTOR value -> (module, attribute) of the executor; the last two need `.[deploy]`.
EXECUTORS = {
    "in_process": ("dagster", "in_process_executor"),
    "multiprocess": ("dagster", "multiprocess_executor"),
    "celery": ("dagster_celery", "celery_executor"),
    "k8s": ("dagster_k8s", "k8s_job_executor"),
}


def executor_from_env(value: str | None = None, settings: Settings | None = None) -> ExecutorDefinition:
    """The executor of every job, named by STACCHIP_EXECUTOR (or `value`): ``in_process`` (default;
    a chip_index run is one step and a multiprocess step costs ~2 s of start-up), ``multiprocess``,
    ``celery`` (steps on dagster-celery workers) or ``k8s`` (a Kubernetes Job per step, dagster-k8s).
    The distributed ones are imported only when chosen: the default install needs neither package."""
    import importlib

    from stacchip_assets.errors import StacchipError

    if value is None:
        value = (load_settings() if settings is None else settings).executor
    name = value.strip().lower() or "in_process"
    if name not in EXECUTORS:
        raise StacchipError(f"{EXECUTOR_ENV}={name!r} is not an executor; choose one of {', '.join(EXECUTORS)}")
    module_name, attribute = EXECUTORS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise StacchipError(
            f"{EXECUTOR_ENV}={name} needs the {module_name.replace('_', '-')} package, which cannot be imported "
            f"({exc}); install it with: pip install 'stacchip-assets[deploy]'"
        ) from exc
    return getattr(module, attribute)


def build_definitions(
    collections: list[CollectionConfig] | None = None,
    resources: Mapping[str, Any] | None = None,
) -> Definitions:
    """Definitions for `collections` (default: `load_collections()`) with `resources` overriding the defaults.
    The STACCHIP_* settings are read once, here (`io.settings.load_settings`)."""
    settings = load_settings()
    collections = load_collections(settings=settings) if collections is None else list(collections)
    stac_items, chip_index, combined_index = build_assets(collections, settings)
    executor = executor_from_env(settings=settings)  # STACCHIP_EXECUTOR, default in_process
    stac_items_job = define_asset_job(
        "stac_items_job", selection=AssetSelection.assets(stac_items),
        executor_def=executor, description="Search and store the item set of one collection.",
    )
    # dagster/max_runtime: with run monitoring on (dagster.yaml), a run whose process died (kill -9,
    # a lost machine) is cancelled after this long instead of holding its queue slot for good
    # (runs of the implicit asset job get chip_index's from the asset itself, see runtime.py).
    chip_index_job = define_asset_job(
        "chip_index_job", selection=AssetSelection.assets(chip_index), tags=max_runtime_tags(CHIP_INDEX_MAX_RUNTIME_SECONDS),
        executor_def=executor, description="Index one STAC item (one run per item, in process).",
    )
    combined_index_job = define_asset_job(
        # the backlog check is the combined trigger's to report (combined_trigger.py): a run that planned it
        # and then failed would leave its latest execution without a result
        "combined_index_job", selection=AssetSelection.assets(combined_index) - AssetSelection.checks(all_indexed_items_combined),
        executor_def=executor,
        tags={**COMBINE_TAG, **max_runtime_tags(COMBINED_INDEX_MAX_RUNTIME_SECONDS)},
        description="Bring the combined index up to date and run its checks.",
    )
    training_set, band_statistics = build_training_assets(collections)
    training_job = define_asset_job(
        "training_job", selection=AssetSelection.assets(training_set, band_statistics), executor_def=executor,
        description="Write a training set from the combined index, then its band statistics.",
    )
    all_resources: dict[str, Any] = default_resources(settings)
    all_resources.setdefault("dask", default_dask_resource(settings))
    all_resources.update(resources or {})
    stac_item_sensor = build_sensors(collections, chip_index_job, settings, all_resources.get("storage"))
    combined_index_trigger = build_combined_trigger(combined_index_job, settings)
    return Definitions(
        assets=[stac_items, chip_index, combined_index, training_set, band_statistics],
        asset_checks=[*combined_index_checks, all_indexed_items_combined],
        jobs=[stac_items_job, chip_index_job, combined_index_job, training_job, chip_query_job],
        sensors=[stac_item_sensor, combined_index_trigger],
        resources=all_resources,
        executor=executor,
    )


__all__ = [
    "CHIP_INDEX_KEY", "COMBINED_INDEX_KEY", "ChipSettingsResource", "CollectionConfig", "ITEM_PARTITIONS_NAME",
    "STAC_ITEMS_KEY", "StacSourceResource", "StorageResource", "build_definitions", "item_partition_key",
    "item_partitions", "load_collections", "split_item_partition_key",
]
