"""Shared test configuration, and session fixtures for the real servers the end-to-end tests use.

Every server runs on 127.0.0.1 on a free port, in its own process group, started here and torn
down at the end of the session (see tests/support/servers.py, tests/support/http_server.py). A test that needs a
server the machine cannot run is skipped with the reason; `.ci/run` installs all of them, and
under CI (env `CI` set) a missing server fails the test instead, so CI skips nothing.
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings

# CI explores the same examples on every run (a red CI must be reproducible); developers get fresh ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

PROJECT = Path(__file__).resolve().parents[1]


def _temporaries_in_memory() -> None:
    """Test temporaries (tmp_path, Dagster test instances, server data folders) on tmpfs when the machine
    has one and TMPDIR is not set: the SQLite instances of the Dagster tests sync every event to disk,
    which made a third of their time. Nothing is durable across a test session anyway."""
    shm = Path("/dev/shm")
    if os.environ.get("TMPDIR") or not (shm.is_dir() and os.access(shm, os.W_OK)):
        return
    if shutil.disk_usage(shm).free < 4 * 2**30:
        return
    folder = shm / f"stacchip-tests-{os.getuid()}"
    folder.mkdir(exist_ok=True)
    folder.chmod(0o1777)  # like /tmp: the PostgreSQL servers run as `postgres` under it
    os.environ["TMPDIR"] = str(folder)  # servers and subprocesses started by the tests too
    tempfile.tempdir = str(folder)


_temporaries_in_memory()
# Retries of transient failures wait 0.5 s then 1 s in the tests (the default, 5 s then 10 s, is for real
# outages); tests/dagster/test_definitions.py checks that the setting reaches the RetryPolicy.
os.environ.setdefault("STACCHIP_RETRY_DELAY_SECONDS", "0.5")

#: The collection the `dagster dev` code location is configured with (empty until a test posts items).
DAGSTER_DEV_COLLECTION = "dev-sentinel-2-l2a"

#: Session fixtures that start a real server: a test using one (directly or through another fixture) is e2e.
SERVER_FIXTURES = frozenset({"stac_api", "s3_server", "cog_server", "dagster_dev_server"})
E2E_FOLDER = Path(__file__).resolve().parent / "e2e"


def pytest_collection_modifyitems(config, items) -> None:
    """Mark `e2e` every test under tests/e2e/ and every test that uses a server fixture, so that
    `pytest -m "not e2e"` (the fast inner loop) starts no server, browser or daemon. Tests that start
    one themselves (serve_directory, dagster_dev, a daemon, PostgreSQL, moto) carry the mark in their file."""
    for item in items:
        if E2E_FOLDER in item.path.parents or SERVER_FIXTURES.intersection(item.fixturenames):
            item.add_marker(pytest.mark.e2e)


def require_servers(*kinds: str) -> None:
    """Skip (fail under CI) when these servers cannot run here: see tests/support/servers.py."""
    from .support.servers import require_servers as require

    require(*kinds)


@pytest.fixture(scope="session")
def sample_catalog(tmp_path_factory) -> Path:
    """catalog.json of the embedded sample catalog (generated once per session)."""
    from .support.dagster_support import shared_sample

    return shared_sample(tmp_path_factory)


@pytest.fixture(scope="session")
def sample_graph(tmp_path_factory):
    """The sample graph materialized once per session (every chip_index partition + combined_index), shared
    by the tests/dagster modules that only read it: tests/support/dagster_support.materialized_sample_graph."""
    from .support.dagster_support import materialized_sample_graph

    yield from materialized_sample_graph(tmp_path_factory)


@pytest.fixture(scope="session")
def cog_server(sample_catalog) -> str:
    """Base URL of a Range-capable HTTP server over the sample catalog's folder (COGs over HTTP)."""
    from .support.http_server import serve_directory

    with serve_directory(str(sample_catalog.parent)) as url:
        yield url


@pytest.fixture(scope="session")
def stac_api():
    """stac-fastapi-pgstac (transactions on) on a throwaway PostgreSQL + PostGIS cluster."""
    require_servers("pgstac")
    from .support.servers import pgstac_api

    with pgstac_api() as server:
        yield server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """SeaweedFS `weed mini`, an S3 endpoint that checks SigV4 signatures."""
    require_servers("s3")
    from .support.servers import seaweedfs

    folder = Path(tempfile.mkdtemp(prefix="stacchip-weed-"))
    try:
        with seaweedfs(folder / "data") as server:
            yield server
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def dagster_dev_server(tmp_path_factory, stac_api, cog_server, sample_catalog):
    """`dagster dev` on the project's workspace.yaml, its code location pointed at the STAC API (one
    empty collection, DAGSTER_DEV_COLLECTION) with the item sensor polling every 2 s."""
    require_servers("dagster")
    from .support.servers import collection_json, dagster_dev

    stac_api.create_collection(collection_json(sample_catalog, "sentinel-2-l2a", DAGSTER_DEV_COLLECTION))
    home = tmp_path_factory.mktemp("dagster-dev-home")
    collections = home / "collections.yaml"
    collections.write_text(
        "collections:\n"
        f"  - preset: sentinel-2-l2a\n    collection: {DAGSTER_DEV_COLLECTION}\n"
        "    search: {query: null, sortby: null, selection: all}\n"
        "    chips: {assets: [blue, green, red, nir, rededge1, swir16]}\n"
    )
    env = {
        "STACCHIP_STAC_API_URL": stac_api.url,
        "STACCHIP_COLLECTIONS_FILE": str(collections),
        "STACCHIP_STORAGE_BASE": str(home / "stacchip"),
        "STACCHIP_SENSOR_INTERVAL_SECONDS": "2",
    }
    for name in ("STACCHIP_STAC_CATALOG", "STACCHIP_COLLECTIONS", "STACCHIP_S3_ENDPOINT_URL"):
        env[name] = ""
    # the storage base served over HTTP: metadata images link there and show inline in the UI
    from .support.http_server import serve_directory

    (home / "stacchip").mkdir()
    with serve_directory(str(home / "stacchip")) as images:
        env["STACCHIP_IMAGE_URL_PREFIX"] = images
        with dagster_dev(PROJECT, home, env=env) as server:
            yield server
