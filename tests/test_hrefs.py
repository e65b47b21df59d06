"""The href policy refuses what an untrusted STAC item must not make us open."""

from __future__ import annotations

import os

import pytest

from stacchip_assets.errors import HrefPolicyError, StacchipError
from stacchip_assets.hrefs import HrefPolicy


@pytest.fixture
def policy(tmp_path):
    root = tmp_path / "catalog"
    (root / "item").mkdir(parents=True)
    (root / "item" / "red.tif").write_bytes(b"")
    outside = tmp_path / "secret.tif"
    outside.write_bytes(b"")
    os.symlink(outside, root / "item" / "link.tif")
    return HrefPolicy(local_roots=(str(root),)), root, outside


@pytest.mark.parametrize(
    "href",
    ["https://example.org/a.tif", "http://127.0.0.1:8080/b.tif", "s3://bucket/key/c.tif", "HTTPS://Example.org/x.tif"],
)
def test_allowed_urls(policy, href):
    assert policy[0].check(href) == href


def test_allowed_local_file_inside_root(policy):
    pol, root, _ = policy
    assert pol.check(str(root / "item" / "red.tif")) == str(root / "item" / "red.tif")


@pytest.mark.parametrize(
    "href,why",
    [
        ("file:///etc/passwd", "scheme 'file' is not allowed"),
        ("/etc/passwd", "outside the allowed folders"),
        ("/vsicurl/http://169.254.169.254/latest/meta-data", "/vsi"),
        ("https://example.org//vsizip//tmp/x.zip/a.tif", "/vsi"),
        ("HDF5:/data/file.h5:band", "GDAL driver prefix"),
        ("NETCDF:\"/data/x.nc\":sst", "GDAL driver prefix"),
        ("ftp://example.org/a.tif", "scheme 'ftp'"),
        ("gs://bucket/a.tif", "scheme 'gs'"),
        ("https:///no-host.tif", "without a host"),
        ("https://example.org/a.tif\x00.png", "control characters"),
        ("", "empty href"),
    ],
)
def test_refused_hrefs_name_item_asset_and_cause(policy, href, why):
    with pytest.raises(HrefPolicyError) as excinfo:
        policy[0].check(href, item_id="item-1", asset_key="red")
    message = str(excinfo.value)
    assert why in message and "item-1" in message and "'red'" in message
    assert isinstance(excinfo.value, StacchipError)


def test_traversal_and_symlinks_out_of_the_root_are_refused(policy):
    pol, root, outside = policy
    with pytest.raises(HrefPolicyError, match="outside the allowed folders"):
        pol.check(str(root / "item" / ".." / ".." / "secret.tif"))
    with pytest.raises(HrefPolicyError, match="outside the allowed folders"):
        pol.check(str(root / "item" / "link.tif"))


def test_a_policy_without_roots_refuses_every_local_path(tmp_path):
    with pytest.raises(HrefPolicyError, match="local paths are not allowed"):
        HrefPolicy().check(str(tmp_path / "a.tif"))


def test_indexer_and_chipper_check_hrefs_before_gdal_sees_them(tmp_path):
    from stacchip_assets import Chipper, Indexer
    from stacchip_assets.sample_data import SAMPLE_COLLECTIONS, generate_sample_catalog, sample_item_paths

    import pystac

    catalog = generate_sample_catalog(tmp_path / "catalog")
    item_path = sample_item_paths(catalog)[SAMPLE_COLLECTIONS["sentinel-2-l2a"][0]]
    item = pystac.Item.from_file(str(item_path))
    allowed = HrefPolicy(local_roots=(str(tmp_path / "catalog"),))
    indexer = Indexer(item, href_policy=allowed)
    assert indexer.create_index().num_rows > 0
    assert Chipper(indexer, assets=["red"]).chip(0, 0)["red"].shape == (1, 256, 256)

    item.assets["scl"].href = "/vsicurl/http://169.254.169.254/latest/meta-data/x.tif"
    with pytest.raises(HrefPolicyError, match=r"'scl'.*/vsi"):
        Indexer(item, href_policy=allowed).create_index()
    item.assets["red"].href = "/etc/hostname"
    with pytest.raises(HrefPolicyError, match=r"'red'.*outside the allowed folders"):
        Chipper(Indexer(item, href_policy=allowed), assets=["red"]).chip(0, 0)


def test_a_chip_index_run_refuses_an_item_pointing_outside_the_catalog(tmp_path, tmp_path_factory):
    """The code location's policy (default: http, https, s3 and the static catalog's folder)."""
    import json

    import dagster as dg

    from stacchip_assets.sample_data import SAMPLE_COLLECTIONS

    from .dagster_support import Graph, copy_catalog, item_json_path, shared_sample

    catalog = copy_catalog(shared_sample(tmp_path_factory), tmp_path / "catalog")
    collection = "landsat-c2-l2"  # its index reads the qa_pixel mask
    (item_id,) = SAMPLE_COLLECTIONS[collection]
    path = item_json_path(catalog, collection, item_id)
    outside = tmp_path / "outside.tif"
    outside.write_bytes((path.parent / "qa_pixel.tif").read_bytes())  # a real COG, but outside the catalog
    data = json.loads(path.read_text())
    data["assets"]["qa_pixel"]["href"] = str(outside)
    path.write_text(json.dumps(data))
    with dg.instance_for_test() as instance:
        graph = Graph(catalog, tmp_path / "base", instance)
        graph.add_partitions([f"{collection}/{item_id}"])
        result = graph.index(f"{collection}/{item_id}", raise_on_error=False)
        assert not result.success
        failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
        message = str(failure.event_specific_data.error)
        assert "refused" in message and "outside the allowed folders" in message and "'qa_pixel'" in message
        other = "sentinel-2-l2a"
        other_id = SAMPLE_COLLECTIONS[other][0]
        graph.add_partitions([f"{other}/{other_id}"])
        assert graph.index(f"{other}/{other_id}").success  # items inside the catalog are indexed
