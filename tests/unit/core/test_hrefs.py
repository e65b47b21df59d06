"""The href policy refuses what an untrusted STAC item must not make us open."""

from __future__ import annotations

import os

import pytest

from stacchip_assets.errors import HrefPolicyError, StacchipError
from stacchip_assets.io.local_files import HrefPolicy

from tests.support.dagster_support import in_memory_instance


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
    import pystac

    from stacchip_assets import Chipper, Indexer
    from stacchip_assets.demo.sample_data import SAMPLE_COLLECTIONS, generate_sample_catalog, sample_item_paths

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


def test_an_item_indexed_without_reading_pixels_is_checked_too(tmp_path):
    """NoStats indexing opens no COG, yet the item is stored and read back later: refuse it up front."""
    import pystac

    from stacchip_assets.demo.sample_data import SAMPLE_COLLECTIONS, generate_sample_catalog, sample_item_paths
    from stacchip_assets.index.item_index import ChipSettings, index_item
    from stacchip_assets.io.storage import Storage

    catalog = generate_sample_catalog(tmp_path / "catalog")
    item = pystac.Item.from_file(str(sample_item_paths(catalog)[SAMPLE_COLLECTIONS["naip"][0]]))
    allowed = HrefPolicy(local_roots=(str(tmp_path / "catalog"),))
    storage = Storage(tmp_path / "base")
    assert index_item(item, storage, ChipSettings(indexer="nostats"), href_policy=allowed).chips_kept > 0
    item.assets["image"].href = "file:///etc/hostname"
    with pytest.raises(HrefPolicyError, match=r"'image'.*file"):
        index_item(item, Storage(tmp_path / "other"), ChipSettings(indexer="nostats"), href_policy=allowed)
    assert not (tmp_path / "other").exists()  # nothing stored


def test_a_chip_index_run_refuses_an_item_pointing_outside_the_catalog(tmp_path, tmp_path_factory):
    """The code location's policy (default: http, https, s3 and the static catalog's folder)."""
    import json

    from stacchip_assets.demo.sample_data import SAMPLE_COLLECTIONS

    from tests.support.dagster_support import Graph, copy_catalog, item_json_path, shared_sample

    catalog = copy_catalog(shared_sample(tmp_path_factory), tmp_path / "catalog")
    collection = "landsat-c2-l2"  # its index reads the qa_pixel mask
    (item_id,) = SAMPLE_COLLECTIONS[collection]
    path = item_json_path(catalog, collection, item_id)
    outside = tmp_path / "outside.tif"
    outside.write_bytes((path.parent / "qa_pixel.tif").read_bytes())  # a real COG, but outside the catalog
    data = json.loads(path.read_text())
    data["assets"]["qa_pixel"]["href"] = str(outside)
    path.write_text(json.dumps(data))
    with in_memory_instance() as instance:
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


# -- credentials in hrefs ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    "href,clean",
    [
        ("https://a.blob.core.windows.net/c/x.tif?st=2030-01-01T00%3A00Z&se=2030-01-02&sp=rl&sv=2021&sr=c&sig=abc%3D",
         "https://a.blob.core.windows.net/c/x.tif"),
        ("https://b.s3.amazonaws.com/k.tif?versionId=3&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2Fx"
         "&X-Amz-Date=20300101T000000Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host&X-Amz-Security-Token=t&X-Amz-Signature=s",
         "https://b.s3.amazonaws.com/k.tif?versionId=3"),
        ("https://b.s3.amazonaws.com/k.tif?AWSAccessKeyId=AKIA&Expires=1&Signature=s", "https://b.s3.amazonaws.com/k.tif"),
        ("https://storage.googleapis.com/b/k.tif?X-Goog-Credential=c&X-Goog-Signature=s&alt=media",
         "https://storage.googleapis.com/b/k.tif?alt=media"),
        ("https://u:p@example.org/a.tif?token=1&access_token=2&key=3&api_key=4&band=red", "https://example.org/a.tif?band=red"),
        ("https://example.org/a.tif?st=2030&se=2031", "https://example.org/a.tif?st=2030&se=2031"),  # no SAS signature
        ("https://example.org/a.tif?version=2&format=COG", "https://example.org/a.tif?version=2&format=COG"),
        ("s3://bucket/key.tif", "s3://bucket/key.tif"),
        ("/data/a.tif", "/data/a.tif"),
    ],
)
def test_credentials_are_stripped_from_hrefs_and_harmless_parameters_kept(href, clean):
    from stacchip_assets.core.hrefs import has_credentials, strip_credentials

    assert strip_credentials(href) == clean
    assert has_credentials(href) == (clean != href)


def test_credentials_are_redacted_inside_text():
    from stacchip_assets.core.hrefs import redact_credentials

    text = ("cannot open https://h/x.tif?st=1&sig=SECRET1: HTTP 403 ('/vsicurl/https://h/y.tif?token=SECRET2'), "
            "retrying https://h/z.tif?a=1&X-Amz-Signature=SECRET3.")
    clean = redact_credentials(text)
    assert "SECRET" not in clean
    assert clean == ("cannot open https://h/x.tif: HTTP 403 ('/vsicurl/https://h/y.tif'), retrying https://h/z.tif?a=1.")


# -- stored items read again: the reader's and the training extraction's policy ------------------------

def test_a_local_rasters_policy_admits_tiffs_only_by_content(tmp_path):
    policy = HrefPolicy(local_rasters=True)
    tif = tmp_path / "a.tif"
    tif.write_bytes(b"II*\x00" + bytes(100))
    assert policy.check(str(tif)) == str(tif)
    assert policy.check(str(tmp_path / "missing.tif")) == str(tmp_path / "missing.tif")  # GDAL says it is missing
    disguised = tmp_path / "vrt.tif"  # GDAL opens by content: a VRT named .tif could point anywhere
    disguised.write_text('<VRTDataset rasterXSize="1" rasterYSize="1"></VRTDataset>')
    for href, why in ((str(disguised), "not a TIFF or JPEG 2000"), ("/etc/passwd", "not a TIFF or JPEG 2000"),
                      (str(tmp_path), "not a regular file"), ("file:///etc/passwd", "scheme 'file'"),
                      ("/vsicurl/http://169.254.169.254/x.tif", "/vsi")):
        with pytest.raises(HrefPolicyError, match=why):
            policy.check(href, item_id="i", asset_key="red")
    link = tmp_path / "link.tif"
    os.symlink("/etc/passwd", link)
    with pytest.raises(HrefPolicyError, match="not a TIFF"):
        policy.check(str(link))


@pytest.fixture(scope="module")
def indexed_base(tmp_path_factory):
    """The sample catalog (outside the default sample folder) indexed into a local base."""
    from stacchip_assets.index.combined import CombinedIndex
    from stacchip_assets.index.item_index import ChipSettings, index_item
    from stacchip_assets.io.stac_source import StaticCatalogSource
    from stacchip_assets.io.storage import Storage

    from tests.support.dagster_support import copy_catalog, shared_sample

    root = tmp_path_factory.mktemp("reader-policy")
    catalog = copy_catalog(shared_sample(tmp_path_factory), root / "catalog")
    storage = Storage(root / "base")
    source = StaticCatalogSource(catalog)
    results = [index_item(source.get_item("naip", i.id), storage, ChipSettings(chip_size=256))
               for i in source.search("naip")]
    CombinedIndex(storage).update([(r.collection, r.item_id) for r in results])
    return catalog, storage


def _edit_stored_item(storage, row, href: str) -> None:
    import json

    path = row["item_href"]
    data = json.loads(open(path).read())
    for asset in data["assets"].values():
        asset["href"] = href
    with open(path, "w") as handle:
        json.dump(data, handle)


@pytest.mark.parametrize("href,why", [("/etc/passwd", "not a TIFF or JPEG 2000"),
                                      ("/vsicurl/http://169.254.169.254/latest/meta-data/x.tif", "/vsi"),
                                      ("file:///etc/passwd", "scheme 'file'")])
def test_read_chip_refuses_a_stored_item_edited_to_point_elsewhere(indexed_base, href, why):
    from stacchip_assets.index.combined import CombinedIndex
    from stacchip_assets.index.reader import read_chip, read_chip_by_id

    catalog, storage = indexed_base
    row = CombinedIndex(storage).read().to_pylist()[0]
    original = open(row["item_href"]).read()
    try:
        pixels = read_chip(row)  # the default policy: a real COG outside the sample folder is read
        assert pixels["image"].shape == (4, 256, 256)
        strict = HrefPolicy(local_roots=(str(catalog.parent),))
        assert read_chip(row, href_policy=strict)["image"].shape == (4, 256, 256)
        with pytest.raises(HrefPolicyError, match="outside the allowed folders"):
            read_chip(row, href_policy=HrefPolicy(local_roots=(str(catalog.parent / "elsewhere"),)))

        _edit_stored_item(storage, row, href)
        strict_why = "outside the allowed folders" if href.startswith("/etc") else why
        for call, reason in ((lambda: read_chip(row), why), (lambda: read_chip(row, href_policy=strict), strict_why),
                             (lambda: read_chip_by_id(row["chipid"], storage), why)):
            with pytest.raises(HrefPolicyError) as excinfo:
                call()
            message = str(excinfo.value)
            assert reason in message and repr(row["item_id"]) in message and "'image'" in message, message
    finally:
        open(row["item_href"], "w").write(original)


def test_training_extraction_refuses_a_stored_item_edited_to_point_elsewhere(indexed_base, tmp_path):
    from stacchip_assets.index.combined import CombinedIndex
    from stacchip_assets.training import TrainingSetConfig, select_chips, write_training_set

    catalog, storage = indexed_base
    index = CombinedIndex(storage).read()
    config = TrainingSetConfig(bands={"naip": ["image"]})
    manifest = write_training_set(select_chips(index, config), config, tmp_path / "ok",
                                  href_policy=HrefPolicy(local_roots=(str(catalog.parent),)))
    assert manifest.num_rows == index.num_rows
    row = index.to_pylist()[0]
    original = open(row["item_href"]).read()
    try:
        _edit_stored_item(storage, row, "/etc/passwd")
        for policy in (None, HrefPolicy(local_roots=(str(catalog.parent),))):
            with pytest.raises(HrefPolicyError, match=r"'image'.*/etc/passwd"):
                write_training_set(select_chips(index, config), config, tmp_path / "bad", href_policy=policy)
        assert not (tmp_path / "bad").exists()  # nothing published
        from stacchip_assets.training.band_stats import band_statistics

        for policy in (None, HrefPolicy(local_roots=(str(catalog.parent),))):
            with pytest.raises(HrefPolicyError, match=r"'image'.*/etc/passwd"):
                band_statistics(select_chips(index, config), config, href_policy=policy)
    finally:
        open(row["item_href"], "w").write(original)
    records = band_statistics(select_chips(index, config), config, href_policy=HrefPolicy(local_roots=(str(catalog.parent),)))
    assert sum(r["count"] + r["masked"] for r in records if r["band"] == records[0]["band"]) == index.num_rows * 256 * 256
