"""The index file is GeoParquet 1.1 that geopandas and pyarrow.dataset read as they are."""

from __future__ import annotations

import datetime as dt
import json
import warnings
from pathlib import Path

import geopandas
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import shapely

from stacchip_assets import NoStatsChipIndexer, StorageError, read_index, write_index
from stacchip_assets.io.geoparquet import INDEX_SCHEMA

from tests.unit.index.test_indexer_fixtures import FIXTURES


@pytest.fixture(scope="module")
def index_table():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pystac

        item = pystac.Item.from_file(str(FIXTURES / "sentinel-2-l2a__S2A_31UDQ_20230617_0_L2A.json"))
    return NoStatsChipIndexer(item).create_index(item_href="s3://bucket/sentinel-2-l2a/S2A_31UDQ_20230617_0_L2A/stac_item.json")


def test_schema_and_values(index_table):
    assert index_table.schema.equals(INDEX_SCHEMA, check_metadata=False)
    assert index_table.num_rows == 42 * 42
    row = index_table.slice(43, 1).to_pylist()[0]
    assert row["chipid"] == "S2A_31UDQ_20230617_0_L2A-1-1"
    assert row["date"] == dt.date(2023, 6, 17)
    assert row["datetime"] == dt.datetime(2023, 6, 17, 11, 7, 28, 891000, tzinfo=dt.timezone.utc)
    assert row["collection"] == "sentinel-2-l2a" and row["item_id"] == "S2A_31UDQ_20230617_0_L2A"
    assert row["chip_size"] == 256 and row["chip_stride"] == 256
    geom = shapely.from_wkb(row["geometry"])
    assert (row["bbox"]["xmin"], row["bbox"]["ymin"], row["bbox"]["xmax"], row["bbox"]["ymax"]) == geom.bounds


def test_geo_metadata_is_geoparquet_1_1(index_table):
    geo = json.loads(index_table.schema.metadata[b"geo"])
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
    column = geo["columns"]["geometry"]
    assert column["encoding"] == "WKB" and column["geometry_types"] == ["Polygon"]
    assert column["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
    assert column["crs"]["id"] == {"authority": "OGC", "code": "CRS84"}
    bounds = shapely.total_bounds(shapely.from_wkb(index_table["geometry"].to_numpy(zero_copy_only=False)))
    assert column["bbox"] == pytest.approx(list(bounds))


def test_roundtrip_through_geopandas_and_pyarrow_dataset(index_table, tmp_path):
    path = tmp_path / "index" / "index_item.parquet"
    write_index(index_table, path)
    frame = geopandas.read_parquet(path)
    assert frame.crs is not None and frame.crs.equals("OGC:CRS84")
    assert frame.geometry.is_valid.all() and len(frame) == index_table.num_rows
    assert frame.geometry.iloc[5].equals_exact(shapely.from_wkb(index_table["geometry"][5].as_py()), 0)
    dataset = ds.dataset(path, format="parquet")
    assert dataset.count_rows() == index_table.num_rows
    filtered = dataset.to_table(filter=(ds.field("bbox", "xmin") > 2.5) & (ds.field("chip_index_y") == 0))
    assert filtered.num_rows > 0 and all(b["xmin"] > 2.5 for b in filtered["bbox"].to_pylist())
    assert read_index(path).equals(index_table)


def test_failed_write_leaves_the_previous_file_intact(index_table, tmp_path):
    path = tmp_path / "index_item.parquet"
    write_index(index_table, path)
    before = path.read_bytes()
    unwritable = index_table.append_column("interval", pa.array([pa.scalar((1, 1, 1), pa.month_day_nano_interval())] * index_table.num_rows))
    with pytest.raises(StorageError, match="cannot write index"):
        write_index(unwritable, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["index_item.parquet"]  # no temporary file left


def test_empty_index_is_still_valid_geoparquet(tmp_path):
    from stacchip_assets.io.geoparquet import empty_index_table

    path = write_index(empty_index_table(), tmp_path / "empty.parquet")
    frame = geopandas.read_parquet(path)
    assert len(frame) == 0 and frame.crs.equals("OGC:CRS84")
    assert pq.read_schema(path).field("geometry").type == pa.binary()


def test_missing_file_is_a_storage_error(tmp_path):
    with pytest.raises(StorageError, match="nothing.parquet"):
        read_index(Path(tmp_path) / "nothing.parquet")
    assert np is not None
