"""`StacChipsComponent` and the `dg` tooling (docs/dg-component.md).

Fast tests: the component builds the same graph as `build_definitions` and maps its YAML onto the
resources. End-to-end tests (marker `e2e`): a project scaffolded by the real `create-dagster project`
in a temporary folder, a `defs.yaml` of the component pointing at the sample catalog, and the real
`dg` CLI: `dg list components`, `dg check defs`, `dg list defs`, `dg launch --assets chip_index` (the
index compared with the library indexing the same item) and `dg dev`; then `dg check defs` and
`dg dev` in this repository ([tool.dg] in pyproject.toml).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from importlib.metadata import entry_points
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pystac
import pytest

from stacchip_assets import Indexer
from stacchip_assets.dagster_defs import ITEM_PARTITIONS_NAME, build_definitions, item_partition_key
from stacchip_assets.dagster_defs.component import StacChipsComponent
from stacchip_assets.dagster_defs.resources import ChipSettingsResource, StacSourceResource, StorageResource
from stacchip_assets.errors import StacchipError

from tests.conftest import PROJECT
from tests.support.servers import free_port, stop_process_group, wait_for_http

ROOT = PROJECT
COMPONENT_TYPE = "stacchip_assets.dagster_defs.component.StacChipsComponent"
S2_ITEM = "S2B_31UDQ_20230704_0_L2A"
S2_ENTRY = {"preset": "sentinel-2-l2a", "search": {"query": None, "sortby": None, "selection": "all", "max_items": 1},
            "chips": {"assets": ["blue", "green", "red", "nir"]}}


def graph(defs: dg.Definitions) -> dict[str, object]:
    """What makes two Definitions the same graph: asset and check keys, deps, partitions, jobs, sensors."""
    repo = defs.get_repository_def()
    assets = {node.key.to_user_string(): node for node in repo.asset_graph.asset_nodes}
    return {
        "assets": {k: sorted(p.to_user_string() for p in n.parent_keys) for k, n in assets.items()},
        "partitions": {k: str(n.partitions_def) for k, n in assets.items()},
        "code_versions": {k: n.code_version for k, n in assets.items()},
        "checks": sorted(str(k) for k in repo.asset_graph.asset_check_keys),
        "jobs": sorted(j.name for j in repo.get_all_jobs()),
        "sensors": sorted(s.name for s in repo.sensor_defs),
        "resources": sorted(defs.resources or {}),
    }


def build(component: StacChipsComponent) -> dg.Definitions:
    from dagster.components.core.component_tree import ComponentTree

    return component.build_defs(ComponentTree.for_test().load_context)


def test_component_builds_the_same_graph_as_build_definitions(tmp_path, monkeypatch):
    for name in ("STACCHIP_COLLECTIONS", "STACCHIP_COLLECTIONS_FILE", "STACCHIP_STORAGE_BASE", "STACCHIP_CHIP_SIZE"):
        monkeypatch.delenv(name, raising=False)
    catalog, base = str(tmp_path / "catalog.json"), str(tmp_path / "store")
    component = StacChipsComponent.from_attributes_dict(attributes={
        "collections": [S2_ENTRY, {"preset": "naip"}],
        "stac_source": {"catalog_path": catalog},
        "storage": {"base": base, "s3_max_attempts": 2},
        "chip_settings": {"chip_size": 128},
    })
    configs = component.collection_configs()
    assert [c.collection for c in configs] == ["sentinel-2-l2a", "naip"]
    # overrides merged over the preset, `null` back to the built-in default
    assert configs[0].chips.assets == ("blue", "green", "red", "nir") and configs[0].chips.indexer == "sentinel-2"
    assert configs[0].search.query is None and configs[0].search.max_items == 1
    assert configs[1].chips.assets == ("image",)
    expected = build_definitions(configs, {
        "stac_source": StacSourceResource(catalog_path=catalog),
        "storage": StorageResource(base=base, s3_max_attempts=2),
        "chip_settings": ChipSettingsResource(chip_size=128),
    })
    defs = build(component)
    assert graph(defs) == graph(expected)
    assert "stac_items" in graph(defs)["assets"] and "chip_index_job" in graph(defs)["jobs"]
    assert str(defs.resources["storage"].base) == base and defs.resources["storage"].s3_max_attempts == 2
    assert defs.resources["stac_source"].catalog_path == catalog
    assert defs.resources["chip_settings"].chip_size == 128
    # no attributes at all: this repository's code location
    assert graph(build(StacChipsComponent.from_attributes_dict(attributes={}))) == graph(build_definitions())


def test_component_paths_and_environment(tmp_path, monkeypatch):
    """Relative paths are relative to the defs.yaml folder; unset fields keep the STACCHIP_* / AWS
    environment bindings (EnvVar: the secret is not in the resource config)."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret")
    monkeypatch.setenv("STACCHIP_S3_REGION", "eu-central-1")
    component = StacChipsComponent.from_attributes_dict(attributes={
        "stac_source": {"catalog_path": "catalog/catalog.json"}, "storage": {"base": "out"},
    })
    resources = component.resources(tmp_path)
    assert resources["stac_source"].catalog_path == str(tmp_path / "catalog" / "catalog.json")
    assert resources["storage"].base == str(tmp_path / "out")
    assert isinstance(resources["storage"].s3_secret_access_key, dg.EnvVar)
    assert resources["storage"].s3_secret_access_key.env_var_name == "AWS_SECRET_ACCESS_KEY"
    assert resources["storage"].s3_region == "STACCHIP_S3_REGION"  # an EnvVar, resolved at run time
    s3 = StacChipsComponent.from_attributes_dict(attributes={"storage": {"base": "s3://bucket/prefix"}})
    assert s3.resources(tmp_path)["storage"].base == "s3://bucket/prefix"


@pytest.mark.parametrize("attributes, message", [
    ({"collections": [{"preset": "no-such-preset"}]}, "unknown collection preset 'no-such-preset'"),
    ({"collections": [{"preset": "naip"}, {"preset": "naip"}]}, "collections configured twice: ['naip']"),
    ({"collections": [{"preset": "naip", "chips": {"chip_size": 0}}]}, "chip_size must be in 1..65535"),
    ({"presets": {"mine": {"collection": "x"}}}, "`presets` given without `collections`"),
])
def test_component_bad_configuration(attributes, message):
    with pytest.raises(StacchipError) as info:
        build(StacChipsComponent.from_attributes_dict(attributes=attributes))
    assert message in str(info.value)


# -- end to end: create-dagster + dg ---------------------------------------------------------------

def _dg_env(home: Path, *front: Path) -> dict[str, str]:
    """The environment of dg: this checkout first on PYTHONPATH (and `front`), no STACCHIP_* settings
    (the defs.yaml is the configuration), no PyPI version check, the given Dagster home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACCHIP_") and k != "DAGSTER_IS_DEV_CLI"}
    env["PYTHONPATH"] = os.pathsep.join([*map(str, front), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["DAGSTER_HOME"] = str(home)
    env["DAGSTER_DG_UPDATE_CHECK_ENABLED"] = "0"
    return env


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def dg_project(tmp_path_factory, sample_catalog):
    """A `create-dagster project` in a temporary folder with a defs.yaml of the component."""
    if shutil.which("dg") is None or shutil.which("create-dagster") is None:
        pytest.skip("dg / create-dagster are not installed: pip install -e '.[test]'")
    folder = tmp_path_factory.mktemp("dg")
    home, storage = folder / "home", folder / "storage"
    home.mkdir()
    shutil.copyfile(ROOT / "dagster.yaml", home / "dagster.yaml")  # the documented instance configuration
    env = _dg_env(home, folder / "chips" / "src")  # `uv sync` would install the project; no network here
    _run(["create-dagster", "project", "chips", "--no-uv-sync"], folder, env)
    project = folder / "chips"
    defs_yaml = project / "src" / "chips" / "defs" / "stacchips" / "defs.yaml"
    defs_yaml.parent.mkdir(parents=True)
    defs_yaml.write_text(json.dumps({  # YAML is a superset of JSON
        "type": COMPONENT_TYPE,
        "attributes": {
            "collections": [S2_ENTRY],
            "stac_source": {"catalog_path": str(sample_catalog)},
            "storage": {"base": str(storage)},
            "chip_settings": {"chip_size": 128},
        },
    }, indent=2))
    return {"project": project, "home": home, "storage": storage, "env": env, "catalog": sample_catalog}


@pytest.mark.e2e
def test_dg_lists_the_component(dg_project):
    registered = {e.name: e.value for e in entry_points(group="dagster_dg_cli.registry_modules")}
    assert registered.get("stacchip_assets") == "stacchip_assets.dagster_defs.component", (
        "the package metadata lacks the dagster_dg_cli.registry_modules entry point: reinstall, pip install -e ."
    )
    listed = json.loads(_run(["dg", "list", "components", "--json"], dg_project["project"], dg_project["env"]).stdout)
    mine = [c for c in listed["items"] if c["key"] == COMPONENT_TYPE]
    assert mine and "STAC" in mine[0]["summary"]


@pytest.mark.e2e
def test_dg_check_and_list_defs(dg_project):
    project, env = dg_project["project"], dg_project["env"]
    checked = _run(["dg", "check", "defs"], project, env)
    assert "All definitions loaded successfully" in checked.stdout + checked.stderr
    listed = json.loads(_run(["dg", "list", "defs", "--json"], project, env).stdout)
    assets = {a["asset_key"]: a for a in listed["assets"]}
    assert {"stac_items", "chip_index", "combined_index"} <= set(assets)
    assert assets["combined_index"]["dependency_keys"] == ["chip_index"]
    assert assets["chip_index"]["source"].endswith("defs/stacchips/defs.yaml:1")
    assert {"stac_items_job", "chip_index_job", "combined_index_job"} <= {j["name"] for j in listed["jobs"]}
    assert {s["name"] for s in listed["sensors"]} == {"stac_item_sensor", "combined_index_trigger"}


@pytest.mark.e2e
def test_dg_launch_materializes_a_partition(dg_project):
    """`dg launch --assets chip_index --partition sentinel-2-l2a/<item>`: the index file equals the
    library's index of the same item with the component's chip settings (128 px)."""
    project, env, storage = dg_project["project"], dg_project["env"], dg_project["storage"]
    key = item_partition_key("sentinel-2-l2a", S2_ITEM)
    with dg.DagsterInstance.from_config(str(dg_project["home"])) as instance:
        instance.add_dynamic_partitions(ITEM_PARTITIONS_NAME, [key])  # what the sensor does for a new item
    _run(["dg", "launch", "--assets", "chip_index", "--partition", key], project, env)

    index = storage / "index" / "sentinel-2-l2a" / S2_ITEM / f"index_{S2_ITEM}.parquet"
    assert index.is_file()
    table = pq.read_table(index).sort_by("chipid")
    item = pystac.Item.from_file(dg_project["catalog"].parent / "sentinel-2-l2a" / S2_ITEM / f"{S2_ITEM}.json")
    expected = Indexer(item, chip_size=128, chip_max_nodata=0.5, kind="sentinel-2").create_index().sort_by("chipid")
    assert table.num_rows == expected.num_rows > 0
    assert table.column("chipid").to_pylist() == expected.column("chipid").to_pylist()
    for column in ("cloud_cover_percentage", "nodata_percentage"):
        np.testing.assert_array_equal(table.column(column).to_numpy(), expected.column(column).to_numpy())
    assert set(table.column("chip_size").to_pylist()) == {128}
    with dg.DagsterInstance.from_config(str(dg_project["home"])) as instance:
        assert key in instance.get_materialized_partitions(dg.AssetKey("chip_index"))


def _dev(cwd: Path, env: dict[str, str], log: Path, location: str, *args: str) -> list[str]:
    """`dg dev` until the code location is loaded; its asset keys. Stopped with Ctrl-C (SIGINT), as a
    user would, so that it removes its temporary home."""
    import requests

    port = free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen(["dg", "dev", "--port", str(port), "--host", "127.0.0.1", *args], cwd=cwd, env=env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/server_info", timeout=180, process=process)
        query = "{ assetNodes { assetKey { path } repository { location { name } } } }"
        deadline = time.monotonic() + 120
        while True:
            nodes = requests.post(f"http://127.0.0.1:{port}/graphql", json={"query": query}, timeout=30).json()
            nodes = (nodes.get("data") or {}).get("assetNodes") or []
            if nodes or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert {n["repository"]["location"]["name"] for n in nodes} == {location}
        return sorted("/".join(n["assetKey"]["path"]) for n in nodes)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                stop_process_group(process)


@pytest.mark.e2e
def test_dg_dev_serves_the_component(dg_project, tmp_path):
    log = tmp_path / "dg-dev.log"
    keys = _dev(dg_project["project"], dg_project["env"], log, "chips")
    assert {"stac_items", "chip_index", "combined_index"} <= set(keys)
    text = log.read_text(errors="replace")
    assert "will not be used" not in text and "Serving dagster-webserver" in text


@pytest.mark.e2e
def test_dg_in_this_repository(tmp_path, sample_catalog):
    """[tool.dg] of pyproject.toml: `dg check defs`, `dg list defs`, `dg launch` and `dg dev` in the
    repository root load the same code location as workspace.yaml; `dg dev` as documented (DAGSTER_HOME
    unset: the repository's dagster.yaml configures a temporary instance) prints no "dagster.yaml will
    not be used" warning."""
    if shutil.which("dg") is None:
        pytest.skip("dg is not installed: pip install -e '.[test]'")
    env = _dg_env(tmp_path)
    del env["DAGSTER_HOME"]
    env.update(STACCHIP_STAC_CATALOG=str(sample_catalog), STACCHIP_COLLECTIONS="naip",
               STACCHIP_STORAGE_BASE=str(tmp_path / "storage"))  # nothing written into the checkout
    checked = _run(["dg", "check", "defs"], ROOT, env)
    assert "All definitions loaded successfully" in checked.stdout + checked.stderr
    listed = json.loads(_run(["dg", "list", "defs", "--json"], ROOT, env).stdout)
    assert {"stac_items", "chip_index", "combined_index"} <= {a["asset_key"] for a in listed["assets"]}
    home = tmp_path / "home"  # `dg launch` with a Dagster home, as documented (no dev server: no warning)
    home.mkdir()
    shutil.copyfile(ROOT / "dagster.yaml", home / "dagster.yaml")
    launched = _run(["dg", "launch", "--assets", "stac_items", "--partition", "naip"], ROOT, dict(env, DAGSTER_HOME=str(home)))
    assert "will not be used" not in launched.stdout + launched.stderr
    item_set = json.loads((tmp_path / "storage" / "item_sets" / "naip.json").read_text())
    assert [i["id"] for i in item_set["items"]] == ["me_m_4406901_ne_19_060_20211006"]
    before = {p.name for p in ROOT.iterdir()}
    log = tmp_path / "dg-dev.log"
    keys = _dev(ROOT, env, log, "stacchip_assets")
    assert {"stac_items", "chip_index", "combined_index", "training_set"} <= set(keys)
    text = log.read_text(errors="replace")
    assert "will not be used" not in text and "Using temporary directory" in text
    left = {p.name for p in ROOT.iterdir()} - before
    for name in left:  # a temporary home of a dg dev that had to be killed
        if name.startswith(".tmp_dagster_home_"):
            shutil.rmtree(ROOT / name, ignore_errors=True)
    assert not left, f"dg dev left {left} in the checkout"
    # a persistent instance (the main job's .dagster_home): dg dev started in the home, on workspace.yaml
    log = tmp_path / "dg-dev-home.log"
    keys = _dev(home, dict(env, DAGSTER_HOME=str(home)), log, "stacchip_assets", "-w", str(ROOT / "workspace.yaml"))
    assert {"stac_items", "chip_index", "combined_index"} <= set(keys)
    text = log.read_text(errors="replace")
    assert "will not be used" not in text and "Using temporary directory" not in text
    assert "Serving dagster-webserver" in text  # the log is the server's


def test_component_schema_refuses_unknown_attributes():
    """A misspelt attribute fails validation of the defs.yaml (Dagster's `Model`: extra fields forbidden)."""
    with pytest.raises(Exception) as info:
        StacChipsComponent.from_attributes_dict(attributes={"collections": [{"preset": "naip", "chips": {"chip_sise": 1}}]})
    assert "chip_sise" in str(info.value)
    with pytest.raises(Exception) as info:
        StacChipsComponent.from_attributes_dict(attributes={"storage": {"bucket": "b"}})
    assert "bucket" in str(info.value)
