"""The storage base: layout, id validation, atomic writes, local folders and a real S3 endpoint (moto)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pystac
import pytest

from stacchip_assets import Indexer
from stacchip_assets.errors import InvalidIdentifierError, StorageError
from stacchip_assets.io.storage import STORAGE_BASE_ENV, Storage, default_base

from tests.support.dagster_support import shared_sample


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


@pytest.mark.e2e
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


@pytest.mark.e2e
def test_s3_errors_are_storage_errors(s3_endpoint):
    storage = Storage.from_uri("s3://no-such-bucket/p", endpoint_url=s3_endpoint, region="us-east-1",
                               access_key_id="k", secret_access_key="s")
    with pytest.raises(StorageError, match="no-such-bucket"):
        storage.write_bytes("x", b"1")
    with pytest.raises(StorageError):
        storage.read_bytes("x")



# -- credentials and killed writers ---------------------------------------------------------------

def test_signed_hrefs_are_stored_without_their_tokens(tmp_path, naip_item):
    item = naip_item.clone()
    item.make_asset_hrefs_absolute()
    sas = "st=2030-01-01T00%3A00%3A00Z&se=2030-01-02T00%3A00%3A00Z&sp=rl&sv=2021-06-08&sr=c&skoid=x&sig=SAS%2Fsecret%3D"
    presigned = ("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAX%2F20300101%2Fus-east-1%2Fs3%2Faws4_request"
                 "&X-Amz-Date=20300101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
                 "&X-Amz-Security-Token=SESSION-secret&X-Amz-Signature=0123abcd")
    key = next(iter(item.assets))
    item.assets[key].href = f"https://acct.blob.core.windows.net/naip/{key}.tif?{sas}"
    item.add_asset("presigned", pystac.Asset(f"https://bucket.s3.amazonaws.com/x.tif?versionId=7&{presigned}"))
    item.add_asset("tokens", pystac.Asset("https://user:pw-secret@example.org/y.tif?format=tif&token=T-secret&key=K-secret"
                                          "&access_token=A-secret&page=2"))
    item.add_link(pystac.Link("license", "https://example.org/license?api_key=L-secret&lang=en"))
    stored = json.loads(Path(Storage(tmp_path).write_item(item, "naip")).read_text())
    assert stored["assets"][key]["href"] == f"https://acct.blob.core.windows.net/naip/{key}.tif"
    assert stored["assets"]["presigned"]["href"] == "https://bucket.s3.amazonaws.com/x.tif?versionId=7"
    assert stored["assets"]["tokens"]["href"] == "https://example.org/y.tif?format=tif&page=2"
    assert [link["href"] for link in stored["links"] if link["rel"] == "license"] == ["https://example.org/license?lang=en"]
    text = json.dumps(stored)
    assert "secret" not in text.lower() and "sig=" not in text and "X-Amz" not in text


KILLED_WRITER = r"""
import sys, time
from stacchip_assets.io.storage import Storage
storage = Storage(sys.argv[1])
with storage.staged_path("index/naip/x/index_x.parquet") as tmp:
    with open(tmp, "wb") as handle:
        handle.write(b"half a file")
        handle.flush()
        print(tmp, flush=True)
        time.sleep(600)
"""


def test_temporaries_of_killed_writers_are_removed_and_never_seen(tmp_path):
    import signal
    import subprocess
    import sys

    base = tmp_path / "base"
    storage = Storage(base)
    storage.write_bytes("index/naip/x/index_x.parquet", b"the whole old file")
    # a real writer process, killed with SIGKILL in the middle of its write
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(base)], stdout=subprocess.PIPE, text=True)
    tmp = Path(writer.stdout.readline().strip())
    assert tmp.parent == base / ".tmp" and tmp.name.endswith(".tmp") and f".{writer.pid}." in tmp.name
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    writer.stdout.close()
    assert tmp.read_bytes() == b"half a file"
    assert (base / "index/naip/x/index_x.parquet").read_bytes() == b"the whole old file"  # the old file, whole
    assert [e.key for e in storage.list_files()] == ["index/naip/x/index_x.parquet"]  # readers never see .tmp/
    # a temporary of a live writer (this process) stays; so does one of another host, until it is a day old
    live = base / ".tmp" / f"{Path(tmp.name).name.split('.')[0]}.{os.getpid()}.{'a' * 12}.tmp"
    live.write_bytes(b"in progress")
    foreign = base / ".tmp" / f"otherhost.1.{'b' * 12}.tmp"
    foreign.write_bytes(b"elsewhere")
    old_foreign = base / ".tmp" / f"otherhost.2.{'c' * 12}.tmp"
    old_foreign.write_bytes(b"long gone")
    os.utime(old_foreign, (1, 1))
    # the next Storage that writes to the base removes what dead writers left
    Storage(base).write_bytes("item_sets/naip.json", b"{}")
    assert not tmp.exists() and not old_foreign.exists()
    assert live.exists() and foreign.exists()
    assert sorted(p.name for p in (base / ".tmp").iterdir()) == sorted([live.name, foreign.name])
    live.unlink()
