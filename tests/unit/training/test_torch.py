"""PyTorch datasets over the index and over the shards, in a DataLoader with worker processes."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch.utils.data import DataLoader  # noqa: E402

from stacchip_assets.training import NORM_KEYS, TrainingSetConfig, select_chips, write_training_set  # noqa: E402
from stacchip_assets.training.torch import ChipIndexDataset, ShardDataset  # noqa: E402

from tests.unit.training.test_training import BANDS, CHIP, FORMATS, sample_index  # noqa: E402


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return sample_index(tmp_path_factory)


def by_chip(loader) -> dict[tuple[str, str], dict]:
    return {(s["collection"], s["chipid"]): s for s in loader}


@pytest.mark.parametrize("fmt", FORMATS)
def test_index_dataset_in_worker_processes_yields_the_shards(index, tmp_path, fmt):
    config = TrainingSetConfig(bands=BANDS, sample_size=60, seed=5, shard_size=8, format=fmt)
    write_training_set(select_chips(index, config), config, tmp_path / "ts")
    from_index = ChipIndexDataset(index, config)
    from_shards = ShardDataset(tmp_path / "ts")
    assert len(from_index) == len(from_shards) == 60
    # batch_size=None: samples as they are (collections have different channel counts)
    a = by_chip(DataLoader(from_index, batch_size=None, num_workers=2))
    b = by_chip(DataLoader(from_shards, batch_size=None, num_workers=2))
    assert set(a) == set(b) and len(a) == 60
    for key, sample in a.items():
        other = b[key]
        assert sample["pixels"].dtype == torch.float32 and sample["pixels"].shape[1:] == (CHIP, CHIP)
        assert sample["nodata_mask"].dtype == torch.bool and sample["nodata_mask"].shape == (CHIP, CHIP)
        assert torch.equal(sample["pixels"], other["pixels"]), key
        assert torch.equal(sample["nodata_mask"], other["nodata_mask"]), key
        for name in NORM_KEYS:
            assert sample[name].shape == (2,) and torch.equal(sample[name], other[name]), (key, name)
        assert sample["index"] == other["index"]
    # the main process never opened a chip reader: each worker opened its own
    assert from_index._chippers._items == {}
    # same order: dataset[i] is manifest row i
    assert [from_index[i]["chipid"] for i in (0, 17, 59)] == [from_shards[i]["chipid"] for i in (0, 17, 59)]


def test_nodata_mask_and_batched_loading(index, tmp_path):
    config = TrainingSetConfig(bands={"sentinel-2-l2a": BANDS["sentinel-2-l2a"]}, sample_size=24, seed=1, max_nodata=1.0)
    ds = ChipIndexDataset(index, config)
    batches = list(DataLoader(ds, batch_size=8, num_workers=2, shuffle=False))
    assert [tuple(b["pixels"].shape) for b in batches] == [(8, 6, CHIP, CHIP)] * 3
    assert len(batches[0]["chipid"]) == 8
    pixels = torch.cat([b["pixels"] for b in batches]).numpy()
    mask = torch.cat([b["nodata_mask"] for b in batches]).numpy()
    np.testing.assert_array_equal(mask, (pixels == 0).any(axis=1))  # S2 bands declare nodata 0
    nodata_fraction = select_chips(index, config).column("nodata_percentage").to_numpy()
    assert mask.any() == bool((nodata_fraction > 0).any())
