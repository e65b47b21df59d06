"""The code location loads and declares what the issue asks for (assets, partitions, checks, sensors, jobs)."""

from __future__ import annotations

import os
import subprocess
import sys

import dagster as dg
import pytest

from stacchip_assets.dagster_defs import ITEM_PARTITIONS_NAME, item_partition_key, split_item_partition_key
from stacchip_assets.dagster_defs.presets import builtin_presets, load_collections
from stacchip_assets.dagster_defs.resources import (
    ChipSettingsResource,
    StacSourceResource,
    StorageResource,
    default_resources,
)
from stacchip_assets.demo.sample_data import SAMPLE_COLLECTIONS
from stacchip_assets.errors import InvalidIdentifierError, StacchipError

from tests.conftest import PROJECT

ROOT = PROJECT


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    from stacchip_assets.definitions import defs

    return defs


def test_assets_and_partitions(defs):
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == {
        "stac_items", "chip_index", "combined_index", "training_set", "band_statistics"}
    assert graph.get(dg.AssetKey("training_set")).parent_keys == {dg.AssetKey("combined_index")}
    assert graph.get(dg.AssetKey("band_statistics")).parent_keys == {dg.AssetKey("training_set")}
    stac_items = defs.resolve_assets_def("stac_items")
    assert isinstance(stac_items.partitions_def, dg.StaticPartitionsDefinition)
    assert stac_items.partitions_def.get_partition_keys() == list(SAMPLE_COLLECTIONS)
    chip_index = defs.resolve_assets_def("chip_index")
    assert isinstance(chip_index.partitions_def, dg.DynamicPartitionsDefinition)
    assert chip_index.partitions_def.name == ITEM_PARTITIONS_NAME
    combined = defs.resolve_assets_def("combined_index")
    assert combined.partitions_def is None
    assert graph.get(dg.AssetKey("chip_index")).parent_keys == {dg.AssetKey("stac_items")}
    assert graph.get(dg.AssetKey("combined_index")).parent_keys == {dg.AssetKey("chip_index")}
    for asset in (stac_items, chip_index, combined):
        assert all(asset.code_versions_by_key.values())
    # no automation condition: the combined_index_trigger sensor requests its runs (issue 16)
    assert combined.automation_conditions_by_key.get(dg.AssetKey("combined_index")) is None


def test_checks(defs):
    graph = defs.resolve_asset_graph()
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert checks == {
        ("chip_index", "non_empty_or_explained"),
        ("chip_index", "geometries_valid_and_inside_footprint"),
        ("chip_index", "stats_in_unit_interval"),
        ("combined_index", "unique_chip_ids"),
        ("combined_index", "every_materialized_item_present"),
        ("combined_index", "row_count_equals_sum"),
        ("combined_index", "combined_geometries_valid"),
        ("combined_index", "all_indexed_items_combined"),
        ("combined_index", "combined_holds_item_sets"),
    }
    # the per-item checks are inline: one step per run
    assert {k.name for k in defs.resolve_assets_def("chip_index").check_keys} == {
        "non_empty_or_explained", "geometries_valid_and_inside_footprint", "stats_in_unit_interval"}


def test_sensors_and_jobs(defs):
    sensors = {s.name: s for s in defs.sensors}
    assert set(sensors) == {"stac_item_sensor", "combined_index_trigger"}
    assert all(s.default_status == dg.DefaultSensorStatus.RUNNING for s in sensors.values())
    assert sensors["combined_index_trigger"].job_name == "combined_index_job"
    assert {j.name for j in defs.resolve_all_job_defs()} >= {"stac_items_job", "chip_index_job", "combined_index_job", "training_job"}
    for name in ("stac_items_job", "chip_index_job", "combined_index_job"):
        assert defs.resolve_job_def(name).executor_def.name == "in_process"
    assert defs.resolve_job_def("chip_index_job").partitions_def.name == ITEM_PARTITIONS_NAME


def test_resources_work_without_configuration(defs, monkeypatch):
    assert isinstance(defs.resources["stac_source"], StacSourceResource)
    assert isinstance(defs.resources["storage"], StorageResource)
    assert isinstance(defs.resources["chip_settings"], ChipSettingsResource)
    assert defs.resources["stac_source"].api_url is None and defs.resources["stac_source"].catalog_path is None
    # bound to environment variables when they are set
    monkeypatch.setenv("STACCHIP_STORAGE_BASE", "s3://bucket/prefix")
    monkeypatch.setenv("STACCHIP_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("STACCHIP_CHIP_SIZE", "128")
    bound = default_resources()
    assert isinstance(bound["storage"].base, dg.EnvVar) and bound["storage"].base.env_var_name == "STACCHIP_STORAGE_BASE"
    resolved = bound["storage"].process_config_and_initialize()
    assert resolved.base == "s3://bucket/prefix" and resolved.s3_endpoint_url == "http://127.0.0.1:9"
    assert bound["chip_settings"].process_config_and_initialize().chip_size == 128


def test_chip_settings_override_presets():
    s2 = next(c for c in load_collections() if c.collection == "sentinel-2-l2a")
    settings = ChipSettingsResource(chip_size=128, indexers={"sentinel-2-l2a": "nostats"}).for_collection(s2)
    assert (settings.chip_size, settings.indexer, settings.chip_max_nodata) == (128, "nostats", 0.5)
    assert settings.assets == s2.chips.assets


def test_presets_cover_the_platforms(tmp_path, monkeypatch):
    presets = builtin_presets()
    assert set(presets) >= {"sentinel-2-l2a", "landsat-c2-l2", "sentinel-1-rtc", "naip", "modis-09a1-061", "linz-aerial"}
    everything = load_collections(names=",".join(presets))
    assert [c.collection for c in everything] == list(presets)
    s2 = next(c for c in everything if c.preset == "sentinel-2-l2a")
    assert s2.search.selection == "least_cloudy_per_tile_quarter" and s2.chips.indexer == "sentinel-2"
    assert [c.collection for c in load_collections()] == list(SAMPLE_COLLECTIONS)  # the default: the sample
    with pytest.raises(StacchipError, match="unknown collection preset"):
        load_collections(names="nope")
    config = tmp_path / "collections.yaml"
    config.write_text(
        "presets:\n  my-aerial: {collection: my-aerial, chips: {indexer: nostats, chip_size: 512}}\n"
        "collections:\n  - preset: my-aerial\n  - preset: naip\n    search: {bbox: [-70, 44, -69, 45]}\n"
    )
    monkeypatch.setenv("STACCHIP_COLLECTIONS_FILE", str(config))
    mine = load_collections()
    assert [c.collection for c in mine] == ["my-aerial", "naip"]
    assert mine[0].chips.chip_size == 512 and mine[1].search.bbox == (-70.0, 44.0, -69.0, 45.0)


def test_partition_keys():
    key = item_partition_key("sentinel-2-l2a", "S2B_31UDQ_20230704_0_L2A")
    assert key == "sentinel-2-l2a/S2B_31UDQ_20230704_0_L2A"
    assert split_item_partition_key(key) == ("sentinel-2-l2a", "S2B_31UDQ_20230704_0_L2A")
    with pytest.raises(InvalidIdentifierError):
        item_partition_key("a", "b/../c")
    with pytest.raises(StacchipError):
        split_item_partition_key("no-separator")


@pytest.mark.parametrize("with_home", [False, True], ids=["temporary-home", "DAGSTER_HOME"])
@pytest.mark.e2e
def test_dagster_cli_validates_the_workspace(tmp_path, with_home):
    """As run by hand in the repository (the project's dagster.yaml is picked up from there), and with
    a Dagster home holding that dagster.yaml."""
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    if with_home:
        env["DAGSTER_HOME"] = str(tmp_path)
        (tmp_path / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Validation successful" in result.stderr + result.stdout


@pytest.mark.parametrize(("value", "delay"), [(None, 5.0), ("0", 0.0), ("2.5", 2.5)])
def test_the_retry_delay_setting_reaches_the_retry_policy(monkeypatch, value, delay):
    """STACCHIP_RETRY_DELAY_SECONDS: the first retry's delay of chip_index (then doubled), default 5 s."""
    from stacchip_assets.dagster_defs import build_definitions

    if value is None:
        monkeypatch.delenv("STACCHIP_RETRY_DELAY_SECONDS", raising=False)
    else:
        monkeypatch.setenv("STACCHIP_RETRY_DELAY_SECONDS", value)
    policy = build_definitions(collections=[]).resolve_assets_def("chip_index").node_def.retry_policy
    assert (policy.max_retries, policy.delay, policy.backoff) == (2, delay, dg.Backoff.EXPONENTIAL)


@pytest.mark.parametrize("value", ["soon", "-1", "inf"])
def test_a_bad_retry_delay_is_named(monkeypatch, value):
    from stacchip_assets.dagster_defs import build_definitions

    monkeypatch.setenv("STACCHIP_RETRY_DELAY_SECONDS", value)
    with pytest.raises(StacchipError, match=f"STACCHIP_RETRY_DELAY_SECONDS must be a number of seconds \\(0 or more\\), got '{value}'"):
        build_definitions(collections=[])
