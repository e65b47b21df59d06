"""The README's main command, in a subprocess with a fresh Dagster home; then read its output back."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pystac
import pytest
import rasterio
from rasterio.windows import Window

from stacchip_assets.demo.sample_data import SAMPLE_COLLECTIONS
from stacchip_assets.index.reader import read_chip, read_chip_by_id

from tests.conftest import PROJECT
from tests.support.dagster_support import shared_sample

ROOT = PROJECT
TOTAL_ITEMS = sum(len(ids) for ids in SAMPLE_COLLECTIONS.values())


def run_main(home: Path, sample_dir: Path) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STACCHIP_", "DAGSTER_"))}
    env.update(DAGSTER_HOME=str(home), STACCHIP_SAMPLE_DIR=str(sample_dir))
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "stacchip_assets.demo.main"], cwd=home.parent, env=env,
                            capture_output=True, text=True, timeout=300)
    return result, time.monotonic() - started


@pytest.fixture(scope="module")
def main_run(tmp_path_factory):
    sample = shared_sample(tmp_path_factory)  # generated once for the session: not what is timed here
    home = tmp_path_factory.mktemp("main") / "dagster_home"
    result, elapsed = run_main(home, sample.parent)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return home, result.stdout, elapsed, sample.parent


def test_main_prints_the_summary(main_run):
    home, out, elapsed, _ = main_run
    assert elapsed < 300
    assert f"items: {TOTAL_ITEMS} found by polling ({TOTAL_ITEMS} indexed now" in out
    chips = int(re.search(r"chips: (\d+) in the combined index", out).group(1))
    assert chips > 0
    assert f"combined index: {home / 'stacchip' / 'combined'}" in out
    assert (home / "dagster.yaml").is_file()  # the project's instance configuration was installed


def test_combined_index_is_readable_and_chips_read_back(main_run):
    home, out, _, sample_dir = main_run
    frame = gpd.read_parquet(home / "stacchip" / "combined")
    assert len(frame) == int(re.search(r"chips: (\d+)", out).group(1))
    assert set(frame.collection) == set(SAMPLE_COLLECTIONS)
    assert frame.crs.to_string() == "OGC:CRS84" and frame.geometry.is_valid.all()
    row = frame[(frame.collection == "sentinel-2-l2a") & (frame.chip_index_x > 0) & (frame.chip_index_y > 0)].iloc[0]
    pixels = read_chip(row)  # nothing but the row
    stored = pystac.Item.from_file(row.item_href)
    assert Path(row.item_href).is_relative_to(home)
    x, y, size = int(row.chip_index_x), int(row.chip_index_y), int(row.chip_size)
    compared = 0
    for key, asset in stored.assets.items():
        with rasterio.open(asset.get_absolute_href()) as src:
            if src.res != (10.0, 10.0):  # coarser bands are resampled onto the chip grid
                continue
            expected = src.read(window=Window(x * size, y * size, size, size))
        assert Path(asset.get_absolute_href()).is_relative_to(sample_dir)
        np.testing.assert_array_equal(pixels[key], expected)
        compared += 1
    assert compared == 4  # blue, green, red, nir
    by_id = read_chip_by_id(row.chipid, home / "stacchip" / "combined", collection="sentinel-2-l2a")
    assert all(np.array_equal(by_id[k], pixels[k]) for k in pixels)


def test_a_second_run_redoes_nothing(main_run):
    home, _, _, sample_dir = main_run
    result, _ = run_main(home, sample_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"(0 indexed now, {TOTAL_ITEMS} already indexed)" in result.stdout
