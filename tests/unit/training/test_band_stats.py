"""Band statistics against plain numpy over the same chips (real sample COGs), and the merge maths."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pystac
import pytest

from stacchip_assets import Chipper, Indexer
from stacchip_assets.training import TrainingSetConfig, select_chips, write_training_set
from stacchip_assets.training.band_stats import (
    PERCENTILES,
    ChannelAccumulator,
    band_statistics,
    band_statistics_markdown,
    read_band_statistics_json,
    write_band_statistics_json,
    write_band_statistics_parquet,
)

from tests.unit.training.test_training import BANDS, CHIP, sample_index


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return sample_index(tmp_path_factory)


def numpy_reference(selection, config) -> dict[tuple[str, str], np.ndarray]:
    """(collection, band) -> the valid pixel values of every selected chip, read with the Chipper
    one chip at a time and masked with each COG's declared nodata value."""
    values: dict[tuple[str, str], list[np.ndarray]] = {}
    chippers: dict[str, Chipper] = {}
    for row in selection.to_pylist():
        collection, href = row["collection"], row["item_href"]
        chipper = chippers.get(href)
        if chipper is None:
            chipper = chippers[href] = Chipper(Indexer(pystac.Item.from_file(href), chip_size=CHIP), assets=config.bands[collection])
        chip = chipper.chip(row["chip_index_x"], row["chip_index_y"])
        for key in config.bands[collection]:
            nodata = chipper.reader(key).dataset.nodata
            for b in range(chip[key].shape[0]):
                v = chip[key][b].astype(np.float64).ravel()
                keep = np.isfinite(v) if nodata is None else np.isfinite(v) & (v != nodata)
                name = key if chip[key].shape[0] == 1 else ["red", "green", "blue", "nir"][b]
                values.setdefault((collection, name), []).append(v[keep])
    for chipper in chippers.values():
        chipper.close()
    return {k: np.concatenate(v) for k, v in values.items()}


def test_statistics_equal_numpy_over_the_same_chips(index):
    config = TrainingSetConfig(bands=BANDS, sample_size=160, seed=11)
    selection = select_chips(index, config)
    records = band_statistics(selection, config, chips_per_task=50)
    reference = numpy_reference(selection, config)
    assert {(r["collection"], r["band"]) for r in records} == set(reference)
    for r in records:
        v = reference[(r["collection"], r["band"])]
        label = f"{r['collection']}/{r['band']}"
        assert r["count"] == v.size, label
        np.testing.assert_allclose(r["mean"], v.mean(), rtol=1e-6, err_msg=label)
        np.testing.assert_allclose(r["std"], v.std(), rtol=1e-6, err_msg=label)
        assert (r["min"], r["max"]) == (v.min(), v.max()), label
        if r["dtype"] == "float32":
            assert not r["exact"] and r["p50"] is None
        else:
            assert r["exact"], label
            expected = np.percentile(v, PERCENTILES, method="inverted_cdf")
            assert [r[f"p{q}"] for q in PERCENTILES] == expected.tolist(), label
    masked = {(r["collection"], r["band"]): r["masked"] for r in records}
    assert masked[("sentinel-1-rtc", "vv")] > 0  # float nodata -32768 left out
    assert masked[("sentinel-2-l2a", "blue")] > 0  # uint16 nodata 0 left out
    assert masked[("naip", "red")] == 0  # no nodata declared: every pixel counts


def test_chan_merge_equals_one_pass_and_histograms_add_up():
    rng = np.random.default_rng(3)
    data = (rng.standard_normal(100_003) * 1e3 + 1e6).astype(np.float32)  # large offset: naive sums lose digits
    whole = ChannelAccumulator("float32")
    whole.update(data, None)
    parts = [ChannelAccumulator("float32") for _ in range(3)]
    for acc, chunk in zip(parts, np.array_split(data, [7, 50_000])):
        acc.update(chunk, None)
    parts[0].merge(parts[1])
    parts[0].merge(parts[2])
    v = data.astype(np.float64)
    for acc in (whole, parts[0]):
        r = acc.result()
        np.testing.assert_allclose([r["mean"], r["std"]], [v.mean(), v.std()], rtol=1e-12)

    ints = rng.integers(-30000, 30000, size=(4, 50, 50)).astype(np.int16)
    ints[0, :5] = -28672
    acc = ChannelAccumulator("int16")
    for chunk in ints:
        acc.update(chunk, -28672)
    kept = ints[ints != -28672].astype(np.float64)
    r = acc.result()
    assert r["count"] == kept.size and r["masked"] == 250
    np.testing.assert_allclose([r["mean"], r["std"]], [kept.mean(), kept.std()], rtol=1e-12)
    assert (r["min"], r["max"]) == (kept.min(), kept.max())
    assert r["p50"] == np.percentile(kept, 50, method="inverted_cdf")


def test_writers_and_same_pass_statistics(index, tmp_path):
    config = TrainingSetConfig(bands={"naip": ["image"], "modis-09a1-061": BANDS["modis-09a1-061"]}, shard_size=8)
    selection = select_chips(index, config)
    records = band_statistics(selection, config)
    write_band_statistics_json(records, tmp_path / "stats.json")
    assert read_band_statistics_json(tmp_path / "stats.json") == records
    write_band_statistics_parquet(records, tmp_path / "stats.parquet")
    table = pq.read_table(tmp_path / "stats.parquet")
    assert table.num_rows == len(records) == 4 + 7
    assert table.column("mean").to_pylist() == [r["mean"] for r in records]
    assert "| naip | red |" in band_statistics_markdown(records)

    # write_training_set(statistics=True) computes the same numbers during extraction
    write_training_set(selection, config, tmp_path / "ts", statistics=True)
    assert read_band_statistics_json(tmp_path / "ts" / "band_statistics.json") == records
