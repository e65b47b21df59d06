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
