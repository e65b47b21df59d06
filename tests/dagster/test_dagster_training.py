"""The training_set and band_statistics assets on the sample catalog (a real Dagster instance)."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pytest

from stacchip_assets.dagster_defs.training import DaskResource
from stacchip_assets.index.chip_indexer import NoStatsChipIndexer
from stacchip_assets.index.chipper import Chipper
from stacchip_assets.training import load_item, load_shard, read_manifest

from tests.dagster.test_dagster_assets import index_everything
from tests.support.dagster_support import Graph, copy_catalog, shared_sample


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("training")
    catalog = copy_catalog(shared_sample(tmp_path_factory), root / "catalog")
    with dg.instance_for_test() as instance:
        graph = Graph(catalog, root / "base", instance)
        index_everything(graph)
        resources = {**graph.resources, "dask": DaskResource(enabled=False)}
        config = {"name": "s2", "collections": ["sentinel-2-l2a"], "max_cloud": 0.6, "shard_size": 8, "seed": 7}
        result = dg.materialize(
            [graph.assets["training_set"], graph.assets["band_statistics"]], instance=instance, resources=resources,
            run_config={"ops": {"training_set": {"config": config}, "band_statistics": {"config": config}}},
        )
        assert result.success
        yield graph, result


def test_training_set_shards_equal_the_chipper(trained):
    graph, result = trained
    out_dir = graph.base / "training" / "s2"
    manifest = read_manifest(out_dir).to_pylist()
    assert manifest and len({r["chipid"] for r in manifest}) == len(manifest)
    metadata = result.asset_materializations_for_node("training_set")[0].metadata
    assert metadata["samples"].value == len(manifest)
    from stacchip_assets.index.combined import read_combined

    cloud = {r["chipid"]: r["cloud_cover_percentage"] for r in read_combined(str(graph.base)).to_pylist()}
    assert all(cloud[r["chipid"]] <= 0.6 for r in manifest) and r_collections(manifest) == {"sentinel-2-l2a"}
    assert len(manifest) == sum(1 for k, v in cloud.items() if v <= 0.6 and k.startswith("S2"))
    row = manifest[len(manifest) // 2]
    shard = load_shard(out_dir, row["collection"], row["shard"])
    item = load_item(row["item_href"])
    chip = Chipper(NoStatsChipIndexer(item), assets=["blue", "green", "red", "nir", "rededge1", "swir16"]).chip(
        row["chip_index_x"], row["chip_index_y"]
    )
    expected = np.concatenate([chip[k] for k in ["blue", "green", "red", "nir", "rededge1", "swir16"]]).astype(np.float32)
    np.testing.assert_array_equal(shard["pixels"][row["position"]], expected)


def test_band_statistics_asset_publishes_a_table(trained):
    graph, result = trained
    metadata = result.asset_materializations_for_node("band_statistics")[0].metadata
    assert metadata["bands"].value == 6
    assert "| sentinel-2-l2a | red |" in metadata["statistics"].value
    assert (graph.base / "training" / "s2" / "band_statistics.parquet").exists()


def r_collections(rows):
    return {r["collection"] for r in rows}
