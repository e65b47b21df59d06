"""Chip pixels read from real COGs equal the source windows, for every asset resolution."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window

from stacchip_assets import AssetGridError, AssetReadError, Chipper, NoStatsChipIndexer, StacchipError

from tests.support.cogs import make_item, write_cog

ROWS, COLS = 700, 1000  # 10 m grid: 3 x 2 whole 256 px chips, with remainders on both axes
X0, Y0 = 399960.0, 5500020.0


def grid_transform(res: float) -> Affine:
    return Affine(res, 0, X0, 0, -res, Y0)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 10 m grid with assets at 10, 20, 15 (non-integer ratio) and 60 m, values unique per pixel."""
    folder = tmp_path_factory.mktemp("chipper")
    rng = np.random.default_rng(42)
    specs = {"b10": (10, 2), "b20": (20, 1), "b15": (15, 1), "b60": (60, 3)}
    assets, arrays = {}, {}
    for key, (res, bands) in specs.items():
        shape = (int(np.ceil(ROWS * 10 / res)), int(np.ceil(COLS * 10 / res)))
        data = rng.integers(1, 60000, size=(bands, *shape), dtype=np.uint16)
        path = write_cog(folder / f"{key}.tif", data, grid_transform(res))
        assets[key] = (path, shape, grid_transform(res))
        arrays[key] = data
    item = make_item("scene-1", assets)
    return item, arrays


def expected_by_centre(source: np.ndarray, res: float, x: int, y: int, size: int = 256) -> np.ndarray:
    """Nearest-by-centre sampling computed in map coordinates (independent of the chipper's affine maths)."""
    centres_x = X0 + (x * size + np.arange(size) + 0.5) * 10.0
    centres_y = Y0 - (y * size + np.arange(size) + 0.5) * 10.0
    cols = np.floor((centres_x - X0) / res).astype(int)
    rows = np.floor((Y0 - centres_y) / res).astype(int)
    return source[:, rows[:, None], cols[None, :]]


def test_native_resolution_chip_equals_source_window_including_last_row_and_column(scene):
    item, _ = scene
    indexer = NoStatsChipIndexer(item)
    assert (indexer.x_size, indexer.y_size) == (3, 2)
    chipper = Chipper(indexer, assets=["b10"])
    with rasterio.open(item.assets["b10"].href) as src:
        for x, y in [(0, 0), (2, 0), (0, 1), (2, 1)]:
            window = src.read(window=Window(x * 256, y * 256, 256, 256))
            np.testing.assert_array_equal(chipper.chip(x, y)["b10"], window)


def test_coarser_assets_equal_nearest_upsampling(scene):
    item, arrays = scene
    chipper = Chipper(NoStatsChipIndexer(item))
    for x, y in [(0, 0), (1, 1), (2, 1)]:
        chip = chipper.chip(x, y)
        assert set(chip) == {"b10", "b20", "b15", "b60"}
        with rasterio.open(item.assets["b20"].href) as src:
            window = src.read(window=Window(x * 128, y * 128, 128, 128))
        np.testing.assert_array_equal(chip["b20"], window.repeat(2, axis=1).repeat(2, axis=2))
        np.testing.assert_array_equal(chip["b15"], expected_by_centre(arrays["b15"], 15, x, y))
        np.testing.assert_array_equal(chip["b60"], expected_by_centre(arrays["b60"], 60, x, y))
        for key in chip:
            assert chip[key].shape == (arrays[key].shape[0], 256, 256)


def test_batch_read_equals_single_reads(scene):
    item, _ = scene
    chipper = Chipper(NoStatsChipIndexer(item), asset_blacklist=["b60"])
    xs, ys = [2, 0, 1, 2, 0], [1, 0, 0, 0, 1]
    batch = chipper.chips(xs, ys)
    assert set(batch) == {"b10", "b20", "b15"}
    for i, (x, y) in enumerate(zip(xs, ys)):
        single = chipper.chip(x, y)
        for key in batch:
            np.testing.assert_array_equal(batch[key][i], single[key])


def test_len_indexing_and_iteration_follow_the_index_rows(scene):
    item, _ = scene
    indexer = NoStatsChipIndexer(item)
    chipper = Chipper(indexer, assets=["b10", "b20"])
    index = indexer.index
    assert len(chipper) == index.num_rows == 6
    seen = []
    for i, (x, y, chip) in enumerate(chipper):
        assert (x, y) == (index["chip_index_x"][i].as_py(), index["chip_index_y"][i].as_py())
        np.testing.assert_array_equal(chip["b10"], chipper.chip(x, y)["b10"])
        seen.append((x, y))
    assert len(seen) == 6
    x, y, chip = chipper[-1]
    assert (x, y) == seen[-1]


def test_padded_edge_chips_fill_outside_with_nodata(scene):
    item, _ = scene
    chipper = Chipper(NoStatsChipIndexer(item, pad_edges=True), assets=["b10"])
    chip = chipper.chip(3, 2)["b10"]  # covers rows 512..768 and cols 768..1024 of a 700 x 1000 raster
    with rasterio.open(item.assets["b10"].href) as src:
        inside = src.read(window=Window(768, 512, 232, 188))
    np.testing.assert_array_equal(chip[:, :188, :232], inside)
    assert (chip[:, 188:, :] == 0).all() and (chip[:, :, 232:] == 0).all()


def test_overlapping_chips_with_a_stride(scene):
    item, _ = scene
    chipper = Chipper(NoStatsChipIndexer(item, stride=128), assets=["b10"])
    with rasterio.open(item.assets["b10"].href) as src:
        np.testing.assert_array_equal(chipper.chip(3, 2)["b10"], src.read(window=Window(384, 256, 256, 256)))


def test_chip_outside_the_grid_is_refused(scene):
    item, _ = scene
    with pytest.raises(StacchipError, match=r"outside the 3x2 chip grid"):
        Chipper(NoStatsChipIndexer(item), assets=["b10"]).chip(3, 0)


def test_missing_asset_file_names_item_asset_and_href(scene, tmp_path):
    item, _ = scene
    broken = item.clone()
    broken.assets["b10"].href = str(tmp_path / "gone.tif")
    with pytest.raises(AssetReadError) as excinfo:
        Chipper(NoStatsChipIndexer(broken), assets=["b10"]).chip(0, 0)
    message = str(excinfo.value)
    assert "scene-1" in message and "'b10'" in message and "gone.tif" in message


def test_truncated_cog_is_an_asset_read_error(scene, tmp_path):
    item, _ = scene
    source = item.assets["b10"].href
    data = open(source, "rb").read()
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(data[: len(data) // 2])  # header intact, tiles cut off
    broken = item.clone()
    broken.assets["b10"].href = str(truncated)
    with pytest.raises(AssetReadError, match="scene-1.*b10"):
        chipper = Chipper(NoStatsChipIndexer(broken), assets=["b10"])
        for x, y in [(0, 0), (2, 1)]:
            chipper.chip(x, y)


def test_asset_that_does_not_overlap_the_grid(scene, tmp_path):
    item, arrays = scene
    far = write_cog(tmp_path / "far.tif", arrays["b20"], Affine(20, 0, X0 + 500_000, 0, -20, Y0))
    broken = item.clone()
    broken.assets["b20"].href = str(far)
    broken.assets["b20"].extra_fields["proj:transform"] = [20, 0, X0 + 500_000, 0, -20, Y0]
    with pytest.raises(AssetGridError, match="does not overlap the chip grid"):
        Chipper(NoStatsChipIndexer(broken), assets=["b20"]).chip(0, 0)


def test_mountpath_maps_hrefs_onto_a_local_folder(scene, tmp_path):
    item, _ = scene
    moved = item.clone()
    real = moved.assets["b10"].href
    (tmp_path / "bucket").mkdir()
    (tmp_path / "bucket" / "b10.tif").write_bytes(open(real, "rb").read())
    moved.assets["b10"].href = "s3://some-bucket/bucket/b10.tif"
    chip = Chipper(NoStatsChipIndexer(moved), mountpath=tmp_path, assets=["b10"]).chip(1, 1)
    with rasterio.open(real) as src:
        np.testing.assert_array_equal(chip["b10"], src.read(window=Window(256, 256, 256, 256)))


@pytest.mark.e2e
def test_cog_over_http_equals_local_and_404_is_named(scene):
    from pathlib import Path

    from tests.support.http_server import serve_directory

    item, _ = scene
    folder = Path(item.assets["b10"].href).parent
    with serve_directory(str(folder)) as base:
        remote = item.clone()
        remote.assets["b10"].href = f"{base}/b10.tif"
        remote.assets["b20"].href = f"{base}/b20.tif"
        local = Chipper(NoStatsChipIndexer(item), assets=["b10", "b20"]).chip(2, 1)
        over_http = Chipper(NoStatsChipIndexer(remote), assets=["b10", "b20"]).chip(2, 1)
        for key in local:
            np.testing.assert_array_equal(over_http[key], local[key])
        remote.assets["b10"].href = f"{base}/missing.tif"
        with pytest.raises(AssetReadError) as excinfo:
            Chipper(NoStatsChipIndexer(remote), assets=["b10"]).chip(0, 0)
    message = str(excinfo.value)
    assert "scene-1" in message and "'b10'" in message and "missing.tif" in message and "404" in message


def test_stac_transform_that_disagrees_with_the_cog_is_detected(scene):
    item, _ = scene
    wrong = item.clone()
    transform = list(wrong.assets["b20"].extra_fields["proj:transform"])
    transform[2] += 20 * 7  # metadata says the raster starts 7 pixels further east than the file does
    wrong.assets["b20"].extra_fields["proj:transform"] = transform
    with pytest.raises(AssetGridError, match=r"scene-1.*b20.*disagrees with the file's geotransform"):
        Chipper(NoStatsChipIndexer(wrong), assets=["b20"]).chip(0, 0)
    wrong_shape = item.clone()
    wrong_shape.assets["b20"].extra_fields["proj:shape"] = [351, 500]
    with pytest.raises(AssetGridError, match="proj:shape"):
        Chipper(NoStatsChipIndexer(wrong_shape), assets=["b20"]).chip(0, 0)


def test_a_chipper_keeps_working_in_a_forked_child(scene):
    """DataLoader workers fork with the parent's Chipper: the child must reopen, not hang."""
    import multiprocessing

    item, _ = scene
    chipper = Chipper(NoStatsChipIndexer(item), assets=["b10", "b20"])
    expected = chipper.chip(1, 1)  # opens datasets and the thread pool in the parent
    _FORK_STATE["chipper"] = chipper
    _FORK_STATE["parent_dataset"] = chipper.reader("b10").dataset
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_chip_in_child, args=(results, 1, 1))
    child.start()
    in_child, reopened = results.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0
    assert reopened, "the child must open its own GDAL handles, not use the parent's"
    for key in expected:
        np.testing.assert_array_equal(in_child[key], expected[key])
    np.testing.assert_array_equal(chipper.chip(1, 1)["b10"], expected["b10"])  # the parent still works


_FORK_STATE: dict = {}


def _chip_in_child(results, x, y):
    chipper = _FORK_STATE["chipper"]
    pixels = chipper.chip(x, y)
    results.put((pixels, chipper.reader("b10").dataset is not _FORK_STATE["parent_dataset"]))


@pytest.mark.e2e
def test_an_http_timeout_is_an_asset_read_error(scene):
    from pathlib import Path

    from stacchip_assets.io.raster import AssetAccess, gdal_env

    from tests.support.http_server import serve_directory

    item, _ = scene
    folder = Path(item.assets["b10"].href).parent
    with serve_directory(str(folder)) as base:
        slow = item.clone()
        slow.assets["b10"].href = f"{base}/slow/b10.tif"  # the server waits 5 s before answering
        access = AssetAccess(gdal_options={"GDAL_HTTP_TIMEOUT": "1", "GDAL_HTTP_MAX_RETRY": "0"})
        with gdal_env(access), pytest.raises(AssetReadError) as excinfo:
            Chipper(NoStatsChipIndexer(slow), assets=["b10"]).chip(0, 0)
    message = str(excinfo.value)
    assert "scene-1" in message and "'b10'" in message and "slow/b10.tif" in message
    assert "timed out" in message.lower() or "timeout" in message.lower()
