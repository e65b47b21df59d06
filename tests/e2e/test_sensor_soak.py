"""The item sensor evaluated 100 times against a real STAC API that fails at random still indexes
every item version exactly once, and the combined index ends equal to a clean run.

stac-fastapi-pgstac (the `stac_api` fixture) behind tests/support/fault_proxy.py (seeded: HTTP 429/5xx,
dropped connections, an item repeated at the top of the next page, and every 10th tick a burst of
errors longer than the source's retries); items, real sample-catalog Sentinel-2 items under new ids
with their COGs served by `cog_server`, are posted and updated (PUT, `updated` moves on) between
ticks, straight to the API. Each tick is the code location's `stac_item_sensor` evaluated with
`build_sensor_context` on a real instance with the cursor of the last successful tick (a failed tick
keeps it, as the daemon does); its SensorResult is carried out as the daemon would: partitions added,
run keys already launched skipped, the other runs executed in process. The runs read items through
the same faulty proxy.
"""

from __future__ import annotations

import collections
import re
import time
import uuid

import dagster as dg
import pytest

from stacchip_assets.dagster_defs import (
    ChipSettingsResource,
    CollectionConfig,
    StacSourceResource,
    StorageResource,
    build_definitions,
    item_partition_key,
)
from stacchip_assets.index.combined import CombinedIndex
from stacchip_assets.io.stac_source import SearchParams, canonical_time

from tests.e2e.test_e2e_stac_api import ASSETS, IDS, S2, SENSOR, SETTINGS
from tests.support.dagster_support import QUIET, launch_tick_runs
from tests.support.fault_proxy import fault_proxy
from tests.support.servers import collection_json, item_json

TICKS = 100
FAULTS = {"fail_rate": 0.15, "statuses": [429, 500, 502, 503, 504], "drop_rate": 0.05, "repeat_rate": 0.3}
#: Items posted (new ids, sample COGs) at these ticks; updates (PUT) of earlier items at others.
POSTS = {0: [0], 5: [1, 2], 10: [3], 15: [4], 18: [5, 6, 7], 25: [8], 31: [9], 38: [10, 11], 44: [12], 52: [13, 14], 58: [15]}
PUTS = {20: [0], 35: [3], 50: [0], 62: [7], 64: [14]}


def soak_id(n: int) -> str:
    return f"{IDS[n % len(IDS)]}-soak{n:02d}"


class Graph:
    """The code location on one API collection (through `api_url`), a storage base and an instance."""

    def __init__(self, api_url: str, collection: str, base, instance, **source) -> None:
        self.collection, self.instance = collection, instance
        self.resources = {
            "stac_source": StacSourceResource(api_url=api_url, **source),
            "storage": StorageResource(base=str(base)),
            "chip_settings": ChipSettingsResource(),
        }
        config = CollectionConfig(collection=collection, search=SearchParams(), chips=SETTINGS)
        self.defs = build_definitions([config], resources=self.resources)
        self.sensor = next(s for s in self.defs.sensors if s.name == SENSOR)
        self.store = self.resources["storage"].storage()

    def tick(self, cursor: str | None) -> dg.SensorResult:
        context = dg.build_sensor_context(instance=self.instance, cursor=cursor, definitions=self.defs,
                                          resources=self.resources)
        return self.sensor(context)

    def carry_out(self, result: dg.SensorResult) -> list[tuple[str, bool]]:
        """What the daemon does with a tick's result: (run key, success) of the runs it launched."""
        return [(request.run_key, outcome.success) for request, outcome in
                launch_tick_runs(self.instance, self.defs, result, SENSOR, raise_on_error=False)]

    def combine(self) -> None:
        outcome = self.defs.resolve_job_def("combined_index_job").execute_in_process(instance=self.instance, run_config=QUIET)
        assert outcome.success
        checks = {e.check_name: e.passed for e in outcome.get_asset_check_evaluations()}
        assert checks and all(checks.values()), checks

    def combined(self) -> list[str]:
        table = CombinedIndex(self.store).read(columns=["collection", "chipid"])
        return sorted(f"{c}/{i}" for c, i in zip(table["collection"].to_pylist(), table["chipid"].to_pylist()))

    def per_item_rows(self) -> dict[str, int]:
        return {item_id: self.store.parquet_num_rows(entry.key) for _, item_id, entry in self.store.indexed_items()}


@pytest.fixture(autouse=True)
def one_item_per_run(monkeypatch):
    """These tests check the per-item semantics (a run per item version); batched runs (the default,
    STACCHIP_BACKFILL_PARTITIONS_PER_RUN=100) are tested in test_ingest_batching.py."""
    monkeypatch.setenv("STACCHIP_BACKFILL_PARTITIONS_PER_RUN", "1")


@pytest.fixture()
def soak_collection(stac_api, sample_catalog):
    collection = f"soak-{uuid.uuid4().hex[:8]}"
    stac_api.create_collection(collection_json(sample_catalog, S2, collection))
    try:
        yield collection
    finally:
        stac_api.delete_collection(collection)


def test_100_ticks_with_a_faulty_stac_api_index_every_item_version_exactly_once(
        stac_api, cog_server, sample_catalog, soak_collection, tmp_path):
    started = time.monotonic()
    collection = soak_collection
    published: dict[str, str] = {}  # item id -> its latest `updated`
    versions: list[tuple[str, str]] = []  # every (item id, updated) published
    clock = iter(range(1, 1000))

    def publish(n: int, put: bool) -> None:
        minute = next(clock)
        updated = f"2026-06-01T{minute // 60:02d}:{minute % 60:02d}:00Z"
        data = item_json(sample_catalog, S2, IDS[n % len(IDS)], collection, cog_server, updated=updated, assets=ASSETS)
        data["id"] = soak_id(n)
        (stac_api.put_item if put else stac_api.post_item)(data)
        published[data["id"]] = updated
        versions.append((data["id"], canonical_time(updated)))

    requested: list[tuple[int, str, str, str]] = []  # (tick, run key, partition, item_updated tag)
    launched: list[tuple[str, bool]] = []
    failed_ticks: list[tuple[int, str]] = []
    cursor: str | None = None
    with dg.instance_for_test() as instance, fault_proxy(stac_api.url, seed=6) as proxy:
        graph = Graph(proxy.url, collection, tmp_path / "base", instance, page_size=1, max_items_per_tick=3,
                      timeout_seconds=5, max_retries=1, retry_backoff_seconds=0.05, retry_max_wait_seconds=0.2)
        for tick in range(TICKS):
            for n in POSTS.get(tick, []):
                publish(n, put=False)
            for n in PUTS.get(tick, []):
                publish(n, put=True)
            # every 10th tick starts with a burst of errors longer than the source's retries
            proxy.configure(**FAULTS, fail_next=2 if tick % 10 == 3 else 0)
            try:
                result = graph.tick(cursor)
            except Exception as exc:  # noqa: BLE001 - a failed tick, whatever it raised, keeps the cursor
                failed_ticks.append((tick, f"{type(exc).__name__}: {exc}"))
                continue
            requested += [(tick, r.run_key, r.partition_key, r.tags["stacchip/item_updated"])
                          for r in result.run_requests or []]
            launched += graph.carry_out(result)
            cursor = result.cursor
        stats = proxy.stats()
        proxy.clear()
        graph.combine()
        soak_ids, soak_rows = graph.combined(), graph.per_item_rows()

        materialized = {}
        for item_id in published:
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("chip_index"),
                                      asset_partitions=[item_partition_key(collection, item_id)]), limit=10).records
            materialized[item_id] = sorted(r.asset_materialization.metadata["stac_item_updated"].value for r in records)

    soak_seconds = time.monotonic() - started
    print(f"\n[soak] {TICKS} ticks in {soak_seconds:.0f} s: {len(failed_ticks)} failed, {len(requested)} runs requested, "
          f"{len(launched)} launched ({sum(not ok for _, ok in launched)} failed); proxy {stats}")
    for tick, error in failed_ticks:
        print(f"   tick {tick} failed: {error[:300]}")

    # some ticks failed (the bursts at least), each with the sensor's clear error; the cursor stayed
    assert len(failed_ticks) >= TICKS // 10 and stats["failed"] and stats["dropped"] and stats["repeated"], stats
    for _tick, error in failed_ticks:
        assert re.match(r"StacSourceError: polling STAC API http://127\.0\.0\.1:\d+ failed, cursor kept: ", error), error

    # every published version requested exactly once: no run key twice, no (item, updated) twice
    keys = [key for _, key, _, _ in requested]
    assert len(keys) == len(set(keys)), [k for k, c in collections.Counter(keys).items() if c > 1]
    pairs = [(partition.split("/", 1)[1], updated) for _, _, partition, updated in requested]
    assert len(pairs) == len(set(pairs))
    assert sorted(pairs) == sorted(versions)
    assert sorted(key for key, _ in launched) == sorted(keys) and all(ok for _, ok in launched), launched

    # every item indexed, its latest materialization at its latest version
    assert set(soak_rows) == set(published)
    for item_id, updated in published.items():
        assert materialized[item_id][-1] == canonical_time(updated), (item_id, materialized[item_id])

    # the combined index: each item's chips exactly once, as many as the per-item indexes, as a clean run
    assert len(soak_ids) == len(set(soak_ids)) == sum(soak_rows.values())
    with dg.instance_for_test() as instance:
        clean = Graph(stac_api.url, collection, tmp_path / "clean", instance, max_items_per_tick=100)
        result = clean.tick(None)
        assert len(result.run_requests) == len(published)
        assert all(ok for _, ok in clean.carry_out(result))
        clean.combine()
        assert soak_ids == clean.combined()
        assert soak_rows == clean.per_item_rows()
