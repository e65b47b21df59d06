"""Shared helpers of the storage/combine/Dagster tests: the sample catalog (generated once per test
session, copied per test), Definitions wired to a copy, and materialization shortcuts."""

from __future__ import annotations

import contextlib
import json
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pystac

from stacchip_assets.dagster_defs import (
    ITEM_PARTITIONS_NAME,
    ChipSettingsResource,
    StacSourceResource,
    StorageResource,
    build_definitions,
    item_partition_key,
)
from stacchip_assets.dagster_defs.batching import RANGE_END_TAG, RANGE_START_TAG
from stacchip_assets.dagster_defs.checks import combined_index_checks
from stacchip_assets.demo.sample_data import SAMPLE_COLLECTIONS, ensure_sample_catalog

ALL_KEYS = [item_partition_key(c, i) for c, ids in SAMPLE_COLLECTIONS.items() for i in ids]
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def shared_sample(tmp_path_factory) -> Path:
    """catalog.json of the sample catalog, generated once per session (the marker makes reruns free)."""
    return ensure_sample_catalog(tmp_path_factory.getbasetemp() / "stacchip-sample-shared")


def copy_catalog(catalog_json: Path, dest: Path) -> Path:
    """A private, editable copy of a catalog folder; returns its catalog.json."""
    shutil.copytree(catalog_json.parent, dest)
    return dest / "catalog.json"


def item_json_path(catalog_json: Path, collection: str, item_id: str) -> Path:
    return catalog_json.parent / collection / item_id / f"{item_id}.json"


def edit_item(catalog_json: Path, collection: str, item_id: str, **properties: Any) -> None:
    """Change properties of an item in place (the JSON file, as an editor would)."""
    path = item_json_path(catalog_json, collection, item_id)
    data = json.loads(path.read_text())
    for key, value in properties.items():
        if value is None:
            data["properties"].pop(key, None)
        else:
            data["properties"][key] = value
    path.write_text(json.dumps(data, indent=1))


def add_item_copy(catalog_json: Path, collection: str, item_id: str, new_id: str, updated: str) -> None:
    """Add a new item to the catalog: a clone of `item_id` with another id, linked from its collection."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        catalog = pystac.Catalog.from_file(str(catalog_json))
        coll = catalog.get_child(collection)
        source = coll.get_item(item_id)
        source.make_asset_hrefs_absolute()
        clone = source.clone()
        clone.id = new_id
        clone.properties["updated"] = updated
        coll.add_item(clone)
        catalog.normalize_hrefs(str(catalog_json.parent))
        catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)


def resources(catalog_json: Path, base: Path, **chip: Any) -> dict[str, Any]:
    return {
        "stac_source": StacSourceResource(catalog_path=str(catalog_json)),
        "storage": StorageResource(base=str(base)),
        "chip_settings": ChipSettingsResource(**chip),
    }


class Graph:
    """Definitions on a catalog copy + a storage base, with materialization shortcuts."""

    def __init__(self, catalog_json: Path, base: Path, instance: dg.DagsterInstance, **chip: Any) -> None:
        self.catalog = catalog_json
        self.base = base
        self.instance = instance
        self.resources = resources(catalog_json, base, **chip)
        self.defs = build_definitions(resources=self.resources)
        self.assets = {a.key.to_user_string(): a for a in self.defs.assets}
        self.sensor = next(s for s in self.defs.sensors if s.name == "stac_item_sensor")

    def with_chip_settings(self, **chip: Any) -> Graph:
        return Graph(self.catalog, self.base, self.instance, **chip)

    def add_partitions(self, keys=ALL_KEYS) -> None:
        self.instance.add_dynamic_partitions(ITEM_PARTITIONS_NAME, list(keys))

    def index(self, key: str, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
        return dg.materialize([self.assets["chip_index"]], partition_key=key, instance=self.instance,
                              resources=self.resources, raise_on_error=raise_on_error, run_config=QUIET)

    def combine(self, **config: Any) -> dg.ExecuteInProcessResult:
        run_config = dict(QUIET)
        if config:
            run_config["ops"] = {"combined_index": {"config": config}}
        return dg.materialize([self.assets["combined_index"], *combined_index_checks], instance=self.instance,
                              resources=self.resources, run_config=run_config)

    def stale_status(self, key: str):
        """What the UI shows for an asset (Dagster's own resolver; it has no public API, so this uses
        the helper Dagster's test suite uses)."""
        from dagster._utils.test.data_versions import get_stale_status_resolver

        return get_stale_status_resolver(self.instance, list(self.defs.assets)).get_status(dg.AssetKey(key))

    def latest(self, key: str, partition: str | None = None):
        event = self.instance.get_latest_materialization_event(dg.AssetKey(key)) if partition is None else None
        if partition is not None:
            records = self.instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), asset_partitions=[partition]), limit=1
            ).records
            event = records[0].event_log_entry if records else None
        return event.asset_materialization if event is not None else None


def index_everything(graph: Graph) -> None:
    """Materialize every sample partition, then the combined index (with its checks). The partitions
    are indexed by one run over their range (the batch path a backfill or the sensor takes; it records
    for each partition what a single-partition run records, tests/dagster/test_backfill.py): one run
    instead of one per item keeps the tests that start from a fresh graph fast."""
    graph.add_partitions()
    result = dg.materialize([graph.assets["chip_index"]], instance=graph.instance, resources=graph.resources,
                            run_config=QUIET, tags={RANGE_START_TAG: ALL_KEYS[0], RANGE_END_TAG: ALL_KEYS[-1]})
    assert result.success
    assert {e.partition for e in result.get_asset_materialization_events()} == set(ALL_KEYS)
    assert graph.combine().success


@contextlib.contextmanager
def in_memory_instance() -> Iterator[dg.DagsterInstance]:
    """A Dagster instance whose storages live in memory (``DagsterInstance.ephemeral``): the in-process
    tests run 2-3x faster than on ``instance_for_test``'s SQLite files (an in-process combine run: 0.34
    s against 1.1 s). Tests that need a daemon, a run launcher or a second process use
    ``instance_for_test`` (tests/e2e)."""
    instance = dg.DagsterInstance.ephemeral()
    try:
        yield instance
    finally:
        instance.dispose()


def materialized_sample_graph(tmp_path_factory) -> Iterator[Graph]:
    """The whole sample graph materialized once (the `sample_graph` session fixture of tests/conftest.py):
    every chip_index partition and the combined index, on a catalog copy and a temporary instance. The
    modules that share it only read it or add materializations downstream of it (see their fixtures)."""
    root = tmp_path_factory.mktemp("sample-graph")
    catalog = copy_catalog(shared_sample(tmp_path_factory), root / "catalog")
    with dg.instance_for_test() as instance:
        graph = Graph(catalog, root / "base", instance)
        index_everything(graph)
        yield graph


def launch_tick_runs(instance: dg.DagsterInstance, defs: dg.Definitions, result: dg.SensorResult,
                     sensor: str = "stac_item_sensor", raise_on_error: bool = True) -> list[tuple[dg.RunRequest, Any]]:
    """What the daemon does with a sensor tick's result: add its partitions, then run each request
    in process unless its run key was launched before. Returns (request, in-process result) of each run."""
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    job = defs.resolve_job_def("chip_index_job")
    launched = []
    for request in result.run_requests or []:
        tags = {"dagster/sensor_name": sensor, "dagster/run_key": request.run_key}
        if instance.get_runs(filters=dg.RunsFilter(tags=tags), limit=1):
            continue  # the daemon never launches a run key twice
        outcome = job.execute_in_process(partition_key=request.partition_key, instance=instance,
                                         tags={**request.tags, **tags}, run_config=QUIET, raise_on_error=raise_on_error)
        launched.append((request, outcome))
    return launched
