"""The range reader for remote COGs (stacchip_assets.io): pixels over HTTP and S3 equal GDAL's local
reads, errors name item/asset/href, a stalled server times out, and memory stays within the budget.

Real servers only: the Range HTTP server of tests/http_server.py (a child process), SeaweedFS for
S3, and a small stalling server (a child process) for the timeout test.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from affine import Affine
from rasterio.io import DatasetReader
from rasterio.windows import Window

from stacchip_assets import AssetReadError, Chipper, NoStatsChipIndexer
from stacchip_assets.core.stac import raster_asset_keys
from stacchip_assets.io.range_reader import remote_config
from stacchip_assets.io.raster import AssetAccess, gdal_env
from stacchip_assets.io.remote_raster import RemoteRaster, open_asset

from tests.support.cogs import make_item

X0, Y0 = 399960.0, 5500020.0


def _sample_items(catalog_json: Path) -> list[pystac.Item]:
    items = list(pystac.Catalog.from_file(str(catalog_json)).get_items(recursive=True))
    assert len({i.collection_id for i in items}) >= 5  # every sensor of the sample catalog
    return items


def _moved(item: pystac.Item, root: Path, base: str) -> pystac.Item:
    """`item` with every asset href under `root` rewritten to `base` + the same relative path."""
    remote = item.clone()
    for key, asset in item.assets.items():
        local = Path(asset.get_absolute_href())
        remote.assets[key].href = f"{base}/{local.relative_to(root).as_posix()}"
    return remote


def _edge_and_inner_chips(indexer) -> tuple[np.ndarray, np.ndarray]:
    nx, ny = indexer.x_size, indexer.y_size
    pts = {(0, 0), (nx - 1, 0), (0, ny - 1), (nx - 1, ny - 1), (nx // 2, ny // 2), (nx - 1, ny // 2)}
    xs, ys = zip(*sorted(pts))
    return np.array(xs), np.array(ys)


def _assert_remote_equals_local(items, root: Path, base: str) -> int:
    """Chips (edge and inner, padded edges) and whole rasters read remotely equal GDAL's local reads."""
    compared = 0
    for item in items:
        remote_item = _moved(item, root, base)
        keys = raster_asset_keys(item)
        local = Chipper(NoStatsChipIndexer(item, chip_size=96, pad_edges=True), assets=keys)
        remote = Chipper(NoStatsChipIndexer(remote_item, chip_size=96, pad_edges=True), assets=keys)
        xs, ys = _edge_and_inner_chips(local.indexer)
        want, got = local.chips(xs, ys), remote.chips(xs, ys)
        for key in keys:
            assert isinstance(remote.reader(key).dataset, RemoteRaster), (item.id, key)
            assert got[key].dtype == want[key].dtype
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{item.id} {key}")
            with rasterio.open(item.assets[key].get_absolute_href()) as src:
                np.testing.assert_array_equal(remote.reader(key).dataset.read(), src.read())
            compared += 1
        local.close()
        remote.close()
    return compared


def test_http_pixels_equal_local_for_every_sensor_and_edge_chips(sample_catalog, cog_server):
    items = _sample_items(sample_catalog)
    assert _assert_remote_equals_local(items, sample_catalog.parent, cog_server) >= 30


def test_s3_pixels_equal_local_for_every_sensor(sample_catalog, s3_server):
    root = sample_catalog.parent
    client = s3_server.client()
    client.create_bucket(Bucket="remote-reads")
    for path in root.rglob("*.tif"):
        client.upload_file(str(path), "remote-reads", f"cat/{path.relative_to(root).as_posix()}")
    access = AssetAccess(s3_endpoint_url=s3_server.endpoint, access_key_id=s3_server.access_key,
                         secret_access_key=s3_server.secret_key, s3_region=s3_server.region)
    with gdal_env(access):
        assert _assert_remote_equals_local(_sample_items(sample_catalog), root, "s3://remote-reads/cat") >= 30
        with pytest.raises(AssetReadError, match=r"cannot open s3://remote-reads/cat/missing.tif: S3 404"):
            open_asset("s3://remote-reads/cat/missing.tif", item_id="i", asset_key="a")
    wrong = AssetAccess(s3_endpoint_url=s3_server.endpoint, access_key_id=s3_server.access_key,
                        secret_access_key="not-the-secret", s3_region=s3_server.region)
    some_tif = next(root.rglob("*.tif")).relative_to(root).as_posix()
    with gdal_env(wrong), pytest.raises(AssetReadError, match=r"item 'i', asset 'a': .*S3 403.*check the credentials"):
        # the header may come from the reader's cache: the pixels are refused all the same
        open_asset(f"s3://remote-reads/cat/{some_tif}", item_id="i", asset_key="a").read(window=Window(0, 0, 9, 9))


# -- every layout GDAL writes that the reader decodes ------------------------------------------------
LAYOUTS = [
    # (dtype, bands, creation options)
    ("uint8", 1, dict(compress="deflate", predictor=2)),
    ("int8", 1, dict(compress="lzw")),
    ("uint16", 1, dict(compress="zstd", predictor=2)),
    ("int16", 2, dict(compress="deflate", predictor=2, interleave="band")),
    ("uint32", 1, dict(compress="lzw", predictor=2)),
    ("int32", 3, dict(compress="deflate", interleave="pixel")),
    ("float32", 1, dict(compress="deflate", predictor=3)),
    ("float64", 2, dict(compress="zstd", predictor=3, interleave="pixel")),
    ("float32", 1, dict(compress="none")),
    ("uint16", 4, dict(compress="deflate", predictor=2, interleave="pixel")),
    ("uint16", 1, dict(compress="deflate", predictor=2, bigtiff="yes")),
    ("int16", 1, dict(compress="deflate", predictor=2, endianness="big")),
    ("float32", 2, dict(compress="deflate", predictor=3, endianness="big", interleave="pixel")),
    ("uint16", 1, dict(compress="deflate", sparse_ok=True)),  # empty tiles not written: GDAL fills nodata
]


def _write(path: Path, dtype: str, bands: int, options: dict, rng) -> np.ndarray:
    rows, cols = 301, 517  # not a multiple of the tile size
    if np.dtype(dtype).kind == "f":
        data = rng.normal(0, 1000, size=(bands, rows, cols)).astype(dtype)
    else:
        info = np.iinfo(dtype)
        data = rng.integers(info.min, info.max, size=(bands, rows, cols), endpoint=True, dtype=dtype)
    if options.get("sparse_ok"):
        data[:, :200, :300] = 7  # the nodata value: these tiles stay unwritten
    profile = dict(driver="GTiff", width=cols, height=rows, count=bands, dtype=dtype, tiled=True, blockxsize=128,
                   blockysize=64, crs="EPSG:32631", transform=Affine(10, 0, X0, 0, -10, Y0),
                   nodata=7 if options.get("sparse_ok") else None, **options)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return data


def test_every_dtype_compression_predictor_and_layout_equals_gdal(tmp_path):
    from tests.support.http_server import serve_directory

    rng = np.random.default_rng(3)
    for i, (dtype, bands, options) in enumerate(LAYOUTS):
        _write(tmp_path / f"c{i}.tif", dtype, bands, options, rng)
    windows = [Window(0, 0, 517, 301), Window(127, 63, 2, 2), Window(500, 290, 17, 11), Window(1, 1, 300, 200)]
    windows += [Window(int(c), int(r), 40, 30) for c, r in zip(rng.integers(0, 477, 20), rng.integers(0, 271, 20))]
    with serve_directory(str(tmp_path)) as base:
        for i, (dtype, _bands, options) in enumerate(LAYOUTS):
            remote = open_asset(f"{base}/c{i}.tif")
            assert isinstance(remote, RemoteRaster), options
            with rasterio.open(tmp_path / f"c{i}.tif") as src:
                assert (remote.transform, remote.nodata, remote.dtypes, remote.count) == (
                    src.transform, src.nodata, src.dtypes, src.count)
                for window, got in zip(windows, remote.read_windows(windows)):
                    np.testing.assert_array_equal(got, src.read(window=window), err_msg=f"{dtype} {options} {window}")


def test_what_the_reader_does_not_decode_goes_to_gdal(tmp_path, cog_server, sample_catalog):
    from tests.support.http_server import serve_directory

    data = np.random.default_rng(0).integers(0, 255, size=(3, 200, 200), dtype=np.uint8)
    with rasterio.open(tmp_path / "jpeg.tif", "w", driver="GTiff", width=200, height=200, count=3, dtype="uint8",
                       tiled=True, compress="jpeg", crs="EPSG:32631", transform=Affine(10, 0, X0, 0, -10, Y0)) as d:
        d.write(data)
    with rasterio.open(tmp_path / "strips.tif", "w", driver="GTiff", width=200, height=200, count=1, dtype="uint8",
                       crs="EPSG:32631", transform=Affine(10, 0, X0, 0, -10, Y0)) as d:
        d.write(data[:1])
    with serve_directory(str(tmp_path)) as base:
        for name in ("jpeg.tif", "strips.tif"):
            with open_asset(f"{base}/{name}") as src:
                assert isinstance(src, DatasetReader), name
    with remote_config(enabled=False):  # the switch: everything through GDAL
        thumb = next(sample_catalog.parent.rglob("*.tif")).relative_to(sample_catalog.parent).as_posix()
        with open_asset(f"{cog_server}/{thumb}") as src:
            assert isinstance(src, DatasetReader)


def test_each_header_is_read_once_per_reader(tmp_path):
    from tests.support.http_server import serve_directory

    item, data = _scene(tmp_path)
    log = tmp_path / "requests.log"
    with serve_directory(str(tmp_path), request_log=str(log)) as base:
        remote = item.clone()
        remote.assets["b"].href = f"{base}/b.tif"
        chipper = Chipper(NoStatsChipIndexer(remote, chip_size=64), assets=["b"])
        for y in range(4):
            for x in range(6):
                np.testing.assert_array_equal(chipper.chip(x, y)["b"], data[:, y * 64:(y + 1) * 64, x * 64:(x + 1) * 64])
    lines = log.read_text().splitlines()
    assert sum(" bytes=0-" in line for line in lines) == 1, lines  # one header read for 24 chips


def _scene(folder: Path, rows: int = 256, cols: int = 384):
    from tests.support.cogs import write_cog

    data = np.random.default_rng(1).integers(1, 60000, size=(1, rows, cols), dtype=np.uint16)
    path = write_cog(folder / "b.tif", data, Affine(10, 0, X0, 0, -10, Y0), blocksize=64)
    return make_item("remote-1", {"b": (path, (rows, cols), Affine(10, 0, X0, 0, -10, Y0))}), data


# -- errors ---------------------------------------------------------------------------------------
def test_404_403_and_truncated_cogs_are_asset_read_errors(tmp_path):
    from tests.support.http_server import TEST_TOKEN, serve_directory

    item, _ = _scene(tmp_path)
    whole = (tmp_path / "b.tif").read_bytes()
    (tmp_path / "cut_tiles.tif").write_bytes(whole[: len(whole) - 3000])  # header intact, last tiles cut
    (tmp_path / "cut_header.tif").write_bytes(whole[:12])
    cases = {
        "missing.tif": r"cannot open http://127\.0\.0\.1:\d+/missing\.tif: HTTP 404",
        "cut_header.tif": r"cannot open http://127\.0\.0\.1:\d+/cut_header\.tif: the file is truncated",
        "cut_tiles.tif": r"cannot read bytes \d+-\d+ of http://127\.0\.0\.1:\d+/cut_tiles\.tif: truncated",
    }
    with serve_directory(str(tmp_path)) as base:
        for name, pattern in cases.items():
            remote = item.clone()
            remote.assets["b"].href = f"{base}/{name}"
            with pytest.raises(AssetReadError, match=r"item 'remote-1', asset 'b': " + pattern):
                Chipper(NoStatsChipIndexer(remote, chip_size=64, pad_edges=True), assets=["b"]).chips(
                    [0, 5, 5], [0, 3, 2])
    with serve_directory(str(tmp_path), require_token=TEST_TOKEN) as base:
        remote = item.clone()
        remote.assets["b"].href = f"{base}/b.tif"
        with pytest.raises(AssetReadError, match=r"asset 'b': cannot open http://127\.0\.0\.1:\d+/b\.tif: HTTP 403.*"
                                                 r"check the credentials or the href signer"):
            Chipper(NoStatsChipIndexer(remote, chip_size=64), assets=["b"]).chip(0, 0)
        with gdal_env(AssetAccess(href_signer="tests.support.http_server:sign_with_test_token")):  # signed: read
            chip = Chipper(NoStatsChipIndexer(remote, chip_size=64), assets=["b"]).chip(1, 1)
            assert isinstance(Chipper(NoStatsChipIndexer(remote), assets=["b"]).reader("b").dataset, RemoteRaster)
    with rasterio.open(tmp_path / "b.tif") as src:
        np.testing.assert_array_equal(chip["b"], src.read(window=Window(64, 64, 64, 64)))


STALL_SERVER = r'''
import http.server, os, re, sys, time
path, answered = sys.argv[1], int(sys.argv[2])
count = {"n": 0}
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        data = open(path, "rb").read()
        a, b = map(int, re.match(r"bytes=(\d+)-(\d+)", self.headers["Range"]).groups())
        body = data[a:b + 1]
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {a}-{a + len(body) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        count["n"] += 1
        if count["n"] > answered:  # stop answering mid-body, keep the connection open
            self.wfile.write(body[: len(body) // 2]); self.wfile.flush(); time.sleep(3600)
        self.wfile.write(body)
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H); s.daemon_threads = True
print(s.server_address[1], flush=True); s.serve_forever()
'''


def test_a_server_that_stops_answering_mid_read_fails_within_the_timeout(tmp_path):
    from tests.support.http_server import child_server

    item, _ = _scene(tmp_path)
    script = tmp_path / "stall.py"
    script.write_text(STALL_SERVER)
    with child_server([sys.executable, str(script), str(tmp_path / "b.tif"), "1"]) as (_, port):
        remote = item.clone()
        remote.assets["b"].href = f"http://127.0.0.1:{port}/b.tif"
        outcome: dict = {}

        def read() -> None:
            with remote_config(read_timeout=1.0, retries=0):
                try:
                    Chipper(NoStatsChipIndexer(remote, chip_size=64), assets=["b"]).chips([0, 3], [0, 3])
                except Exception as exc:  # noqa: BLE001 - the test inspects it
                    outcome["error"] = exc

        started = time.monotonic()
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout=60)  # a hang detector, not a speed check
        assert not reader.is_alive(), "the read hangs on a stalled server"
    assert isinstance(outcome.get("error"), AssetReadError), outcome
    message = str(outcome["error"])
    assert "item 'remote-1', asset 'b'" in message and "/b.tif" in message and "timeout" in message.lower()
    assert time.monotonic() - started < 60


# -- memory -----------------------------------------------------------------------------------------
def test_2000_chips_in_one_call_stay_within_the_in_flight_budget(tmp_path):
    from tests.support.cogs import write_cog
    from tests.support.http_server import serve_directory

    rows = cols = 1024
    data = np.random.default_rng(5).integers(0, 60000, size=(1, rows, cols), dtype=np.uint16)
    write_cog(tmp_path / "big.tif", data, Affine(10, 0, X0, 0, -10, Y0), blocksize=128)
    item = make_item("budget-1", {"b": (tmp_path / "big.tif", (rows, cols), Affine(10, 0, X0, 0, -10, Y0))})
    rng = np.random.default_rng(6)
    xs, ys = rng.integers(0, 32, 2000), rng.integers(0, 32, 2000)
    budget = 96 * 1024
    with serve_directory(str(tmp_path)) as base:
        remote = item.clone()
        remote.assets["b"].href = f"{base}/big.tif"
        with remote_config(max_inflight_bytes=budget, max_request_bytes=48 * 1024, max_in_flight=8):
            chipper = Chipper(NoStatsChipIndexer(remote, chip_size=32), assets=["b"])
            pixels = chipper.chips(xs, ys)["b"]
    raster = chipper.reader("b").dataset
    assert isinstance(raster, RemoteRaster)
    largest_tile = int(raster.header.byte_counts.max())
    assert raster.source.bytes > 4 * budget  # the budget was really exercised (many requests)
    assert 0 < raster.budget.peak <= max(budget, largest_tile), (raster.budget.peak, budget)
    assert raster.budget.held == 0
    assert pixels.shape == (2000, 1, 32, 32)
    for i in range(0, 2000, 97):
        np.testing.assert_array_equal(pixels[i, 0], data[0, ys[i] * 32:(ys[i] + 1) * 32, xs[i] * 32:(xs[i] + 1) * 32])


NO_RANGE_SERVER = r'''
import functools, http.server, sys
h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])  # ignores Range: 200
h.func.log_message = lambda *a: None
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), h); s.daemon_threads = True
print(s.server_address[1], flush=True); s.serve_forever()
'''


def test_a_server_that_ignores_range_still_gives_the_right_pixels(tmp_path):
    from tests.support.http_server import child_server

    item, data = _scene(tmp_path)
    script = tmp_path / "norange.py"
    script.write_text(NO_RANGE_SERVER)
    with child_server([sys.executable, str(script), str(tmp_path)]) as (_, port):
        remote = item.clone()
        remote.assets["b"].href = f"http://127.0.0.1:{port}/b.tif"
        chipper = Chipper(NoStatsChipIndexer(remote, chip_size=64), assets=["b"])
        pixels = chipper.chips([0, 5, 2], [0, 3, 1])["b"]
        assert isinstance(chipper.reader("b").dataset, RemoteRaster)
    for i, (x, y) in enumerate([(0, 0), (5, 3), (2, 1)]):
        np.testing.assert_array_equal(pixels[i], data[:, y * 64:(y + 1) * 64, x * 64:(x + 1) * 64])
