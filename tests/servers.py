"""Real servers on 127.0.0.1 for tests: a STAC API (stac-fastapi-pgstac on a throwaway PostgreSQL
with PostGIS) and S3-compatible object storage (SeaweedFS `weed mini`). Each runs in its own
process group and is torn down with it. See ../shared/INFRA.md for how they were chosen."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

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


def servers_available() -> str | None:
    """None if the STAC API and S3 servers can run here, else why not (for pytest.skip)."""
    missing = [name for name in ("weed", "uvicorn", "pypgstac") if shutil.which(name) is None]
    if not (PGBIN / "initdb").exists():
        missing.append("postgresql-15 (apt)")
    return f"missing: {', '.join(missing)} (.ci/run installs them)" if missing else None


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


@contextlib.contextmanager
def pgstac_api(folder: Path) -> Iterator[StacApiServer]:
    """stac-fastapi-pgstac with the transactions extension on a throwaway PostgreSQL cluster."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.chown(folder, "postgres", "postgres")
    pg_port = free_port()
    data = folder / "data"

    def as_postgres(*args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True)

    as_postgres(str(PGBIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
    as_postgres(
        str(PGBIN / "pg_ctl"), "-D", str(data), "-l", str(folder / "pg.log"), "-w", "start",
        "-o", f"-p {pg_port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off",
    )
    pg_env = {"PGHOST": "127.0.0.1", "PGPORT": str(pg_port), "PGUSER": "postgres", "PGPASSWORD": "unused", "PGDATABASE": "pgstac"}
    server = StacApiServer(url="", pg_env=pg_env, folder=folder, api_port=free_port())
    server.url = f"http://127.0.0.1:{server.api_port}"
    try:
        env = dict(os.environ, **pg_env)
        subprocess.run(["psql", "-d", "postgres", "-c", "create database pgstac"], env=env, check=True, capture_output=True)
        subprocess.run(["pypgstac", "migrate"], env=env, check=True, capture_output=True)
        server.start_api()
        yield server
    finally:
        server.stop_api()
        with contextlib.suppress(subprocess.CalledProcessError):
            as_postgres(str(PGBIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
