"""The STAC item sensor on a copy of the sample catalog, and the STAC source it polls."""

from __future__ import annotations

import datetime as dt
import json
import os
import time

import dagster as dg
import pystac
import pytest

from stacchip_assets.dagster_defs import (
    ITEM_PARTITIONS_NAME,
    ChipSettingsResource,
    StacSourceResource,
    StorageResource,
    item_partition_key,
)
from stacchip_assets.dagster_defs.sensors import parse_cursor
from stacchip_assets.demo.sample_data import SAMPLE_COLLECTIONS
from stacchip_assets.errors import StacchipError, StacSourceError
from stacchip_assets.io.stac_source import (
    SELECTION_LEAST_CLOUDY,
    SearchParams,
    StaticCatalogSource,
    canonical_time,
    open_source,
)

from tests.support.dagster_support import (
    ALL_KEYS,
    Graph,
    add_item_copy,
    copy_catalog,
    edit_item,
    in_memory_instance,
    item_json_path,
    shared_sample,
)

S2 = "sentinel-2-l2a"
S2_ITEM = "S2B_31UDQ_20230704_0_L2A"


@pytest.fixture(autouse=True)
def one_item_per_run(monkeypatch):
    """These tests check the per-item semantics (a run per item version); batched runs (the default,
    STACCHIP_BACKFILL_PARTITIONS_PER_RUN=100) are tested in test_ingest_batching.py."""
    monkeypatch.setenv("STACCHIP_BACKFILL_PARTITIONS_PER_RUN", "1")


@pytest.fixture()
def catalog(tmp_path, tmp_path_factory):
    return copy_catalog(shared_sample(tmp_path_factory), tmp_path / "catalog")


@pytest.fixture()
def graph(catalog, tmp_path):
    with in_memory_instance() as instance:
        yield Graph(catalog, tmp_path / "base", instance)


def tick(graph: Graph, cursor: str | None, **source_options) -> tuple[dg.SensorResult, str | None]:
    """One evaluation of the sensor; applies its partition requests to the instance like the daemon."""
    resources = dict(graph.resources)
    if source_options:
        resources["stac_source"] = StacSourceResource(catalog_path=str(graph.catalog), **source_options)
    context = dg.build_sensor_context(instance=graph.instance, cursor=cursor, definitions=graph.defs, resources=resources)
    result = graph.sensor(context)
    for request in result.dynamic_partitions_requests or []:
        graph.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result, result.cursor


def test_first_tick_adds_every_item_then_nothing(graph):
    result, cursor = tick(graph, None)
    assert [r.partitions_def_name for r in result.dynamic_partitions_requests] == [ITEM_PARTITIONS_NAME]
    assert sorted(result.dynamic_partitions_requests[0].partition_keys) == sorted(ALL_KEYS)
    assert sorted(r.partition_key for r in result.run_requests) == sorted(ALL_KEYS)
    for request in result.run_requests:
        collection, item_id = request.partition_key.split("/", 1)
        updated = json.loads(item_json_path(graph.catalog, collection, item_id).read_text())["properties"]["updated"]
        assert request.run_key == f"{request.partition_key}@{canonical_time(updated)}"
    assert set(parse_cursor(cursor)) == set(SAMPLE_COLLECTIONS)
    assert set(graph.instance.get_dynamic_partitions(ITEM_PARTITIONS_NAME)) == set(ALL_KEYS)

    again, cursor2 = tick(graph, cursor)
    assert not again.run_requests and not again.dynamic_partitions_requests
    assert cursor2 == cursor


def test_a_new_item_is_requested_alone(graph):
    _, cursor = tick(graph, None)
    add_item_copy(graph.catalog, S2, S2_ITEM, "S2B_31UDQ_20230714_0_L2A", "2024-01-01T00:00:00Z")
    result, cursor2 = tick(graph, cursor)
    key = item_partition_key(S2, "S2B_31UDQ_20230714_0_L2A")
    assert [r.partition_key for r in result.run_requests] == [key]
    assert result.run_requests[0].run_key == f"{key}@2024-01-01T00:00:00.000000Z"
    assert list(result.dynamic_partitions_requests[0].partition_keys) == [key]
    assert parse_cursor(cursor2)[S2] == ("2024-01-01T00:00:00.000000Z", "S2B_31UDQ_20230714_0_L2A")
    assert tick(graph, cursor2)[0].run_requests == []


def test_an_updated_item_is_reindexed_with_a_new_run_key(graph):
    first, cursor = tick(graph, None)
    old_key = {r.partition_key: r.run_key for r in first.run_requests}[item_partition_key(S2, S2_ITEM)]
    edit_item(graph.catalog, S2, S2_ITEM, updated="2025-02-03T04:05:06.7Z")
    result, _ = tick(graph, cursor)
    assert [r.partition_key for r in result.run_requests] == [item_partition_key(S2, S2_ITEM)]
    assert result.run_requests[0].run_key == f"{S2}/{S2_ITEM}@2025-02-03T04:05:06.700000Z" != old_key
    assert not result.dynamic_partitions_requests  # the partition exists already


def test_without_updated_the_item_created_counts_never_the_file_mtime(graph):
    """An item without `updated` is ordered by its own `created` (else datetime): a file touched later
    moves nothing (a file mtime would move the cursor past items published later)."""
    item_id = "me_m_4406901_ne_19_060_20211006"
    edit_item(graph.catalog, "naip", item_id, updated=None)
    properties = json.loads(item_json_path(graph.catalog, "naip", item_id).read_text())["properties"]
    expected = canonical_time(properties.get("created") or properties["datetime"])
    first, cursor = tick(graph, None)
    key = item_partition_key("naip", item_id)
    assert {r.partition_key: r.run_key for r in first.run_requests}[key] == f"{key}@{expected}"
    assert parse_cursor(cursor)["naip"] == (expected, item_id)
    path = item_json_path(graph.catalog, "naip", item_id)
    later = time.time() + 3600
    os.utime(path, (later, later))
    result, _ = tick(graph, cursor)
    assert result.run_requests == []


def test_items_per_tick_are_capped_and_paged(graph):
    seen: list[str] = []
    cursor = None
    for _ in range(3):
        result, cursor = tick(graph, cursor, max_items_per_tick=2)
        seen += [r.partition_key for r in result.run_requests]
        assert sum(r.partition_key.startswith(S2) for r in result.run_requests) <= 2
    assert sorted(seen) == sorted(ALL_KEYS)  # S2's third item came on the second tick, nothing twice


def test_a_failing_source_fails_the_tick_and_keeps_the_cursor(graph):
    _, cursor = tick(graph, None)
    (graph.catalog.parent / S2 / "collection.json").write_text("{ not json")
    context = dg.build_sensor_context(instance=graph.instance, cursor=cursor, definitions=graph.defs,
                                      resources=graph.resources)
    with pytest.raises(StacchipError, match="cursor kept"):
        graph.sensor(context)
    assert context.cursor == cursor
    missing = StacSourceResource(catalog_path=str(graph.catalog.parent / "nowhere" / "catalog.json"))
    context = dg.build_sensor_context(instance=graph.instance, cursor=cursor, definitions=graph.defs,
                                      resources={**graph.resources, "stac_source": missing})
    with pytest.raises(StacSourceError, match="nowhere"):
        graph.sensor(context)


# -- the source itself ----------------------------------------------------------------------------

def test_static_search_parameters(catalog):
    source = StaticCatalogSource(catalog)
    ids = lambda **kw: [i.id for i in source.search(S2, SearchParams(**kw))]  # noqa: E731
    assert sorted(ids()) == sorted(SAMPLE_COLLECTIONS[S2])
    assert ids(query={"eo:cloud_cover": {"lt": 40}}, sortby=[{"field": "properties.eo:cloud_cover", "direction": "asc"}]) == [
        "S2B_31UDQ_20230704_0_L2A", "S2B_31UEQ_20230704_0_L2A"]
    assert ids(datetime="2023-08-01/..") == ["S2A_31UDQ_20230826_0_L2A"]
    assert ids(filter={"op": "=", "args": [{"property": "s2:mgrs_tile"}, "31UEQ"]}) == ["S2B_31UEQ_20230704_0_L2A"]
    assert ids(bbox=(-10.0, -10.0, -9.0, -9.0)) == []
    assert len(ids(max_items=2)) == 2
    with pytest.raises(StacSourceError, match="CQL2-JSON"):
        ids(filter="eo:cloud_cover < 10")


def test_least_cloudy_item_per_tile_per_quarter(catalog):
    source = StaticCatalogSource(catalog)
    chosen = [i.id for i in source.search(S2, SearchParams(selection=SELECTION_LEAST_CLOUDY))]
    # 31UDQ has two items in 2023 Q3 (22 % and 52 % cloud): the clearer one is kept
    assert sorted(chosen) == ["S2B_31UDQ_20230704_0_L2A", "S2B_31UEQ_20230704_0_L2A"]


def test_get_item_and_errors(catalog):
    source = open_source(catalog_path=catalog)
    item = source.get_item("naip", "me_m_4406901_ne_19_060_20211006")
    assert os.path.isfile(item.assets["image"].get_absolute_href())
    with pytest.raises(StacSourceError, match="no item"):
        source.get_item("naip", "nope")
    with pytest.raises(StacSourceError, match="both"):
        open_source(api_url="http://x", catalog_path=catalog)


# -- a real STAC API (stac-fastapi-pgstac with transactions) ---------------------------------------
# The session's own server (tests/conftest.py), or another one with the transactions extension given
# as STACCHIP_TEST_STAC_API_URL. The end-to-end tests of the sensor are in test_e2e_stac_api.py.

@pytest.fixture()
def api_url(request) -> str:
    return os.environ.get("STACCHIP_TEST_STAC_API_URL") or request.getfixturevalue("stac_api").url


@pytest.mark.e2e
def test_sensor_against_a_stac_api(catalog, tmp_path, api_url):
    import uuid

    import requests

    from stacchip_assets.dagster_defs import CollectionConfig, build_definitions
    from stacchip_assets.index.item_index import ChipSettings

    collection = f"test-s2-{uuid.uuid4().hex[:8]}"
    source = StaticCatalogSource(catalog)

    def post(item: pystac.Item, method: str = "post") -> None:
        item.make_asset_hrefs_absolute()
        data = item.to_dict(include_self_link=False, transform_hrefs=False)
        data["links"], data["collection"] = [], collection
        url = f"{api_url}/collections/{collection}/items" + (f"/{item.id}" if method == "put" else "")
        response = getattr(requests, method)(url, json=data, timeout=30)
        assert response.status_code in (200, 201), response.text

    s2 = pystac.Collection.from_file(str(catalog.parent / S2 / "collection.json"))
    coll = s2.to_dict(include_self_link=False, transform_hrefs=False)
    coll["id"], coll["links"] = collection, []
    assert requests.post(f"{api_url}/collections", json=coll, timeout=30).status_code in (200, 201)
    items = source.search(S2)
    for item in items:
        post(item)
    config = CollectionConfig(collection=collection, search=SearchParams(), chips=ChipSettings(indexer="sentinel-2"))
    # the posted items name local COGs: allow their folder (an API source allows no local files by default)
    stac = StacSourceResource(api_url=api_url, page_size=1, max_items_per_tick=2, allowed_local_roots=[str(catalog.parent)])
    defs = build_definitions([config], resources={"stac_source": stac})
    sensor = next(s for s in defs.sensors if s.name == "stac_item_sensor")
    with in_memory_instance() as instance:
        def run(cursor):
            context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs,
                                              resources={"stac_source": stac})
            return sensor(context)

        first = run(None)  # capped at 2 per tick, paged 1 per request
        second = run(first.cursor)
        assert len(first.run_requests) == 2 and len(second.run_requests) == 1
        assert sorted(r.partition_key for r in first.run_requests + second.run_requests) == sorted(
            f"{collection}/{i.id}" for i in items)
        assert not run(second.cursor).run_requests
        changed = items[0].clone()
        now = canonical_time(dt.datetime.now(dt.timezone.utc))  # not in the future: future times are refused
        changed.properties["updated"] = now
        post(changed, "put")
        third = run(second.cursor)
        assert [r.run_key for r in third.run_requests] == [f"{collection}/{items[0].id}@{now}"]
        # one item indexed from the API, end to end
        assets = {a.key.to_user_string(): a for a in defs.assets}
        instance.add_dynamic_partitions(ITEM_PARTITIONS_NAME, [f"{collection}/{items[0].id}"])
        result = dg.materialize([assets["chip_index"]], partition_key=f"{collection}/{items[0].id}", instance=instance,
                                resources={"stac_source": stac, "storage": StorageResource(base=str(tmp_path / "base")),
                                           "chip_settings": ChipSettingsResource()})
        assert result.success
    requests.delete(f"{api_url}/collections/{collection}", timeout=30)
