"""chip_query_job: the combined index of the sample catalog (real COGs, every item indexed), queried
through Dagster; the GeoParquet it writes must hold exactly the rows a direct filter of the
combined index selects, before and after the compacted tier exists."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg
import geopandas
import numpy as np
import pyarrow.parquet as pq
import pytest

from stacchip_assets.index.combined import CombinedIndex
from stacchip_assets.io.storage import Storage

from tests.support.dagster_support import ALL_KEYS, QUIET, Graph, copy_catalog, shared_sample


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    root = tmp_path_factory.mktemp("query")
    catalog = copy_catalog(shared_sample(tmp_path_factory), root / "catalog")
    with dg.instance_for_test() as instance:
        graph = Graph(catalog, root / "base", instance)
        graph.add_partitions()
        for key in ALL_KEYS:
            assert graph.index(key).success
        assert graph.combine().success
        yield graph


def run_query(graph: Graph, **config) -> dg.ExecuteInProcessResult:
    job = graph.defs.get_job_def("chip_query_job")
    return job.execute_in_process(run_config={**QUIET, "ops": {"chip_query": {"config": config}}},
                                  instance=graph.instance, resources=graph.resources, raise_on_error=False)


def direct(graph: Graph, collections, start, end, bbox, max_cloud):
    """The same filter written out on the whole combined index, with pandas."""
    frame = CombinedIndex(Storage(graph.base)).read().to_pandas()
    box = frame["bbox"].apply(lambda b: (b["xmin"], b["ymin"], b["xmax"], b["ymax"]))
    overlaps = box.apply(lambda b: b[2] >= bbox[0] and b[0] <= bbox[2] and b[3] >= bbox[1] and b[1] <= bbox[3])
    keep = (frame.collection.isin(collections) & (frame.date >= start) & (frame.date <= end) & overlaps
            & (frame.cloud_cover_percentage <= np.float32(max_cloud)))
    return frame[keep]


def query_around_sentinel2(graph: Graph) -> dict:
    """A bbox over the south-west part of the Sentinel-2 tiles, July 2023, max cloud 0.3."""
    frame = CombinedIndex(Storage(graph.base)).read(columns=["collection", "bbox"]).to_pandas()
    s2 = frame[frame.collection == "sentinel-2-l2a"]["bbox"]
    xs = np.array([(b["xmin"] + b["xmax"]) / 2 for b in s2])
    ys = np.array([(b["ymin"] + b["ymax"]) / 2 for b in s2])
    bbox = [float(xs.min()) - 0.01, float(ys.min()) - 0.01, float(np.median(xs)), float(np.median(ys))]
    return {"collections": ["sentinel-2-l2a", "naip"], "start_date": "2023-07-01", "end_date": "2023-07-31",
            "bbox": bbox, "max_cloud": 0.3}


def check_result(graph: Graph, result: dg.ExecuteInProcessResult, config: dict):
    assert result.success
    expected = direct(graph, config["collections"], dt.date.fromisoformat(config["start_date"]),
                      dt.date.fromisoformat(config["end_date"]), config["bbox"], config["max_cloud"])
    total = CombinedIndex(Storage(graph.base)).num_rows()
    assert 0 < len(expected) < total  # the filter selects something, not everything
    path = Path(graph.base) / "queries" / f"{config['name']}.parquet"
    written = geopandas.read_parquet(path)  # GeoParquet as written
    assert written.crs == "OGC:CRS84"
    assert sorted(zip(written.collection, written.chipid)) == sorted(zip(expected.collection, expected.chipid))
    mine = written.set_index(["collection", "chipid"]).sort_index()
    theirs = expected.set_index(["collection", "chipid"]).sort_index()
    assert np.array_equal(mine.cloud_cover_percentage.to_numpy(), theirs.cloud_cover_percentage.to_numpy())
    assert list(mine.item_href) == list(theirs.item_href)
    assert [g.wkb for g in mine.geometry] == list(theirs.geometry)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary file left
    output = result.output_for_node("chip_query")
    assert output == str(path)
    meta = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_OUTPUT
                ).event_specific_data.metadata
    assert meta["dagster/row_count"].value == len(expected)
    assert meta["items"].value == expected.item_id.nunique()
    assert meta["bytes_written"].value == path.stat().st_size
    assert 0 < meta["row_groups_read"].value <= meta["row_groups_total"].value
    assert 0 < meta["row_group_bytes_read"].value <= meta["row_group_bytes_total"].value
    assert "| chipid | collection | date |" in meta["preview"].value
    assert f"**{len(expected)}** chips" in meta["preview"].value
    return meta


def test_chip_query_job_writes_exactly_the_filtered_rows(indexed):
    config = {**query_around_sentinel2(indexed), "name": "s2-july-clear"}
    meta = check_result(indexed, run_query(indexed, **config), config)
    assert meta["layout"].value == "per-item"
    # the per-item layout: only the files of the selected collections are opened
    entries = CombinedIndex(Storage(indexed.base)).entries()
    assert meta["files_opened"].value == sum(1 for (c, _) in entries if c in config["collections"])


def test_chip_query_job_on_the_compacted_tier(indexed):
    assert indexed.combine(compaction="enable").success
    query = query_around_sentinel2(indexed)
    config = {**query, "name": "s2-july-clear-compacted"}
    meta = check_result(indexed, run_query(indexed, **config, layout="compacted"), config)
    assert meta["layout"].value == "compacted"
    assert 0 < meta["runs_selected"].value <= meta["runs_total"].value and meta["pending_files"].value == 0
    # the same rows, byte for byte, as the same query forced onto the per-item files
    assert run_query(indexed, **query, name="s2-july-clear-per-item", layout="per-item").success
    folder = Path(indexed.base) / "queries"
    compacted = pq.read_table(folder / "s2-july-clear-compacted.parquet")
    per_item = pq.read_table(folder / "s2-july-clear-per-item.parquet")
    order = ["collection", "chipid"]
    assert compacted.sort_by([(c, "ascending") for c in order]).equals(per_item.sort_by([(c, "ascending") for c in order]))


def test_chip_query_job_refuses_bad_input_with_clear_messages(indexed):
    bad_name = run_query(indexed, name="../escape")
    assert not bad_name.success
    failure = next(e for e in bad_name.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    assert "chip query '../escape'" in failure.event_specific_data.error.message
    assert not (Path(indexed.base).parent / "escape.parquet").exists()
    bad_date = run_query(indexed, name="bad-date", start_date="July 2023")
    failure = next(e for e in bad_date.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    assert "date_range: 'July 2023' is not an ISO date (YYYY-MM-DD)" in failure.event_specific_data.error.message
