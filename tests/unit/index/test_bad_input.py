"""Rows of the bad-input matrix (docs/bad-input.md) that the core library answers on its own."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from affine import Affine

from stacchip_assets import AssetReadError, Chipper, InvalidIdentifierError, NoProjectionInfoError, NoStatsChipIndexer
from stacchip_assets.core.ids import validate_id

from tests.support.cogs import make_item, write_cog

T10 = Affine(10, 0, 399960.0, 0, -10, 5500020.0)


@pytest.fixture
def item(tmp_path):
    path = write_cog(tmp_path / "red.tif", np.arange(512 * 512, dtype=np.uint32).reshape(512, 512).astype(np.uint16), T10)
    return make_item("bad-input-item", {"red": (path, (512, 512), T10)})


def test_non_raster_asset_is_an_asset_read_error(item, tmp_path):
    xml = tmp_path / "metadata.xml"
    xml.write_text("<xml>not a raster</xml>")
    item.assets["red"].href = str(xml)
    with pytest.raises(AssetReadError) as excinfo:
        Chipper(NoStatsChipIndexer(item), assets=["red"]).chip(0, 0)
    message = str(excinfo.value)
    assert "bad-input-item" in message and "'red'" in message and "metadata.xml" in message
    assert "not recognized" in message or "not a supported" in message


def test_item_with_only_start_and_end_datetime_uses_the_start(item):
    item.datetime = None
    item.properties["datetime"] = None
    item.properties["start_datetime"] = "2023-07-04T09:30:00Z"
    item.properties["end_datetime"] = "2023-07-11T23:59:59Z"
    row = NoStatsChipIndexer(item).create_index().to_pylist()[0]
    assert row["date"] == dt.date(2023, 7, 4)
    assert row["datetime"] == dt.datetime(2023, 7, 4, 9, 30, tzinfo=dt.timezone.utc)


def test_item_without_any_datetime_names_the_item(item):
    item.datetime = None
    item.properties["datetime"] = None
    with pytest.raises(NoProjectionInfoError, match="bad-input-item.*no datetime"):
        NoStatsChipIndexer(item).create_index()


@pytest.mark.parametrize(
    "value",
    ["a/b", "../etc", "..", ".hidden", "-rf", "a\x00b", "tab\there", "x" * 256, "", "a\\b", "ä-non-ascii"],
)
def test_ids_that_cannot_become_paths_are_refused(value):
    with pytest.raises(InvalidIdentifierError, match="cannot be used as a path segment"):
        validate_id(value, "item")


@pytest.mark.parametrize("value", ["S2B_31UDQ_20230704_0_L2A", "MOD09A1.A2023185.h08v05.061.2023194034512", "x" * 241, "a:b=c,d@e+f"])
def test_real_ids_are_accepted(value):
    assert validate_id(value, "item") == value
