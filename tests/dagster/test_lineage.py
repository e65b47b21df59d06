"""Column lineage and the pictures in the metadata, on a really materialized graph (temporary Dagster
instance, copy of the sample catalog): chip_index -> combined_index -> chip query results."""

from __future__ import annotations

import base64
import io
import re

import dagster as dg
import pytest
from PIL import Image

from stacchip_assets.io.geoparquet import INDEX_SCHEMA
from stacchip_assets.io.storage import Storage

from tests.support.dagster_support import QUIET, Graph, copy_catalog, in_memory_instance, shared_sample

S2 = "sentinel-2-l2a"
KEYS = [f"{S2}/S2B_31UDQ_20230704_0_L2A", "naip/me_m_4406901_ne_19_060_20211006"]
INDEX_COLUMNS = [f.name for f in INDEX_SCHEMA]


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    root = tmp_path_factory.mktemp("lineage")
    catalog = copy_catalog(shared_sample(tmp_path_factory), root / "catalog")
    with in_memory_instance() as instance:
        g = Graph(catalog, root / "base", instance)
        g.add_partitions(KEYS)
        for key in KEYS:
            assert g.index(key).success
        assert g.combine().success
        yield g


def lineage_of(materialization) -> dict[str, list[tuple[str, str]]]:
    value = materialization.metadata["dagster/column_lineage"]
    lineage = value.value if hasattr(value, "value") else value
    return {c: [(d.asset_key.to_user_string(), d.column_name) for d in deps] for c, deps in lineage.deps_by_column.items()}


def png_of(markdown: str) -> bytes:
    match = re.fullmatch(r"!\[\w+\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert match, markdown[:80]
    return base64.b64decode(match.group(1))


def test_combined_index_columns_come_from_chip_index(graph):
    lineage = lineage_of(graph.latest("combined_index"))
    assert lineage == {c: [("chip_index", c)] for c in INDEX_COLUMNS}


def test_chip_query_result_columns_come_from_combined_index(graph):
    job = graph.defs.get_job_def("chip_query_job")
    result = job.execute_in_process(run_config={**QUIET, "ops": {"chip_query": {"config": {"name": "naip-all", "collections": ["naip"]}}}},
                                    instance=graph.instance, resources=graph.resources)
    assert result.success
    event = graph.instance.get_latest_materialization_event(dg.AssetKey(["chip_queries", "naip-all"]))
    assert event is not None
    materialization = event.asset_materialization
    written = Storage(str(graph.base)).read_table("queries/naip-all.parquet")
    assert materialization.metadata["dagster/row_count"].value == written.num_rows > 0
    assert lineage_of(materialization) == {c: [("combined_index", c)] for c in written.column_names}


def test_chip_index_metadata_has_gallery_and_rounded_distributions(graph):
    meta = graph.latest("chip_index", KEYS[0]).metadata
    gallery = Image.open(io.BytesIO(png_of(meta["gallery"].value)))
    assert gallery.format == "PNG" and gallery.size[0] > 300
    assert (Storage(str(graph.base)).read_bytes(Storage.gallery_key(*KEYS[0].split("/"))) == png_of(meta["gallery"].value))
    assert "true colour from red[0], green[0], blue[0]" in meta["gallery_chips"].value
    table = meta["distributions"].value
    assert table.startswith("| statistic | cloud | nodata |") and "| p50 |" in table
    assert all(len(repr(v).split(".")[-1]) <= 4 for v in meta["cloud_cover_distribution"].value.values())


def test_combined_index_metadata_has_coverage_map_and_provenance(graph):
    meta = graph.latest("combined_index").metadata
    png = png_of(meta["coverage_map"].value)
    assert Image.open(io.BytesIO(png)).size == (2 * 300, 260 + 48)  # two collections side by side
    assert Storage(str(graph.base)).read_bytes("combined/_coverage.png") == png
    rows = {r.data["partition"]: r.data for r in meta["provenance"].value.records}
    assert set(rows) == set(KEYS)
    for key in KEYS:
        chip_meta = graph.latest("chip_index", key)
        assert rows[key]["data_version"] == chip_meta.tags["dagster/data_version"]
        assert rows[key]["stac_item_updated"] == chip_meta.metadata["stac_item_updated"].value
        assert rows[key]["stac_item_href"] == chip_meta.metadata["stac_item_href"].value
        assert rows[key]["rows"] == chip_meta.metadata["dagster/row_count"].value


def test_training_manifest_columns_come_from_combined_index(graph):
    import pyarrow.parquet as pq

    from stacchip_assets.dagster_defs.training import DaskResource

    resources = {**graph.resources, "dask": DaskResource(enabled=False)}
    config = {"name": "s2-lineage", "collections": [S2], "shard_size": 8, "seed": 7}
    result = dg.materialize([graph.assets["training_set"]], instance=graph.instance, resources=resources,
                            run_config={"ops": {"training_set": {"config": config}}})
    assert result.success
    manifest = pq.read_table(Storage(str(graph.base)).path("training/s2-lineage/manifest.parquet"))
    lineage = lineage_of(graph.latest("training_set"))
    from_index = [c for c in manifest.column_names if c in INDEX_COLUMNS]
    assert from_index and lineage == {c: [("combined_index", c)] for c in from_index}
