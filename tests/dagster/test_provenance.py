"""Lineage down to the chip: chip_provenance on a really materialized graph (temporary Dagster
instance, copy of the sample catalog), checked against what Dagster recorded."""

from __future__ import annotations

import dagster as dg
import pytest

from stacchip_assets.errors import StacchipError
from stacchip_assets.index.provenance import ChipNotFoundError, chip_provenance, split_chipid
from stacchip_assets.io.storage import Storage

from tests.support.dagster_support import (
    Graph,
    copy_catalog,
    edit_item,
    in_memory_instance,
    item_json_path,
    shared_sample,
)

S2 = "sentinel-2-l2a"
ITEM = "S2B_31UDQ_20230704_0_L2A"
OTHER = "S2A_31UDQ_20230826_0_L2A"
KEYS = [f"{S2}/{ITEM}", f"{S2}/{OTHER}"]


def materializations(graph: Graph, partition: str) -> list[dg.AssetMaterialization]:
    records = graph.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("chip_index"), asset_partitions=[partition]), limit=10).records
    return [r.asset_materialization for r in records]


@pytest.fixture()
def graph(tmp_path, tmp_path_factory):
    catalog = copy_catalog(shared_sample(tmp_path_factory), tmp_path / "catalog")
    with in_memory_instance() as instance:
        g = Graph(catalog, tmp_path / "base", instance)
        g.add_partitions(KEYS)
        for key in KEYS:
            assert g.index(key).success
        assert g.combine().success
        yield g


def test_chip_provenance_names_partition_data_version_and_item_version(graph):
    storage = Storage(str(graph.base))
    chipid = storage.read_index(S2, ITEM).column("chipid")[3].as_py()
    prov = chip_provenance(chipid, str(graph.base))
    assert (prov.collection, prov.item_id, prov.partition_key, prov.found_in) == (S2, ITEM, f"{S2}/{ITEM}", "combined")
    assert (prov.x, prov.y) == (prov.row["chip_index_x"], prov.row["chip_index_y"]) and prov.row["chipid"] == chipid
    # exactly the data version and item version Dagster recorded for that partition's materialization
    latest = materializations(graph, prov.partition_key)[0]
    assert prov.data_version == latest.tags["dagster/data_version"] == latest.metadata["content_hash"].value
    assert prov.combined_is_current
    assert prov.stac_item_updated == latest.metadata["stac_item_updated"].value
    assert prov.stac_item_href == latest.metadata["stac_item_href"].value == str(item_json_path(graph.catalog, S2, ITEM))
    assert prov.stac_item_id == ITEM
    # with the collection given: no listing, same answer
    assert chip_provenance(chipid, storage, collection=S2) == prov


def test_reindexed_item_shows_the_combined_copy_and_the_new_version(graph):
    storage = Storage(str(graph.base))
    chipid = storage.read_index(S2, ITEM).column("chipid")[0].as_py()
    before = chip_provenance(chipid, storage)
    # a corrected acquisition time: new rows (datetime column), re-indexed but not combined yet
    edit_item(graph.catalog, S2, ITEM, updated="2031-01-01T00:00:00Z", datetime="2023-07-05T10:00:00Z")
    assert graph.index(f"{S2}/{ITEM}").success
    stale = chip_provenance(chipid, storage)
    history = materializations(graph, f"{S2}/{ITEM}")
    assert len(history) == 2
    # the combined copy still comes from the first materialization; the per-item index from the second
    assert stale.data_version == before.data_version == history[1].tags["dagster/data_version"]
    assert stale.index_data_version == history[0].tags["dagster/data_version"] != stale.data_version
    assert not stale.combined_is_current
    assert graph.combine().success
    now = chip_provenance(chipid, storage)
    assert now.data_version == history[0].tags["dagster/data_version"] and now.combined_is_current
    assert now.stac_item_updated == history[0].metadata["stac_item_updated"].value != before.stac_item_updated
    assert now.stac_item_updated.startswith("2031-01-01T00:00:00")
    assert str(now.row["datetime"]).startswith("2023-07-05 10:00") and not str(before.row["datetime"]).startswith("2023-07-05")


def test_unknown_or_malformed_chip_ids(graph):
    with pytest.raises(ChipNotFoundError, match="no index .* holds chip"):
        chip_provenance(f"{ITEM}-999-999", str(graph.base))
    with pytest.raises(StacchipError, match="not of the form item_id-x-y"):
        split_chipid("no-coordinates")
    with pytest.raises(StacchipError):
        chip_provenance("../../etc-1-2", str(graph.base))
