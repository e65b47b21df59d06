"""Issue 17: the item sets are the source of truth -- the combined index holds exactly the chips of the
items currently in the item sets, indexed with the collection's current chip settings.

The library layer first (index.item_sets, index.set_rule) on a copy of the sample catalog, with real
per-item indexes read from the sample COGs; the Dagster wiring follows below.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pyarrow.parquet as pq
import pystac
import pytest

from stacchip_assets.index.combined import CombinedIndex, combined_key
from stacchip_assets.index.item_index import ChipSettings, index_item
from stacchip_assets.index.item_sets import (
    SUPERSEDED,
    WITHDRAWN,
    ItemSet,
    SelectionState,
    offer_items,
    reconcile_item_set,
    settings_fingerprint,
    source_has,
)
from stacchip_assets.index.set_rule import ADD, REMOVE, REPLACE, WAIT, enforce, holds
from stacchip_assets.io.stac_source import SearchParams, StaticCatalogSource
from stacchip_assets.io.storage import Storage

from tests.support.dagster_support import copy_catalog, in_memory_instance

S2 = "sentinel-2-l2a"
OLD, UEQ, CLOUDY = "S2B_31UDQ_20230704_0_L2A", "S2B_31UEQ_20230704_0_L2A", "S2A_31UDQ_20230826_0_L2A"
NEW = "S2A_31UDQ_20230915_0_L2A"
#: the Sentinel-2 preset's rule: cloud cover below 50 %, least cloudy item per tile per quarter
RULE = SearchParams(query={"eo:cloud_cover": {"lt": 50}}, selection="least_cloudy_per_tile_quarter",
                    tile_properties=("grid:code", "s2:mgrs_tile"))
SETTINGS = ChipSettings(indexer="sentinel-2", chip_size=256, chip_max_nodata=0.5,
                        assets=("blue", "green", "red", "nir", "rededge1", "swir16"))


def publish_better_item(catalog_json: Path, new_id: str = NEW, cloud: float = 5.0) -> None:
    """A new item for tile 31UDQ in 2023 Q3 with `cloud` % cloud: a clone of CLOUDY's files."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        catalog = pystac.Catalog.from_file(str(catalog_json))
        collection = catalog.get_child(S2)
        source = collection.get_item(CLOUDY)
        source.make_asset_hrefs_absolute()
        clone = source.clone()
        clone.id = new_id
        clone.datetime = clone.datetime.replace(month=9, day=15)
        clone.properties.update({"eo:cloud_cover": cloud, "updated": "2023-09-15T18:00:00.000Z"})
        collection.add_item(clone)
        catalog.normalize_hrefs(str(catalog_json.parent))
        catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)


class Library:
    """search -> item set -> per-item indexes -> the rule, without Dagster."""

    def __init__(self, catalog_json: Path, base: Path, settings: ChipSettings = SETTINGS) -> None:
        self.source = StaticCatalogSource(str(catalog_json))
        self.storage = Storage(str(base))
        self.settings = settings
        self.known: dict[str, str | None] = {}

    def reconcile(self):
        items = self.source.search(S2, RULE)

        change = reconcile_item_set(self.storage, S2, items, params=RULE, settings=self.settings.to_dict(),
                                    in_source=lambda item_id: source_has(self.source, S2, item_id))
        ids = {i.id for i in items}
        return change, ids

    def index(self, item_id: str) -> int:
        return index_item(self.source.get_item(S2, item_id), self.storage, self.settings, collection=S2).chips_kept

    def combine(self, changed=()):
        result = enforce(self.storage, changed, known_settings=self.known)
        self.known = dict(result.plan.governed)
        return result

    def combined_ids(self) -> set[str]:
        return {i for c, i in CombinedIndex(self.storage).items() if c == S2}


@pytest.fixture(autouse=True)
def one_item_per_run(monkeypatch):
    """The flows below follow each item's own run (a run per item version); batched runs (the default,
    STACCHIP_BACKFILL_PARTITIONS_PER_RUN=100) are tested in tests/e2e/test_ingest_batching.py."""
    monkeypatch.setenv("STACCHIP_BACKFILL_PARTITIONS_PER_RUN", "1")


@pytest.fixture()
def library(sample_catalog, tmp_path) -> Library:
    return Library(copy_catalog(sample_catalog, tmp_path / "catalog"), tmp_path / "base")


def test_better_item_evicts_exactly_the_item_it_replaces(library):
    change, ids = library.reconcile()
    assert ids == {OLD, UEQ} and sorted(change.added) == [OLD, UEQ]
    chips = {i: library.index(i) for i in ids}
    first = library.combine(changed=[(S2, i) for i in ids])
    assert {c.item_id for c in first.plan.of(ADD)} == ids and library.combined_ids() == ids
    assert holds(library.storage) == (True, {"missing": [], "extra": []})
    assert CombinedIndex(library.storage).num_rows() == sum(chips.values())

    publish_better_item(Path(library.source.catalog_path))
    change, ids = library.reconcile()
    assert ids == {NEW, UEQ}
    assert [(d.item_id, d.reason, d.by) for d in change.departed] == [(OLD, SUPERSEDED, NEW)]
    stored = ItemSet.load(library.storage, S2)
    assert set(stored.members) == {NEW, UEQ} and stored.departed[OLD].describe() == f"superseded by {NEW}"
    state = SelectionState.load(library.storage, S2)
    assert state.groups["MGRS-31UDQ|2023|Q3"]["id"] == NEW

    # before the new item is indexed: the superseded chips leave, the new item waits for chip_index
    between = library.combine()
    assert [(c.item_id, c.action, c.reason) for c in between.plan.changes] == [
        (OLD, REMOVE, f"superseded by {NEW}"), (NEW, WAIT, "in the item set, not indexed yet")]
    assert library.combined_ids() == {UEQ}
    assert between.report.rows_removed == chips[OLD]
    assert holds(library.storage) == (False, {"missing": [f"{S2}/{NEW}"], "extra": []})

    chips[NEW] = library.index(NEW)
    after = library.combine(changed=[(S2, NEW)])
    assert [(c.item_id, c.action, c.reason) for c in after.plan.changes] == [
        (NEW, ADD, f"in the item set, supersedes {OLD}")]
    assert library.combined_ids() == {NEW, UEQ}
    assert CombinedIndex(library.storage).num_rows() == chips[NEW] + chips[UEQ]
    assert holds(library.storage)[0]


def test_withdrawn_item_leaves_and_a_republished_one_comes_back_once(library):
    _, ids = library.reconcile()
    for item_id in ids:
        library.index(item_id)
    library.combine(changed=[(S2, i) for i in ids])
    item_json = Path(library.source.catalog_path).parent / S2 / UEQ / f"{UEQ}.json"
    saved = item_json.read_text()
    collection_json = item_json.parent.parent / "collection.json"
    links = json.loads(collection_json.read_text())
    withdrawn = dict(links, links=[link for link in links["links"] if UEQ not in link["href"]])
    collection_json.write_text(json.dumps(withdrawn))
    item_json.unlink()

    change, ids = library.reconcile()
    assert [(d.item_id, d.reason) for d in change.departed] == [(UEQ, WITHDRAWN)]
    result = library.combine()
    assert [(c.item_id, c.action, c.reason) for c in result.plan.changes] == [(UEQ, REMOVE, "withdrawn from the source")]
    assert library.combined_ids() == {OLD} and holds(library.storage)[0]

    item_json.write_text(saved)
    collection_json.write_text(json.dumps(links))
    change, ids = library.reconcile()
    assert change.added == [UEQ] and not change.departed
    back = library.combine()  # its per-item index is still current: no re-indexing needed
    assert [(c.item_id, c.action) for c in back.plan.changes] == [(UEQ, ADD)]
    assert library.combine().plan.changes == []  # once
    assert library.combined_ids() == {OLD, UEQ} and holds(library.storage)[0]


def test_changed_chip_size_waits_for_reindexing_then_replaces(library):
    _, ids = library.reconcile()
    for item_id in ids:
        library.index(item_id)
    library.combine(changed=[(S2, i) for i in ids])
    old_fp = settings_fingerprint(SETTINGS.to_dict())
    small = ChipSettings(**{**SETTINGS.to_dict(), "chip_size": 128, "assets": SETTINGS.assets})
    library.settings = small
    change, _ = library.reconcile()
    assert change.settings_changed == (old_fp, settings_fingerprint(small.to_dict()))
    waiting = library.combine()
    assert {c.item_id for c in waiting.plan.of(WAIT)} == ids and not waiting.plan.upserts
    assert library.combined_ids() == ids  # the old chips stay until they are replaced
    for item_id in ids:
        library.index(item_id)
    replaced = library.combine(changed=[(S2, i) for i in ids])
    assert {(c.item_id, c.action) for c in replaced.plan.changes} == {(i, REPLACE) for i in ids}
    sizes = set(CombinedIndex(library.storage).read(columns=["chip_size"]).column("chip_size").to_pylist())
    assert sizes == {128}


def test_a_file_added_by_hand_breaks_the_rule_and_is_removed(library):
    _, ids = library.reconcile()
    for item_id in ids:
        library.index(item_id)
    library.combine(changed=[(S2, i) for i in ids])
    library.storage.copy(Storage.index_key(S2, OLD), combined_key(S2, "S2X_HANDMADE"))
    assert holds(library.storage) == (False, {"missing": [], "extra": [f"{S2}/S2X_HANDMADE"]})
    result = library.combine()
    assert [(c.item_id, c.action, c.reason) for c in result.plan.changes] == [("S2X_HANDMADE", REMOVE, "not in the item set")]
    assert holds(library.storage)[0]


def test_incremental_selection_compares_with_the_tile_quarter_only(library):
    items = {i.id: i for i in library.source.search(S2, SearchParams())}
    first = offer_items(library.storage, S2, [items[OLD], items[UEQ]], params=RULE)
    assert sorted(first.added) == [OLD, UEQ] and not first.departed
    worse = offer_items(library.storage, S2, [items[CLOUDY]], params=RULE)
    assert worse.not_selected == [CLOUDY] and not worse.added
    publish_better_item(Path(library.source.catalog_path))
    better = library.source.get_item(S2, NEW)
    change = offer_items(library.storage, S2, [better], params=RULE)
    assert change.added == [NEW] and [(d.item_id, d.by) for d in change.departed] == [(OLD, NEW)]
    assert set(ItemSet.load(library.storage, S2).members) == {NEW, UEQ}
    # the same set as a full search selects
    assert {i.id for i in library.source.search(S2, RULE)} == {NEW, UEQ}


def test_per_item_index_records_its_chip_settings(library):
    library.index(OLD)
    metadata = pq.read_schema(library.storage.path(Storage.index_key(S2, OLD))).metadata
    assert metadata[b"stacchip:chip_settings"].decode() == settings_fingerprint(SETTINGS.to_dict())


# --------------------------------------------------------------------------------------------------
# The Dagster graph: stac_items (full reconciliation), the sensor (incremental), combined_index (the rule)
# --------------------------------------------------------------------------------------------------

import dagster as dg  # noqa: E402

from stacchip_assets.dagster_defs import ChipSettingsResource, StacSourceResource, StorageResource, build_definitions  # noqa: E402
from stacchip_assets.dagster_defs.item_set_rule import combined_holds_item_sets  # noqa: E402
from stacchip_assets.dagster_defs.presets import builtin_presets, resolve_entry  # noqa: E402

from tests.support.dagster_support import QUIET, launch_tick_runs  # noqa: E402

LANDSAT = "landsat-c2-l2"


def configs(s2: str = S2, chip_size: int = 256, landsat: bool = True):
    """The Sentinel-2 preset's own rule, overriding only the asset list (and maybe the chip size); the
    sample's Landsat item as a second collection."""
    presets = builtin_presets()
    out = [resolve_entry({"preset": "sentinel-2-l2a", "collection": s2,
                          "chips": {"assets": list(SETTINGS.assets), "chip_size": chip_size}}, presets)]
    if landsat:
        out.append(resolve_entry({"preset": "landsat-c2-l2", "search": {"query": None, "selection": "all"}}, presets))
    return out


class Flow:
    """The definitions on one STAC source and storage base, run the way the daemon runs them."""

    def __init__(self, source: StacSourceResource, base: Path, instance: dg.DagsterInstance, **config) -> None:
        self.instance, self.base, self.cursor = instance, base, None
        self.resources = {"stac_source": source, "storage": StorageResource(base=str(base)),
                          "chip_settings": ChipSettingsResource()}
        self.configure(**config)

    def configure(self, **config) -> None:
        self.configs = configs(**config)
        self.defs = build_definitions(self.configs, resources=self.resources)

    @property
    def storage(self) -> Storage:
        return Storage(str(self.base))

    def item_sets(self) -> None:
        job = self.defs.resolve_job_def("stac_items_job")
        for config in self.configs:
            assert job.execute_in_process(partition_key=config.collection, instance=self.instance, run_config=QUIET).success

    def tick(self) -> list[str]:
        sensor = next(s for s in self.defs.sensors if s.name == "stac_item_sensor")
        context = dg.build_sensor_context(instance=self.instance, cursor=self.cursor, definitions=self.defs,
                                          resources=self.resources)
        result = sensor(context)
        self.cursor = result.cursor
        return [request.partition_key for request, _ in launch_tick_runs(self.instance, self.defs, result)]

    def index(self, keys) -> None:
        job = self.defs.resolve_job_def("chip_index_job")
        for key in keys:
            assert job.execute_in_process(partition_key=key, instance=self.instance, run_config=QUIET).success

    def combine(self) -> dict:
        outcome = self.defs.resolve_job_def("combined_index_job").execute_in_process(instance=self.instance, run_config=QUIET)
        assert outcome.success
        failed = {e.check_name: e.description for e in outcome.get_asset_check_evaluations() if not e.passed}
        assert not failed, failed  # combined_holds_item_sets among them: the rule holds after every step
        return outcome.asset_materializations_for_node("combined_index")[0].metadata

    def combined(self, collection: str = S2) -> set[str]:
        return {i for c, i in CombinedIndex(self.storage).items() if c == collection}

    def observations(self, key: str) -> list[dict]:
        records = self.instance.fetch_observations(dg.AssetRecordsFilter(asset_key=dg.AssetKey("chip_index"),
                                                                         asset_partitions=[key]), limit=10).records
        return [{k: v.value for k, v in r.asset_observation.metadata.items()} for r in records]

    def stale(self, keys) -> dict[str, str]:
        """What the UI shows for these chip_index partitions (Dagster's own stale status resolver)."""
        from dagster._utils.test.data_versions import get_stale_status_resolver

        resolver = get_stale_status_resolver(self.instance, list(self.defs.assets))
        return {k: resolver.get_status(dg.AssetKey("chip_index"), k).value for k in keys}

    def check_passes(self) -> bool:
        return combined_holds_item_sets(storage=StorageResource(base=str(self.base))).passed


@pytest.fixture()
def static_flow(sample_catalog, tmp_path):
    catalog = copy_catalog(sample_catalog, tmp_path / "catalog")
    with in_memory_instance() as instance:
        yield Flow(StacSourceResource(catalog_path=str(catalog)), tmp_path / "base", instance), catalog


def start(flow: Flow, s2: str = S2) -> None:
    flow.item_sets()
    ran = flow.tick()
    assert sorted(ran) == sorted([f"{s2}/{OLD}", f"{s2}/{UEQ}", f"{LANDSAT}/{SAMPLE_LANDSAT}"])
    meta = flow.combine()
    assert flow.combined(s2) == {OLD, UEQ} and meta["items_added"].value == 3


SAMPLE_LANDSAT = "LC09_L2SP_107030_20230712_02_T1"


def test_static_catalog_better_item_supersedes_through_the_sensor_and_the_item_sets(static_flow):
    flow, catalog = static_flow
    start(flow)
    publish_better_item(catalog)
    assert flow.tick() == [f"{S2}/{NEW}"]  # incremental: compared with its tile-quarter only
    stored = ItemSet.load(flow.storage, S2)
    assert set(stored.members) == {NEW, UEQ} and stored.departed[OLD].by == NEW
    meta = flow.combine()
    assert flow.combined() == {NEW, UEQ}
    assert meta["items_removed"].value == 1 and meta["items_added"].value == 1
    assert meta["changes"].value["remove"] == [f"{S2}/{OLD}: superseded by {NEW}"]
    assert meta["changes"].value["add"] == [f"{S2}/{NEW}: in the item set, supersedes {OLD}"]
    assert meta["state"].value["by_collection"][S2]["rows"] == CombinedIndex(flow.storage).read(
        columns=["collection"]).column("collection").to_pylist().count(S2)
    assert flow.observations(f"{S2}/{OLD}")[0]["status"] == "removed"
    flow.item_sets()  # the full reconciliation agrees: nothing departs, nothing changes
    assert ItemSet.load(flow.storage, S2).ids == {NEW, UEQ}
    assert flow.combine()["items_changed"].value == 0 and flow.check_passes()
    flow.storage.copy(Storage.index_key(S2, OLD), combined_key(S2, OLD))  # a combined file added by hand
    result = combined_holds_item_sets(storage=StorageResource(base=str(flow.base)))
    assert not result.passed and result.metadata["extra"].value == [f"{S2}/{OLD}"]


def test_static_catalog_changed_chip_size_marks_its_partitions_stale(static_flow):
    flow, _ = static_flow
    start(flow)
    s2_keys, landsat_key = [f"{S2}/{OLD}", f"{S2}/{UEQ}"], f"{LANDSAT}/{SAMPLE_LANDSAT}"
    assert set(flow.stale(s2_keys + [landsat_key]).values()) == {"FRESH"}
    landsat_file = flow.storage.path(combined_key(LANDSAT, SAMPLE_LANDSAT))
    before = Path(landsat_file).stat().st_mtime_ns
    flow.configure(chip_size=128)
    flow.item_sets()
    stale = flow.stale(s2_keys + [landsat_key])
    assert {stale[k] for k in s2_keys} == {"STALE"}
    waiting = flow.combine()  # the old chips stay until re-indexed; the rule still holds (same items)
    assert waiting["items_waiting"].value == 2 and flow.combined() == {OLD, UEQ}
    flow.index(s2_keys)  # re-indexing the stale partitions
    meta = flow.combine()
    assert meta["items_replaced"].value == 2
    sizes = CombinedIndex(flow.storage).read(columns=["collection", "chip_size"]).to_pylist()
    assert {(r["collection"], r["chip_size"]) for r in sizes} == {(S2, 128), (LANDSAT, 256)}
    assert Path(landsat_file).stat().st_mtime_ns == before  # the other collection untouched
    assert set(flow.stale(s2_keys).values()) == {"FRESH"}
    print("landsat partition after the Sentinel-2 settings change:", stale[landsat_key])


@pytest.mark.e2e
def test_pgstac_better_item_withdrawn_and_republished(stac_api, cog_server, sample_catalog, tmp_path):
    from tests.support.servers import collection_json, item_json

    collection = "e2e-item-sets-17"
    stac_api.create_collection(collection_json(sample_catalog, S2, collection))

    def body(item_id: str, source: str | None = None) -> dict:
        data = item_json(sample_catalog, S2, source or item_id, collection, cog_server,
                         assets=[*SETTINGS.assets, "scl"])
        if source is not None:  # the better item: CLOUDY's files, 2023-09-15, 5 % cloud
            data["id"] = item_id
            data["properties"].update({"datetime": "2023-09-15T10:46:29.452000Z", "eo:cloud_cover": 5.0,
                                       "updated": "2023-09-15T18:00:00.000Z"})
        return data

    try:
        for item_id in (OLD, CLOUDY, UEQ):
            stac_api.post_item(body(item_id))
        with in_memory_instance() as instance:
            flow = Flow(StacSourceResource(api_url=stac_api.url, page_size=2, timeout_seconds=10), tmp_path / "base",
                        instance, s2=collection, landsat=False)
            flow.item_sets()
            assert sorted(flow.tick()) == [f"{collection}/{OLD}", f"{collection}/{UEQ}"]
            flow.combine()
            assert flow.combined(collection) == {OLD, UEQ}
            chips_ueq = flow.storage.parquet_num_rows(combined_key(collection, UEQ))

            # 1. a better item for 31UDQ in the same quarter: the sensor selects it, the superseded chips leave
            stac_api.post_item(body(NEW, source=CLOUDY))
            assert flow.tick() == [f"{collection}/{NEW}"]
            meta = flow.combine()
            assert flow.combined(collection) == {NEW, UEQ}
            assert meta["changes"].value["remove"] == [f"{collection}/{OLD}: superseded by {NEW}"]

            # 2. withdrawn from pgstac: gone after one reconciliation
            stac_api._request("DELETE", f"/collections/{collection}/items/{UEQ}", ok=(200, 204))
            flow.item_sets()
            meta = flow.combine()
            assert flow.combined(collection) == {NEW}
            assert meta["changes"].value["remove"] == [f"{collection}/{UEQ}: withdrawn from the source"]
            assert flow.observations(f"{collection}/{UEQ}")[0]["reason"] == "withdrawn from the source"

            # 3. re-published (the same item, same `updated`): back once, from its per-item index
            stac_api.post_item(body(UEQ))
            assert flow.tick() == []  # nothing newer than the cursor: no re-indexing
            flow.item_sets()
            meta = flow.combine()
            assert meta["changes"].value["add"] == [f"{collection}/{UEQ}: in the item set"]
            assert flow.combined(collection) == {NEW, UEQ}
            assert flow.storage.parquet_num_rows(combined_key(collection, UEQ)) == chips_ueq
            assert flow.combine()["items_changed"].value == 0  # once
            assert flow.check_passes()
    finally:
        stac_api.delete_collection(collection)


def test_query_as_cql2():
    from stacchip_assets.errors import StacSourceError
    from stacchip_assets.io.stac_search import query_as_cql2

    assert query_as_cql2({"eo:cloud_cover": {"lt": 50}}) == {"op": "<", "args": [{"property": "eo:cloud_cover"}, 50]}
    assert query_as_cql2({"platform": {"in": ["landsat-8"]}, "properties.x": 3}) == {"op": "and", "args": [
        {"op": "in", "args": [{"property": "platform"}, ["landsat-8"]]}, {"op": "=", "args": [{"property": "x"}, 3]}]}
    with pytest.raises(StacSourceError, match="'near' cannot be combined with polling"):
        query_as_cql2({"x": {"near": 1}})
