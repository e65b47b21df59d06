"""zarr_array: a training set's Zarr member that is a group, not an array, is a clear StacchipError."""

import numpy as np
import pytest

from stacchip_assets.errors import StacchipError
from stacchip_assets.training.shards import zarr_array

zarr = pytest.importorskip("zarr")


def test_a_member_array_is_returned_and_a_member_group_is_refused(tmp_path):
    group = zarr.open_group(str(tmp_path / "c.zarr"), mode="w", zarr_format=3)
    group.create_array("lat_norm", shape=(4, 2), dtype="float32", fill_value=0.0)
    group.create_group("pixels")  # an edited or foreign store: "pixels" is not an array
    arr = zarr_array(group, "lat_norm")
    arr[1:3] = np.ones((2, 2), dtype="float32")
    assert np.asarray(arr[:]).sum() == 4.0
    with pytest.raises(StacchipError, match=r"pixels is a Zarr group, not an array"):
        zarr_array(group, "pixels")
