"""The storage base: layout, id validation, atomic writes, local folders and a real S3 endpoint (moto)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pystac
import pytest

from stacchip_assets import Indexer
from stacchip_assets.errors import InvalidIdentifierError, StorageError
from stacchip_assets.storage import STORAGE_BASE_ENV, Storage, default_base

from .dagster_support import shared_sample


@pytest.fixture(scope="module")
def naip_item(tmp_path_factory) -> pystac.Item:
    catalog = shared_sample(tmp_path_factory)
    return pystac.Item.from_file(str(catalog.parent / "naip" / "me_m_4406901_ne_19_060_20211006" / "me_m_4406901_ne_19_060_20211006.json"))


def hidden_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if p.is_file()]


def test_layout_keys_are_stacchips():
    assert Storage.item_key("naip", "a1") == "naip/a1/stac_item.json"
    assert Storage.index_key("naip", "a1") == "index/naip/a1/index_a1.parquet"
    assert Storage.quicklook_key("naip", "a1") == "index/naip/a1/quicklook_a1.png"


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", "", ".hidden", "a\x00b", "a\\b", "x" * 300])
def test_ids_are_validated_before_they_become_paths(bad):
    with pytest.raises(InvalidIdentifierError):
        Storage.item_key("naip", bad)
    with pytest.raises(InvalidIdentifierError):
        Storage.index_key(bad, "item")


@pytest.mark.parametrize("reserved", ["index", "combined", "item_sets"])
def test_layout_folders_cannot_be_collections(reserved):
    with pytest.raises(InvalidIdentifierError):
        Storage.item_key(reserved, "item")


def test_keys_cannot_climb_out_of_the_base(tmp_path):
    storage = Storage(tmp_path)
    for key in ("../escape", "a/../../b", "a\\b"):
        with pytest.raises(StorageError):
            storage.write_bytes(key, b"x")
    assert not (tmp_path.parent / "escape").exists()


def test_local_write_is_atomic_and_leaves_no_temporaries(tmp_path):
    storage = Storage(tmp_path / "base")
    uri = storage.write_bytes("a/b/c.bin", b"first")
    assert Path(uri).read_bytes() == b"first"
    storage.write_bytes("a/b/c.bin", b"second")
    assert storage.read_bytes("a/b/c.bin") == b"second"
    with pytest.raises(TypeError):  # the write fails half-way: the old content stays, no temp file left
        storage.write_bytes("a/b/c.bin", "not bytes")  # type: ignore[arg-type]
    assert storage.read_bytes("a/b/c.bin") == b"second"
    assert hidden_files(tmp_path) == []
    info = storage.info("a/b/c.bin")
    assert info is not None and info.size == len(b"second")
    assert storage.info("a/b/missing") is None
    with pytest.raises(StorageError, match="does not exist"):
        storage.read_bytes("a/b/missing")


def test_listing_skips_hidden_and_underscore_files(tmp_path):
    storage = Storage(tmp_path)
    storage.write_bytes("d/x.parquet", b"1")
    storage.write_bytes("d/_manifest.parquet", b"1")
    (tmp_path / "d" / ".x.parquet.123.tmp").write_bytes(b"partial")
    assert [e.key for e in storage.list_files("d", suffix=".parquet")] == ["d/x.parquet"]
    assert list(storage.list_files("nothing-here")) == []


def test_item_is_stored_with_absolute_asset_hrefs(tmp_path, naip_item):
    storage = Storage(tmp_path)
    uri = storage.write_item(naip_item)
    assert uri == str(tmp_path / "naip" / naip_item.id / "stac_item.json")
    data = json.loads(Path(uri).read_text())
    href = data["assets"]["image"]["href"]
    assert os.path.isabs(href) and Path(href).is_file()
    assert [link["href"] for link in data["links"] if link["rel"] == "self"] == [uri]
    back = storage.read_item("naip", naip_item.id)
    assert back.id == naip_item.id and back.get_self_href() == uri


def test_index_round_trip_and_footer_row_count(tmp_path, naip_item):
    storage = Storage(tmp_path)
    table = Indexer(naip_item).create_index()
    uri = storage.write_index(table, "naip", naip_item.id)
    assert Path(uri).is_file()
    assert storage.read_index("naip", naip_item.id).equals(table)
    assert storage.parquet_num_rows(Storage.index_key("naip", naip_item.id)) == table.num_rows
    assert [(c, i) for c, i, _ in storage.indexed_items()] == [("naip", naip_item.id)]


def test_default_base(monkeypatch, tmp_path):
    monkeypatch.delenv(STORAGE_BASE_ENV, raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    assert default_base() == str(tmp_path / "stacchip")
    monkeypatch.setenv(STORAGE_BASE_ENV, "s3://bucket/prefix")
    assert default_base() == "s3://bucket/prefix"


def test_unsupported_base():
    with pytest.raises(StorageError, match="unsupported"):
        Storage("ftp://host/x")
    with pytest.raises(StorageError, match="no bucket"):
        Storage("s3://")


# -- a real S3 endpoint ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3_endpoint():
    server_mod = pytest.importorskip("moto.server", reason="moto[server] is not installed")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="k",
                 aws_secret_access_key="s").create_bucket(Bucket="chips")
    yield endpoint
    server.stop()


def test_s3_base(s3_endpoint, naip_item):
    storage = Storage.from_uri("s3://chips/some/prefix", endpoint_url=s3_endpoint, region="us-east-1",
                               access_key_id="k", secret_access_key="s")
    assert storage.uri("a/b") == "s3://chips/some/prefix/a/b"
    table = Indexer(naip_item).create_index(item_href=storage.uri(Storage.item_key("naip", naip_item.id)))
    item_uri = storage.write_item(naip_item)
    index_uri = storage.write_index(table, "naip", naip_item.id)
    assert index_uri == f"s3://chips/some/prefix/index/naip/{naip_item.id}/index_{naip_item.id}.parquet"
    assert storage.read_index("naip", naip_item.id).num_rows == table.num_rows
    assert storage.read_item("naip", naip_item.id).get_self_href() == item_uri
    assert [(c, i) for c, i, _ in storage.indexed_items()] == [("naip", naip_item.id)]
    storage.copy(Storage.index_key("naip", naip_item.id), "combined/naip/x.parquet")
    assert storage.parquet_num_rows("combined/naip/x.parquet") == table.num_rows
    assert storage.delete("combined/naip/x.parquet") and not storage.exists("combined/naip/x.parquet")
    assert not storage.delete("combined/naip/x.parquet")


def test_s3_errors_are_storage_errors(s3_endpoint):
    storage = Storage.from_uri("s3://no-such-bucket/p", endpoint_url=s3_endpoint, region="us-east-1",
                               access_key_id="k", secret_access_key="s")
    with pytest.raises(StorageError, match="no-such-bucket"):
        storage.write_bytes("x", b"1")
    with pytest.raises(StorageError):
        storage.read_bytes("x")

