"""Real servers on 127.0.0.1 for tests: a STAC API (stac-fastapi-pgstac on a throwaway PostgreSQL
with PostGIS), S3-compatible object storage (SeaweedFS `weed mini`) and `dagster dev` (webserver +
daemon) on the project's workspace. Each runs in its own process group and is torn down with it.
`.ci/run` installs what they need; tests/conftest.py holds the session fixtures. A test whose server
cannot run on this machine is skipped with the reason, except under CI, where it fails
(:func:`require_servers`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PGBIN = Path("/usr/lib/postgresql/15/bin")


def free_port(also_free_offset: int | None = None) -> int:
    """A free TCP port on 127.0.0.1 (and port + offset free too, for servers that derive a second port)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if also_free_offset is None:
            return port
        if port + also_free_offset < 65535:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + also_free_offset))
                    return port
                except OSError:
                    continue
    raise RuntimeError("no free port")


def wait_for_http(url: str, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 500:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return
            last = exc
        except (urllib.error.URLError, ConnectionError, OSError) as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout} s: {last}")


def stop_process_group(process: subprocess.Popen, timeout: float = 10.0) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)


CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

POSTGIS_CONTROL = Path("/usr/share/postgresql/15/extension/postgis.control")

#: What each kind of server needs on the machine (all installed by .ci/run).
_NEEDS = {
    "postgres": ("psql",),
    "pgstac": ("uvicorn", "pypgstac", "psql"),
    "s3": ("weed",),
    "dagster": ("dagster",),
    "chromium": (),
}


def servers_available(*kinds: str) -> str | None:
    """None if the servers of `kinds` ("postgres", "pgstac", "s3", "dagster", "chromium"; default:
    pgstac and s3) can run here, else what is missing (for pytest.skip)."""
    kinds = kinds or ("pgstac", "s3")
    missing: list[str] = []
    for kind in kinds:
        missing += [name for name in _NEEDS[kind] if shutil.which(name) is None and name not in missing]
        if kind in ("postgres", "pgstac") and not (PGBIN / "initdb").exists():
            missing.append("postgresql-15 (apt)")
        if kind == "pgstac" and not POSTGIS_CONTROL.exists():
            missing.append("postgis (apt postgresql-15-postgis-3)")
        if kind in ("postgres", "pgstac") and os.geteuid() == 0 and shutil.which("runuser") is None:
            missing.append("runuser")
        if kind == "chromium":
            missing += [f"{p} (apt chromium chromium-driver)" for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
            try:
                import selenium  # noqa: F401
            except ImportError:
                missing.append("selenium (pip)")
    return f"missing: {', '.join(dict.fromkeys(missing))} (.ci/run installs them)" if missing else None


def in_ci() -> bool:
    """True when the environment says CI (`CI` set to anything but empty, 0 or false)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_servers(*kinds: str) -> None:
    """Skip the calling test, with the reason, when the servers of `kinds` cannot run on this machine.
    Under CI it fails instead: `.ci/run` installs every server, so a missing one is a broken CI
    machine, never a silently skipped test."""
    reason = servers_available(*kinds)
    if reason is None:
        return
    import pytest

    if in_ci():
        pytest.fail(f"CI is set and the test needs {'/'.join(kinds) or 'pgstac/s3'} servers, but {reason}", pytrace=False)
    pytest.skip(reason)


@dataclass
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def host_port(self) -> str:
        return self.endpoint.split("://", 1)[1]

    def client(self):
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name=self.region,
        )


@contextlib.contextmanager
def seaweedfs(folder: Path, access_key: str = "stacchip-test", secret_key: str = "stacchip-secret-1") -> Iterator[S3Server]:
    """SeaweedFS `weed mini` with SigV4 credentials; every port it opens is chosen free."""
    folder.mkdir(parents=True, exist_ok=True)
    ports = {name: free_port(also_free_offset=10000) for name in ("master", "volume", "filer", "s3", "webdav", "admin")}
    command = [
        "weed", "mini", f"-dir={folder}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false",
        f"-master.port={ports['master']}", f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}",
        f"-s3.port={ports['s3']}", f"-webdav.port={ports['webdav']}", f"-admin.port={ports['admin']}",
        f"-debug.port={free_port()}",
    ]
    env = dict(os.environ, AWS_ACCESS_KEY_ID=access_key, AWS_SECRET_ACCESS_KEY=secret_key)
    log = open(folder / "weed.log", "wb")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = S3Server(f"http://127.0.0.1:{ports['s3']}", access_key, secret_key, process=process)
    try:
        deadline = time.monotonic() + 60
        while True:  # the S3 gateway answers 403 to anonymous requests once it is up
            try:
                wait_for_http(server.endpoint + "/", timeout=2, process=process)
                server.client().list_buckets()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield server
    finally:
        stop_process_group(process)
        log.close()


@dataclass
class StacApiServer:
    url: str
    pg_env: dict
    folder: Path
    api_port: int
    process: subprocess.Popen | None = field(default=None, repr=False)

    def start_api(self) -> None:
        """(Re)start the API process (the database keeps running)."""
        env = dict(os.environ, **self.pg_env, ENABLE_TRANSACTIONS_EXTENSIONS="true", POSTGRES_HOST_READER=self.pg_env["PGHOST"],
                   POSTGRES_HOST_WRITER=self.pg_env["PGHOST"], POSTGRES_PORT=self.pg_env["PGPORT"], POSTGRES_USER="postgres",
                   POSTGRES_PASS="unused", POSTGRES_DBNAME="pgstac")
        log = open(self.folder / "api.log", "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "stac_fastapi.pgstac.app:create_app", "--factory",
             "--host", "127.0.0.1", "--port", str(self.api_port), "--log-level", "warning"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_for_http(f"{self.url}/_mgmt/ping", timeout=60, process=self.process)

    def stop_api(self) -> None:
        if self.process is not None:
            stop_process_group(self.process)

    # -- the transactions extension, for tests that publish items while a sensor polls ----------
    def _request(self, method: str, path: str, body: dict | None = None, ok=(200, 201)) -> dict:
        import requests

        response = requests.request(method, f"{self.url}{path}", json=body, timeout=30)
        if response.status_code not in ok:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json() if response.content else {}

    def create_collection(self, collection: dict) -> None:
        self._request("POST", "/collections", collection)

    def delete_collection(self, collection_id: str) -> None:
        self._request("DELETE", f"/collections/{collection_id}", ok=(200, 204, 404))

    def post_item(self, item: dict) -> None:
        self._request("POST", f"/collections/{item['collection']}/items", item)

    def put_item(self, item: dict) -> None:
        self._request("PUT", f"/collections/{item['collection']}/items/{item['id']}", item)

    def insert_item_in_database(self, item: dict) -> None:
        """Write an item straight into pgstac (as a loader would while the API is down)."""
        import json

        import psycopg

        with psycopg.connect(host=self.pg_env["PGHOST"], port=int(self.pg_env["PGPORT"]), user="postgres",
                             password="unused", dbname="pgstac", options="-c search_path=pgstac,public") as conn:
            conn.execute("select create_item(%s::jsonb)", [json.dumps(item)])


def _as_cluster_owner(*args: str, env: dict | None = None) -> None:
    """Run a PostgreSQL tool as the cluster's owner (`postgres` when we are root: initdb refuses root)."""
    command = ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:1])} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}")


@contextlib.contextmanager
def pgstac_api(folder: Path | None = None) -> Iterator[StacApiServer]:
    """stac-fastapi-pgstac with the transactions extension on a throwaway PostgreSQL cluster
    (:func:`postgres_cluster`, database ``pgstac`` migrated by pypgstac).

    `folder` (default: a fresh temporary folder, removed afterwards) receives the API log.
    """
    with postgres_cluster("pgstac") as database:
        log_dir = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="stacchip-pgstac-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        try:
            server = StacApiServer(url="", pg_env=database.env, folder=log_dir, api_port=free_port())
            server.url = f"http://127.0.0.1:{server.api_port}"
            result = subprocess.run(["pypgstac", "migrate"], env=dict(os.environ, **database.env), capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"pypgstac migrate failed: {result.stderr.strip()}")
            server.start_api()
            try:
                yield server
            finally:
                server.stop_api()
        finally:
            if folder is None:
                shutil.rmtree(log_dir, ignore_errors=True)


# -- dagster dev ------------------------------------------------------------------------------------

@dataclass
class DagsterDev:
    url: str  # http://127.0.0.1:PORT
    home: Path
    port: int
    log: Path
    process: subprocess.Popen | None = field(default=None, repr=False)
    location: str = "stacchip_assets"

    def graphql(self, query: str, variables: dict | None = None, timeout: float = 30.0) -> dict:
        import requests

        response = requests.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=timeout)
        response.raise_for_status()
        data = response.json()
        if data.get("errors"):
            raise RuntimeError(f"GraphQL errors: {data['errors']}")
        return data["data"]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def runs(self, tags: dict[str, str] | None = None) -> list[dict]:
        """Runs (newest first) with these tags: runId, status, tags, jobName."""
        data = self.graphql(
            """query Runs($filter: RunsFilter) { runsOrError(filter: $filter) {
                 __typename ... on Runs { results { runId status jobName tags { key value } } }
                 ... on PythonError { message } } }""",
            {"filter": {"tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]}},
        )["runsOrError"]
        if data["__typename"] != "Runs":
            raise RuntimeError(f"runsOrError: {data}")
        return [dict(r, tags={t["key"]: t["value"] for t in r["tags"]}) for r in data["results"]]

    def wait_for_run(self, *, run_id: str | None = None, tags: dict[str, str] | None = None,
                     timeout: float = 180.0) -> dict:
        """Poll until a run (by id, or the first with these tags) succeeds; fail fast when it fails."""
        deadline = time.monotonic() + timeout
        seen: list[dict] = []
        while time.monotonic() < deadline:
            seen = [r for r in self.runs(tags) if run_id is None or r["runId"] == run_id]
            for run in seen:
                if run["status"] == "SUCCESS":
                    return run
            failed = [r for r in seen if r["status"] in ("FAILURE", "CANCELED")]
            if failed and (run_id is not None or len(failed) == len(seen)):
                raise RuntimeError(f"run {failed[0]['runId']} ended {failed[0]['status']}; dagster dev log:\n"
                                   f"{self.log_text()[-4000:]}")
            time.sleep(1.0)
        raise TimeoutError(f"no successful run with {run_id or tags} within {timeout} s (seen: "
                           f"{[(r['runId'], r['status']) for r in seen]}); log:\n{self.log_text()[-4000:]}")

    def sensor_ticks(self, sensor: str = "stac_item_sensor", limit: int = 5) -> list[dict]:
        data = self.graphql(
            """query Ticks($selector: SensorSelector!, $limit: Int) { sensorOrError(sensorSelector: $selector) {
                 __typename ... on Sensor { sensorState { status ticks(limit: $limit) { status error { message } runIds } } } } }""",
            {"selector": {"repositoryLocationName": self.location, "repositoryName": "__repository__",
                          "sensorName": sensor}, "limit": limit},
        )["sensorOrError"]
        return data.get("sensorState", {}).get("ticks", []) if data["__typename"] == "Sensor" else []

    def launch_run(self, job: str, partition_key: str | None = None) -> str:
        """Launch an asset job (one partition of it, if given) through GraphQL; returns the run id."""
        data = self.graphql(
            """mutation Launch($params: ExecutionParams!) { launchRun(executionParams: $params) {
                 __typename ... on LaunchRunSuccess { run { runId } }
                 ... on PythonError { message stack } ... on Error { message } } }""",
            {"params": {
                "selector": {"repositoryLocationName": self.location, "repositoryName": "__repository__", "jobName": job},
                "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition_key}] if partition_key else []},
                "runConfigData": {},
            }},
        )["launchRun"]
        if data["__typename"] != "LaunchRunSuccess":
            raise RuntimeError(f"launchRun {job}[{partition_key}]: {data}")
        return data["run"]["runId"]


@contextlib.contextmanager
def dagster_dev(project: Path, home: Path, env: dict[str, str] | None = None, timeout: float = 180.0) -> Iterator[DagsterDev]:
    """`dagster dev` (webserver + daemon + code server) on the project's workspace.yaml, with a fresh
    Dagster home holding the project's dagster.yaml; waits until the code location has loaded."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(project / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    server = DagsterDev(url=f"http://127.0.0.1:{port}", home=home, port=port, log=home / "dagster-dev.log")
    full_env = dict(os.environ, DAGSTER_HOME=str(home), **(env or {}))
    full_env.pop("DAGSTER_IS_DEV_CLI", None)
    log = open(server.log, "wb")
    server.process = subprocess.Popen(
        [sys.executable, "-m", "dagster", "dev", "-w", str(project / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port),
         "--log-level", "warning"],
        cwd=project, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_for_http(f"{server.url}/server_info", timeout=timeout, process=server.process)
        deadline = time.monotonic() + timeout
        while True:
            entries = server.graphql(
                """{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
                     locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
            )["workspaceOrError"].get("locationEntries", [])
            entry = next((e for e in entries if e["name"] == server.location), None)
            if entry and entry["loadStatus"] == "LOADED":
                if entry["locationOrLoadError"]["__typename"] == "PythonError":
                    raise RuntimeError(f"code location failed to load: {entry['locationOrLoadError']['message']}")
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"code location not loaded within {timeout} s: {entries}")
            time.sleep(0.5)
        server.graphql("mutation { setNuxSeen }")  # no "join the community" dialog over the UI
        yield server
    except BaseException:
        log.flush()
        sys.stderr.write(f"dagster dev log ({server.log}):\n{server.log_text()[-4000:]}\n")
        raise
    finally:
        stop_process_group(server.process, timeout=20)
        log.close()


# -- sample items published to the servers ----------------------------------------------------------

def collection_json(catalog_json: Path, source_collection: str, new_id: str) -> dict:
    """A sample collection's JSON under another id, ready to POST to a STAC API."""
    import json

    data = json.loads((Path(catalog_json).parent / source_collection / "collection.json").read_text())
    data["id"], data["links"] = new_id, []
    return data


def item_json(catalog_json: Path, source_collection: str, item_id: str, collection: str, href_base: str,
              updated: str | None = None, assets: list[str] | None = None) -> dict:
    """A sample item's JSON for `collection`, its asset hrefs rebased from the local catalog folder
    onto `href_base` (``http://127.0.0.1:PORT`` of the Range server, or ``s3://bucket/prefix``), with
    `updated` set (a publisher sets it when it (re)publishes) and only `assets` kept (plus none else)."""
    import json

    root = Path(catalog_json).parent
    path = root / source_collection / item_id / f"{item_id}.json"
    data = json.loads(path.read_text())
    for key in list(data["assets"]):
        if assets is not None and key not in assets:
            del data["assets"][key]
            continue
        local = (path.parent / data["assets"][key]["href"]).resolve()
        data["assets"][key]["href"] = f"{href_base.rstrip('/')}/{local.relative_to(root.resolve()).as_posix()}"
    data["collection"], data["links"] = collection, []
    if updated is not None:
        data["properties"]["updated"] = updated
    return data


def local_item(catalog_json: Path, source_collection: str, item_id: str):
    """The sample item read from the local catalog (asset hrefs are local files)."""
    import pystac

    return pystac.Item.from_file(str(Path(catalog_json).parent / source_collection / item_id / f"{item_id}.json"))


# -- a plain throwaway PostgreSQL (Dagster instance storage) ----------------------------------------

@dataclass
class PostgresServer:
    host: str
    port: int
    dbname: str
    user: str = "postgres"
    password: str = "unused"  # trust auth; libpq still wants one set

    @property
    def url(self) -> str:
        """SQLAlchemy URL with the driver spelled out (SQLAlchemy 2.1 needs it, see INFRA.md)."""
        return f"postgresql+psycopg2://{self.user}:{self.password}@{self.host}:{self.port}/{self.dbname}"

    @property
    def env(self) -> dict[str, str]:
        return {"PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": self.user, "PGPASSWORD": self.password,
                "PGDATABASE": self.dbname}


@contextlib.contextmanager
def postgres_cluster(dbname: str = "dagster") -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL 15 cluster (trust auth, fsync off) with one empty database, on a free
    port of 127.0.0.1; stopped and removed afterwards. Same recipe as `pgstac_api`, without PostGIS."""
    cluster_dir = Path(tempfile.mkdtemp(prefix="stacchip-pg-"))
    if os.geteuid() == 0:
        shutil.chown(cluster_dir, "postgres", "postgres")
    port = free_port()
    data = cluster_dir / "data"
    started = False
    try:
        _as_cluster_owner(str(PGBIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
        _as_cluster_owner(
            str(PGBIN / "pg_ctl"), "-D", str(data), "-l", str(cluster_dir / "pg.log"), "-w", "start",
            "-o", f"-p {port} -k {cluster_dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
        )
        started = True
        server = PostgresServer(host="127.0.0.1", port=port, dbname=dbname)
        result = subprocess.run(["psql", "-d", "postgres", "-c", f'create database "{dbname}"'],
                                env=dict(os.environ, **server.env), capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"create database {dbname} failed: {result.stderr.strip()}")
        yield server
    finally:
        if started:
            with contextlib.suppress(RuntimeError):
                _as_cluster_owner(str(PGBIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(cluster_dir, ignore_errors=True)


# -- synthetic STAC items (metadata only) loaded in bulk ---------------------------------------------

def synthetic_collection(collection_id: str) -> dict:
    """A minimal STAC collection for synthetic items."""
    return {
        "type": "Collection", "stac_version": "1.0.0", "id": collection_id, "license": "proprietary",
        "description": "synthetic items (metadata only) for sensor paging and scale tests",
        "extent": {"spatial": {"bbox": [[0.0, 40.0, 10.0, 50.0]]}, "temporal": {"interval": [[None, None]]}},
        "links": [],
    }


def synthetic_item(collection_id: str, number: int, updated: str) -> dict:
    """Item `{collection}-{number:07d}`: a 10980 px UTM tile footprint (EPSG:32631, 10 m) with
    projection info, one COG asset href nobody serves (metadata only: nothing reads pixels), and
    `updated` as given."""
    col, row = number % 90, (number // 90) % 90
    x0, y0 = 300000 + col * 1000, 5500000 - row * 1000
    lon, lat = 0.5 + col * 0.1, 49.5 - row * 0.1
    item_id = f"{collection_id}-{number:07d}"
    return {
        "type": "Feature", "stac_version": "1.0.0", "id": item_id, "collection": collection_id,
        "stac_extensions": ["https://stac-extensions.github.io/projection/v2.0.0/schema.json"],
        "geometry": {"type": "Polygon", "coordinates": [[[lon, lat], [lon + 0.1, lat], [lon + 0.1, lat + 0.1],
                                                         [lon, lat + 0.1], [lon, lat]]]},
        "bbox": [lon, lat, lon + 0.1, lat + 0.1],
        "properties": {
            "datetime": f"2024-{1 + number % 12:02d}-{1 + number % 28:02d}T10:30:00Z", "updated": updated,
            "eo:cloud_cover": float(number % 100), "proj:code": "EPSG:32631", "proj:shape": [10980, 10980],
            "proj:transform": [10.0, 0.0, float(x0), 0.0, -10.0, float(y0)],
        },
        "assets": {"image": {"href": f"http://127.0.0.1:9/{collection_id}/{item_id}.tif",
                             "type": "image/tiff; application=geotiff; profile=cloud-optimized", "roles": ["data"]}},
        "links": [],
    }


def load_items(server: StacApiServer, items: list[dict], folder: Path, method: str = "insert_ignore") -> None:
    """Bulk-load items into the STAC API's database with `pypgstac load items` (their collection must
    exist); `upsert` replaces items that are there already."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"items-{time.monotonic_ns()}.ndjson"
    with open(path, "w") as out:
        for item in items:
            out.write(json.dumps(item) + "\n")
    try:
        result = subprocess.run(["pypgstac", "load", "items", str(path), "--method", method],
                                env=dict(os.environ, **server.pg_env), capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"pypgstac load items failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    finally:
        path.unlink(missing_ok=True)


# -- SeaweedFS that can be killed and restarted on the same data and ports (fault tests) ------------

class RestartableSeaweedFS:
    """`weed mini` whose ports and data folder outlive its process: `kill()` SIGKILLs its process
    group (an outage: no shutdown, no flush), `start()` brings it back on the same folder and ports."""

    def __init__(self, folder: Path, access_key: str = "stacchip-test", secret_key: str = "stacchip-secret-1") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.ports = {name: free_port(also_free_offset=10000)
                      for name in ("master", "volume", "filer", "s3", "webdav", "admin", "debug")}
        self.server = S3Server(f"http://127.0.0.1:{self.ports['s3']}", access_key, secret_key)
        self.starts = 0

    def start(self, timeout: float = 60.0) -> S3Server:
        p = self.ports
        command = [
            "weed", "mini", f"-dir={self.folder}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false",
            f"-master.port={p['master']}", f"-volume.port={p['volume']}", f"-filer.port={p['filer']}",
            f"-s3.port={p['s3']}", f"-webdav.port={p['webdav']}", f"-admin.port={p['admin']}", f"-debug.port={p['debug']}",
        ]
        env = dict(os.environ, AWS_ACCESS_KEY_ID=self.server.access_key, AWS_SECRET_ACCESS_KEY=self.server.secret_key)
        self.starts += 1
        with open(self.folder / f"weed-{self.starts}.log", "wb") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.server.process = process
        deadline = time.monotonic() + timeout
        while True:  # the S3 gateway answers 403 to anonymous requests once it is up
            try:
                wait_for_http(self.server.endpoint + "/", timeout=2, process=process)
                self.server.client().list_buckets()
                return self.server
            except Exception:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def kill(self) -> None:
        process = self.server.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)

    def stop(self) -> None:
        if self.server.process is not None:
            stop_process_group(self.server.process)
