"""What GDAL opens when reading pixels is decided on the opened file, not on the href string.

Real files only: COGs written by rasterio, VRT files and inline VRT XML that would read a secret
file, a thread that swaps a COG and a VRT under one path while chips are read, huge-tile COGs.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import rasterio
from affine import Affine

from stacchip_assets.core.limits import ReadLimits, ResourceLimitError
from stacchip_assets.errors import AssetReadError, HrefPolicyError, StacchipError
from stacchip_assets.index.chip_indexer import NoStatsChipIndexer, Sentinel2Indexer
from stacchip_assets.index.chipper import Chipper
from stacchip_assets.io.local_files import HrefPolicy, default_read_policy
from stacchip_assets.io.raster import ALLOWED_DRIVERS, RefusedRasterError, open_asset
from stacchip_assets.io.settings import read_limits

from tests.support.cogs import make_item, write_cog
from tests.unit.core.test_hrefs import _edit_stored_item, indexed_base  # noqa: F401  (a module fixture, reused)

T10 = Affine(10, 0, 399960.0, 0, -10, 5500020.0)
SECRET_BYTE = ord("S")


@pytest.fixture
def secret(tmp_path):
    """A 'secret' local file of 256 x 256 bytes 'S': a leak shows up as pixels of value 83."""
    path = tmp_path / "secret.txt"
    path.write_bytes(bytes([SECRET_BYTE]) * 256 * 256)
    return path


def vrt_xml(secret_path, size: int = 256) -> str:
    """A VRT whose only band is the raw bytes of `secret_path`, on the same grid as the test COGs."""
    return (f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}"><SRS>EPSG:32631</SRS>'
            f'<GeoTransform>{T10.c}, {T10.a}, 0, {T10.f}, 0, {T10.e}</GeoTransform>'
            f'<VRTRasterBand dataType="Byte" band="1" subClass="VRTRawRasterBand">'
            f'<SourceFilename relativetoVRT="0">{secret_path}</SourceFilename>'
            f'<ImageOffset>0</ImageOffset><PixelOffset>1</PixelOffset><LineOffset>{size}</LineOffset>'
            f'</VRTRasterBand></VRTDataset>')


def mask_index(item, policy=None):
    """The indexer's own read path: a Sentinel-2 indexer reads its mask asset (here the 'red' href)."""
    item.assets["scl"] = item.assets["red"].clone()
    try:
        return Sentinel2Indexer(item, href_policy=policy).create_index()
    finally:
        del item.assets["scl"]


@pytest.fixture
def cog_item(tmp_path):
    path = write_cog(tmp_path / "red.tif", np.full((256, 256), 7, dtype=np.uint8), T10)
    return make_item("untrusted-item", {"red": (path, (256, 256), T10)}), path


def test_the_vrt_really_leaks_when_gdal_opens_it_unrestricted(tmp_path, secret):
    """The attack is real: GDAL without a driver list reads the secret through the VRT."""
    with rasterio.open(vrt_xml(secret)) as src:
        assert src.driver == "VRT" and int(src.read(1)[0, 0]) == SECRET_BYTE


def test_inline_vrt_href_is_refused_by_the_policy_and_the_opener(cog_item, secret):
    item, _ = cog_item
    item.assets["red"].href = vrt_xml(secret)
    for policy in (default_read_policy(), HrefPolicy(local_rasters=True)):
        with pytest.raises(HrefPolicyError, match=r"untrusted-item.*'red'.*inline dataset definition"):
            Chipper(NoStatsChipIndexer(item, href_policy=policy)).chip(0, 0)
    with pytest.raises(HrefPolicyError, match="inline dataset definition"):  # no policy at all
        Chipper(NoStatsChipIndexer(item)).chip(0, 0)
    with pytest.raises(HrefPolicyError, match="inline dataset definition"):
        mask_index(item)
    with pytest.raises(HrefPolicyError, match="inline dataset definition"):
        open_asset(vrt_xml(secret), item_id="i", asset_key="red")


@pytest.mark.parametrize("prefix", ["GTIFF_RAW:", "GTIFF_DIR:1:", "gtiff_dir:off:8:"])
def test_gtiff_driver_prefixes_are_refused(cog_item, prefix):
    item, path = cog_item
    href = f"{prefix}{path}"
    with pytest.raises(HrefPolicyError, match="GDAL driver prefix"):
        HrefPolicy(local_rasters=True).check(href)
    with pytest.raises(HrefPolicyError, match="GDAL driver prefix"):
        open_asset(href)
    item.assets["red"].href = href
    with pytest.raises(HrefPolicyError, match=r"untrusted-item.*'red'.*GDAL driver prefix"):
        Chipper(NoStatsChipIndexer(item)).chip(0, 0)


def test_a_vrt_file_is_refused_whatever_its_name_and_folder(tmp_path, cog_item, secret):
    item, _ = cog_item
    for name in ("a.vrt", "disguised.tif"):
        vrt = tmp_path / name
        vrt.write_text(vrt_xml(secret))
        item.assets["red"].href = str(vrt)
        # Inside the allowed folder the string check passes: the opener refuses on content.
        policy = HrefPolicy(local_roots=(str(tmp_path),))
        assert policy.check(str(vrt)) == str(vrt)
        with pytest.raises(RefusedRasterError, match=rf"untrusted-item.*'red'.*{name}.*not a supported raster format"):
            Chipper(NoStatsChipIndexer(item, href_policy=policy)).chip(0, 0)
        with pytest.raises(RefusedRasterError):
            mask_index(item, policy)  # the indexer's read path too


def test_a_vrt_in_a_static_catalog_is_refused_by_the_code_location_policy(tmp_path, cog_item, secret):
    """StacSourceResource.href_policy() admits the catalog's folder; a .vrt there is still refused."""
    from stacchip_assets.dagster_defs.resources import StacSourceResource

    catalog = tmp_path / "catalog"
    catalog.mkdir()
    (catalog / "catalog.json").write_text("{}")
    vrt = catalog / "b04.vrt"
    vrt.write_text(vrt_xml(secret))
    policy = StacSourceResource(catalog_path=str(catalog / "catalog.json")).href_policy()
    assert policy.local_roots == (str(catalog.resolve()),) and not policy.local_rasters
    item, cog = cog_item
    item.assets["red"].href = str(vrt)
    with pytest.raises(RefusedRasterError, match=r"untrusted-item.*'(red|scl)'.*b04.vrt.*not a supported raster format"):
        mask_index(item, policy)
    with pytest.raises(RefusedRasterError):
        Chipper(NoStatsChipIndexer(item, href_policy=policy)).chip(0, 0)
    # A real COG in the catalog folder is read.
    good = catalog / "b04.tif"
    good.write_bytes(cog.read_bytes())
    item.assets["red"].href = str(good)
    assert int(Chipper(NoStatsChipIndexer(item, href_policy=policy)).chip(0, 0)["red"].max()) == 7
    # A symlink inside the folder to a COG outside it: refused on the opened file's real path.
    link = catalog / "link.tif"
    os.symlink(cog, link)
    item.assets["red"].href = str(link)
    with pytest.raises(HrefPolicyError, match="outside the allowed folders"):
        Chipper(NoStatsChipIndexer(item, href_policy=policy)).chip(0, 0)
    with pytest.raises(HrefPolicyError, match="outside the allowed folders"):
        mask_index(item, policy)
    # The opener checks the real path of the descriptor it opened, not the string.
    with pytest.raises(RefusedRasterError, match=r"'red'.*opened file .*red.tif is outside the allowed folders"):
        open_asset(str(link), item_id="untrusted-item", asset_key="red", policy=policy)
    with open_asset(str(link), policy=HrefPolicy(local_roots=(str(tmp_path),))) as src:
        assert src.stacchip_href == str(link) and src.driver == "GTiff"


def test_the_host_allow_list_of_the_code_location(tmp_path):
    from stacchip_assets.dagster_defs.resources import StacSourceResource

    policy = StacSourceResource(api_url="http://127.0.0.1:1/", allowed_href_hosts=[".example.org", "127.0.0.1"]
                                ).href_policy()
    for href in ("https://data.example.org/a.tif", "https://example.org/a.tif", "http://127.0.0.1:8080/x.tif",
                 "s3://bucket/a.tif"):
        assert policy.check(href) == href
    for href in ("https://evil.org/a.tif", "https://example.org.evil.org/a.tif", "http://169.254.169.254/x.tif"):
        with pytest.raises(HrefPolicyError, match="not in the allowed hosts"):
            policy.check(href, item_id="i", asset_key="a")


@pytest.mark.e2e
def test_a_vrt_served_over_http_is_refused_by_the_allowed_drivers(tmp_path, secret):
    from tests.support.http_server import serve_directory

    (tmp_path / "remote.tif").write_text(vrt_xml(secret))
    with serve_directory(str(tmp_path)) as base:
        with pytest.raises(AssetReadError, match=r"'red'.*remote.tif.*not recognized"):
            open_asset(f"{base}/remote.tif", item_id="i", asset_key="red")


def test_swapping_the_file_during_reads_never_leaks(tmp_path, cog_item, secret):
    """A thread swaps a COG and a VRT under one path (atomic renames) during 300 chip reads: every
    read gives the COG's pixels or a StacchipError, never the secret."""
    item, cog = cog_item
    target = tmp_path / "swapped.tif"
    good, bad = tmp_path / "good.tif", tmp_path / "bad.tif"
    good.write_bytes(cog.read_bytes())
    bad.write_text(vrt_xml(secret))
    target.write_bytes(cog.read_bytes())
    item.assets["red"].href = str(target)
    stop = threading.Event()

    def swap() -> None:
        n = 0
        while not stop.is_set():
            time.sleep(0.001)  # about 10 of 300 reads leaked the secret with the old check-then-open
            source = good if n % 2 else bad
            tmp = tmp_path / f"next-{n}"
            os.link(source, tmp)
            os.replace(tmp, target)
            n += 1

    thread = threading.Thread(target=swap, daemon=True)
    thread.start()
    outcomes = {"pixels": 0, "refused": 0}
    try:
        for _ in range(300):
            try:
                with Chipper(NoStatsChipIndexer(item, href_policy=default_read_policy())) as chipper:
                    pixels = chipper.chip(0, 0)["red"]
            except StacchipError:
                outcomes["refused"] += 1
                continue
            assert SECRET_BYTE not in np.unique(pixels)
            assert np.all(pixels == 7)
            outcomes["pixels"] += 1
    finally:
        stop.set()
        thread.join()
    assert outcomes["pixels"] + outcomes["refused"] == 300
    assert outcomes["refused"] > 0  # the swap really raced with the reads


def test_a_huge_tile_is_refused_before_reading(tmp_path):
    """One 32,768 px tile (a sparse file of a few KB) would cost 1 GiB per read: refused on open."""
    path = tmp_path / "huge-tile.tif"
    with rasterio.open(path, "w", driver="GTiff", width=32768, height=32768, count=1, dtype="uint8", tiled=True,
                       blockxsize=32768, blockysize=32768, crs="EPSG:32631", transform=T10,
                       sparse_ok=True, compress="DEFLATE"):
        pass
    assert path.stat().st_size < 100_000
    item = make_item("huge-tile-item", {"red": (path, (32768, 32768), T10)})
    with pytest.raises(ResourceLimitError, match=r"huge-tile-item.*'red'.*32768x32768.*max_tile_pixels=16777216"):
        Chipper(NoStatsChipIndexer(item)).chip(0, 0)
    with pytest.raises(ResourceLimitError, match="max_tile_pixels"):
        mask_index(item)


def test_the_tile_limit_comes_from_the_environment(tmp_path, monkeypatch):
    path = write_cog(tmp_path / "tiles.tif", np.full((1024, 1024), 3, dtype=np.uint8), T10, blocksize=512)
    item = make_item("tile-item", {"red": (path, (1024, 1024), T10)})
    assert int(Chipper(NoStatsChipIndexer(item)).chip(0, 0)["red"].max()) == 3
    monkeypatch.setenv("STACCHIP_MAX_TILE_PIXELS", str(256 * 256))
    assert read_limits().max_tile_pixels == 65536
    with pytest.raises(ResourceLimitError, match=r"tile-item.*'red'.*512x512.*max_tile_pixels=65536"):
        Chipper(NoStatsChipIndexer(item)).chip(0, 0)
    assert int(Chipper(NoStatsChipIndexer(item), limits=ReadLimits(max_tile_pixels=512 * 512)).chip(0, 0)["red"].max()) == 3


def test_read_limits_validation(monkeypatch):
    assert read_limits(environ={}) == ReadLimits()
    assert read_limits(environ={"STACCHIP_MAX_CHIP_SIZE": "512"}).max_chip_size == 512
    with pytest.raises(StacchipError, match="STACCHIP_MAX_CHIP_SIZE"):
        read_limits(environ={"STACCHIP_MAX_CHIP_SIZE": "big"})
    with pytest.raises(StacchipError, match="positive integer"):
        ReadLimits(max_mask_pixels=0)
    assert set(f for f in ReadLimits.__dataclass_fields__) == {
        "max_chips_per_item", "max_mask_pixels", "max_tile_pixels", "max_chip_size"}


def test_read_chip_refuses_a_row_chip_size_past_the_limit(indexed_base):  # noqa: F811
    from stacchip_assets.index.combined import CombinedIndex
    from stacchip_assets.index.reader import read_chip

    _, storage = indexed_base
    row = CombinedIndex(storage).read().to_pylist()[0]
    assert read_chip(row)["image"].shape == (4, 256, 256)
    for bad, why in ((65535, "max_chip_size=4096"), (0, "not a positive integer"), (-256, "not a positive integer"),
                     (256.5, "not a positive integer"), ("256; rm", "not a positive integer")):
        with pytest.raises(ResourceLimitError, match=why) as excinfo:
            read_chip({**row, "chip_size": bad, "chip_stride": 256})
        assert repr(row["item_id"]) in str(excinfo.value)
    with pytest.raises(ResourceLimitError, match="chip_size 0"):
        read_chip({**row, "chip_stride": 0})


def test_stored_items_edited_to_inline_vrt_are_refused_everywhere(indexed_base, tmp_path, secret):  # noqa: F811
    """read_chip, read_chip_by_id and the training extraction, with the default and a strict policy."""
    from stacchip_assets.index.combined import CombinedIndex
    from stacchip_assets.index.reader import read_chip, read_chip_by_id
    from stacchip_assets.training import TrainingSetConfig, select_chips, write_training_set

    catalog, storage = indexed_base
    index = CombinedIndex(storage).read()
    row = index.to_pylist()[0]
    original = open(row["item_href"]).read()
    config = TrainingSetConfig(bands={"naip": ["image"]})
    strict = HrefPolicy(local_roots=(str(catalog.parent),))
    try:
        _edit_stored_item(storage, row, vrt_xml(secret))
        calls = [lambda: read_chip(row), lambda: read_chip(row, href_policy=strict),
                 lambda: read_chip_by_id(row["chipid"], storage),
                 lambda: write_training_set(select_chips(index, config), config, tmp_path / "bad")]
        for call in calls:
            with pytest.raises(HrefPolicyError, match=r"'image'.*inline dataset definition") as excinfo:
                call()
            assert repr(row["item_id"]) in str(excinfo.value)
        assert not (tmp_path / "bad").exists()
        vrt = catalog.parent / "edited.vrt"  # a VRT file inside the strict policy's folder
        vrt.write_text(vrt_xml(secret))
        _edit_stored_item(storage, row, str(vrt))
        with pytest.raises(HrefPolicyError, match=r"'image'.*edited.vrt.*not a TIFF or JPEG 2000"):
            read_chip(row)  # outside the default policy's folder: its content is checked up front
        with pytest.raises(RefusedRasterError, match=r"'image'.*edited.vrt.*not a supported raster format"):
            read_chip(row, href_policy=strict)  # inside the strict policy's folder: refused on opening
    finally:
        open(row["item_href"], "w").write(original)
    assert read_chip(row)["image"].shape == (4, 256, 256)


def test_allowed_drivers_are_the_raster_formats_that_name_no_other_file():
    assert ALLOWED_DRIVERS == ("GTiff", "JP2OpenJPEG")


def test_a_jpeg2000_asset_is_opened_with_its_driver(tmp_path):
    path = tmp_path / "b04.jp2"
    with rasterio.open(path, "w", driver="JP2OpenJPEG", width=256, height=256, count=1, dtype="uint16",
                       crs="EPSG:32631", transform=T10, QUALITY=100, REVERSIBLE=True) as dst:
        dst.write(np.full((1, 256, 256), 5, dtype=np.uint16))
    item = make_item("jp2-item", {"red": (path, (256, 256), T10)})
    policy = HrefPolicy(local_roots=(str(tmp_path),))
    pixels = Chipper(NoStatsChipIndexer(item, href_policy=policy)).chip(0, 0)["red"]
    assert pixels.shape == (1, 256, 256) and int(pixels.min()) == int(pixels.max()) == 5


def test_gdal_skip_deregisters_vrt_when_gdal_env_registers_the_drivers(tmp_path, secret):
    """In a fresh process whose first rasterio environment is gdal_env, GDAL has no VRT driver at all
    (a second guard behind the allowed-drivers list); WarpedVRT, used by other code, still works."""
    import subprocess
    import sys

    vrt = tmp_path / "x.vrt"
    vrt.write_text(vrt_xml(secret))
    code = (
        "import rasterio, sys\n"
        "from rasterio.vrt import WarpedVRT\n"
        "from stacchip_assets.io.raster import gdal_env\n"
        "with gdal_env():\n"
        "    try:\n"
        f"        rasterio.open({str(vrt)!r}); print('VRT opened')\n"
        "    except rasterio.errors.RasterioIOError as exc:\n"
        "        print('refused:', 'not recognized' in str(exc))\n"
        f"with rasterio.open({str(vrt).replace('x.vrt', 'red.tif')!r}) as src, WarpedVRT(src, crs='EPSG:4326') as v:\n"
        "    print('warped', v.read().shape[0])\n"
    )
    write_cog(tmp_path / "red.tif", np.full((256, 256), 7, dtype=np.uint8), T10)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.stdout.split("\n")[:2] == ["refused: True", "warped 1"], result.stderr
