"""Item sets from a real STAC API (stac-fastapi-pgstac, tests/conftest.py) and a static catalog:
a search that selects nothing, a collection the source does not have, and an item the API returns on
two pages (tests/support/fault_proxy.py repeats the previous page's last feature at the top of the next page).
"""

from __future__ import annotations

import json
import logging
import re
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
from stacchip_assets.errors import StacSourceError
from stacchip_assets.io.stac_source import SearchParams, StacApiSource, StaticCatalogSource

from tests.e2e.test_e2e_stac_api import ASSETS, IDS, S2, SETTINGS, sensor_of
from tests.support.dagster_support import QUIET
from tests.support.fault_proxy import fault_proxy
from tests.support.servers import collection_json, item_json

N_ITEMS = 7


@pytest.fixture(autouse=True)
def one_item_per_run(monkeypatch):
    """These tests check the per-item semantics (a run per item version); batched runs (the default,
    STACCHIP_BACKFILL_PARTITIONS_PER_RUN=100) are tested in test_ingest_batching.py."""
    monkeypatch.setenv("STACCHIP_BACKFILL_PARTITIONS_PER_RUN", "1")


@pytest.fixture()
def collection(request, stac_api, sample_catalog, cog_server):
    """A fresh API collection with N_ITEMS items (copies of one sample item under other ids), each
    with its own `updated`."""
    name = "src-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:36].strip("-") + "-" + uuid.uuid4().hex[:6]
    stac_api.create_collection(collection_json(sample_catalog, S2, name))
    ids = []
    for n in range(N_ITEMS):
        data = item_json(sample_catalog, S2, IDS[0], name, cog_server, updated=f"2026-01-01T00:00:{n:02d}Z", assets=ASSETS)
        data["id"] = f"{IDS[0]}-copy{n}"
        stac_api.post_item(data)
        ids.append(data["id"])
    try:
        yield name, ids
    finally:
        stac_api.delete_collection(name)


def resources(url: str, tmp_path, page_size: int = 2) -> dict:
    return {
        "stac_source": StacSourceResource(api_url=url, page_size=page_size, max_items_per_tick=100, timeout_seconds=10,
                                          retry_backoff_seconds=0.01),
        "storage": StorageResource(base=str(tmp_path / "base")),
        "chip_settings": ChipSettingsResource(),
    }


# -- an empty item set ---------------------------------------------------------------------------

def test_a_search_that_selects_nothing_is_an_empty_item_set(stac_api, collection, tmp_path):
    name, _ = collection
    source = StacApiSource(stac_api.url, page_size=2)
    nothing = SearchParams(datetime="1990-01-01/1990-12-31")
    assert source.search(name, nothing) == []
    assert source.poll(name, nothing) == []

    # the stac_items asset: materialized, count 0, an empty listing, and the search it ran in the metadata
    config = CollectionConfig(collection=name, search=nothing, chips=SETTINGS)
    defs = build_definitions([config], resources=resources(stac_api.url, tmp_path))
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("stac_items_job").execute_in_process(partition_key=name, instance=instance,
                                                                           run_config=QUIET)
        assert result.success
        metadata = result.asset_materializations_for_node("stac_items")[0].metadata
    assert metadata["count"].value == 0 and metadata["time_span"].value == "no items"
    assert metadata["search"].value["datetime"] == "1990-01-01/1990-12-31"
    listing = json.loads((tmp_path / "base" / "item_sets" / f"{name}.json").read_text())
    assert listing["items"] == [] and listing["search"]["datetime"] == "1990-01-01/1990-12-31"


def test_a_collection_the_api_does_not_have_is_a_stac_source_error(stac_api, tmp_path):
    source = StacApiSource(stac_api.url)
    for call in (lambda: source.search("no-such-collection"), lambda: source.poll("no-such-collection")):
        with pytest.raises(StacSourceError) as excinfo:
            call()
        message = str(excinfo.value)
        assert f"STAC API {stac_api.url}" in message and "'no-such-collection'" in message, message
        assert "no such collection (HTTP 404)" in message, message

    # in a Dagster run: the item-set run fails, saying which source and collection
    config = CollectionConfig(collection="no-such-collection", search=SearchParams(), chips=SETTINGS)
    defs = build_definitions([config], resources=resources(stac_api.url, tmp_path))
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("stac_items_job").execute_in_process(
            partition_key="no-such-collection", instance=instance, run_config=QUIET, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.event_specific_data.error.message
    assert "StacSourceError" in message and "no such collection" in message and stac_api.url in message, message


def test_a_collection_the_static_catalog_does_not_have_is_a_stac_source_error(sample_catalog):
    source = StaticCatalogSource(sample_catalog)
    with pytest.raises(StacSourceError, match=r"static catalog .*catalog\.json: collection 'sentinel-9': the catalog "
                                              r"has no such collection"):
        source.search("sentinel-9")
    with pytest.raises(StacSourceError, match="no such collection"):
        source.poll("sentinel-9")
    assert source.search(S2, SearchParams(datetime="1990-01-01/1990-12-31")) == []  # known, nothing selected


# -- the same item on two pages ------------------------------------------------------------------

def test_an_item_repeated_across_pages_is_yielded_once_with_a_warning(stac_api, collection, caplog):
    name, ids = collection
    with fault_proxy(stac_api.url, seed=3) as proxy:
        source = StacApiSource(proxy.url, page_size=2)
        plain = [i.id for i in source.search(name)]  # no faults yet
        assert sorted(plain) == sorted(ids) and len(plain) == N_ITEMS and proxy.stats()["repeated"] == 0

        proxy.configure(repeat_rate=1.0)
        with caplog.at_level(logging.WARNING, logger="stacchip_assets.io.stac_source"):
            searched = source.search(name, SearchParams(sortby=[{"field": "id", "direction": "asc"}]))
        repeated = proxy.stats()["repeated"]
        assert repeated >= 3  # pages 2, 3, 4 each started with the previous page's last item
        assert [i.id for i in searched] == sorted(ids)
        warning = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
        assert f"STAC API {proxy.url}" in warning and f"returned {repeated} items more than once" in warning, warning
        assert all(i in warning for i in (ids[1], ids[3], ids[5])), warning

        # max_items counts distinct items
        assert [i.id for i in source.search(name, SearchParams(max_items=5, sortby="id"))] == sorted(ids)[:5]

        # poll: sorted by (updated, id), each item once, and the cursor moves past all of them
        caplog.clear()
        before = proxy.stats()["repeated"]
        with caplog.at_level(logging.WARNING, logger="stacchip_assets.io.stac_source"):
            polled = source.poll(name, limit=100)
        assert proxy.stats()["repeated"] > before
        assert [p.item_id for p in polled] == ids
        assert len({p.item_id for p in polled}) == len(polled) == N_ITEMS
        assert "polling collection" in caplog.text and "more than once" in caplog.text
        assert source.poll(name, after=polled[-1].position) == []


def test_the_sensor_never_requests_an_item_twice_when_pages_repeat_items(stac_api, collection, tmp_path):
    name, ids = collection
    config = CollectionConfig(collection=name, search=SearchParams(), chips=SETTINGS)
    with fault_proxy(stac_api.url, seed=5) as proxy, dg.instance_for_test() as instance:
        proxy.configure(repeat_rate=1.0)
        res = resources(proxy.url, tmp_path, page_size=2)
        defs = build_definitions([config], resources=res)
        context = dg.build_sensor_context(instance=instance, cursor=None, definitions=defs, resources=res)
        result = sensor_of(defs)(context)
        assert proxy.stats()["repeated"] >= 3
    keys = [r.partition_key for r in result.run_requests]
    assert keys == [item_partition_key(name, i) for i in ids]  # each once, oldest first
    assert len({r.run_key for r in result.run_requests}) == N_ITEMS
    assert list(result.dynamic_partitions_requests[0].partition_keys) == keys


# -- the items of a batch run, fetched together ----------------------------------------------------

def test_a_batch_gets_its_items_with_one_search_per_page(stac_api, collection):
    """`get_items`: every item get_item returns, with one search per `page_size` ids (counted by the
    proxy in front of the API) instead of one per item; an id the API lacks gets get_item's error."""
    name, ids = collection
    wanted = ids[:5] + ["no-such-item"]
    with fault_proxy(stac_api.url) as proxy:
        source = StacApiSource(proxy.url, page_size=3)
        source.get_items(name, ids[-1:])  # the client's first request(s): landing page, conformance
        before = proxy.stats()["requests"]
        found = source.get_items(name, wanted)
        searches = proxy.stats()["requests"] - before
    assert searches == 2  # 6 ids, pages of 3
    reference = StacApiSource(stac_api.url)
    def content(item):  # links name the proxy or the API
        return {k: v for k, v in item.to_dict(transform_hrefs=False).items() if k != "links"}

    for item_id in ids[:5]:
        assert content(found[item_id]) == content(reference.get_item(name, item_id))
    assert isinstance(found["no-such-item"], StacSourceError)
    with pytest.raises(StacSourceError) as single:
        reference.get_item(name, "no-such-item")
    assert str(found["no-such-item"]).replace(proxy.url, stac_api.url) == str(single.value)


def test_a_static_catalog_gets_a_batch_item_by_item(sample_catalog):
    from stacchip_assets.demo.sample_data import SAMPLE_COLLECTIONS

    source = StaticCatalogSource(str(sample_catalog))
    collection, ids = next(iter(SAMPLE_COLLECTIONS.items()))
    found = source.get_items(collection, [*ids, "no-such-item"])
    assert {i: found[i].to_dict(transform_hrefs=False) for i in ids} == {
        i: source.get_item(collection, i).to_dict(transform_hrefs=False) for i in ids}
    assert isinstance(found["no-such-item"], StacSourceError) and "no item 'no-such-item'" in str(found["no-such-item"])
