"""Scale benchmark of the Dagster deployment: 100k item partitions on the PostgreSQL-backed instance,
10k new items discovered by the real sensor daemon from the real STAC API, and the UI's asset-page
GraphQL queries for chip_index, all on throwaway servers on 127.0.0.1.

    python benchmarks/scale.py                 # full: --partitions 100000 --items 10000
    python benchmarks/scale.py --quick         # 10000 partitions, 1000 items (a few minutes)

What it does (every step timed; results printed and written as JSON, nothing asserted):

1. Starts a throwaway PostgreSQL for the Dagster instance ($DAGSTER_HOME/dagster.yaml is
   deploy/dagster.postgres.yaml, with `max_concurrent_runs: 0` so the requested runs stay queued: this
   measures discovery, not 10k run processes) and stac-fastapi-pgstac on its own PostgreSQL.
2. Registers `--partitions` chip_index partitions (`instance.add_dynamic_partitions`, batches of
   10k) and loads the same items into the STAC API (synthetic, metadata only, `updated` in 2024), so
   the search runs over a collection of partitions + items rows; marks `--materialized` of them
   materialized (runless events) so the partition stats are not trivially empty.
3. Starts the real `dagster-webserver` and times the two queries the UI's chip_index asset page
   sends, taken verbatim from the installed dagster-webserver bundle: `AssetGraphLiveQuery` (the
   asset's live data: partitionStats, latest materialization, checks) and `PartitionHealthQuery` (the
   partitions tab: every key and the materialized/failed/in-progress lists).
4. Sets the sensor's cursor after the old items (through GraphQL, as the UI's "set cursor" does),
   loads `--items` new items (`updated` in 2025, four per second) into the STAC API, starts
   `dagster-daemon run` and follows the stac_item_sensor's ticks until the cursor reaches the last new
   item. Each tick's duration is the daemon's (start to end: the sensor's evaluation in the code
   server plus submitting its runs). The items per tick are STACCHIP_MAX_ITEMS_PER_TICK (`--cap`).
5. Times the two GraphQL queries again with partitions + items partitions and the queued runs.

Acceptance figures of issue 7: each tick under 30 s; the asset page's partition-stats query under 5 s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

COLLECTION = "scale-synthetic"
OLD_T0 = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
NEW_T0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)


def iso(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- the UI's queries, from the installed dagster-webserver ----------------------------------------

def _definition(text: str, kind: str, name: str) -> str:
    """The GraphQL `query NAME ...` / `fragment NAME on ...` block in the UI bundle (balanced braces)."""
    match = re.search(rf"{kind} {name}\b", text)
    if match is None:
        raise LookupError(f"{kind} {name} not found in the dagster-webserver bundle")
    start, depth, i = match.start(), 0, text.index("{", match.start())
    while True:
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i + 1].replace("\\n", "\n")
        i += 1


def ui_query(name: str) -> str:
    """The query `name` of the Dagster UI with every fragment it spreads, as the UI sends it."""
    import dagster_webserver

    bundle = Path(dagster_webserver.__file__).parent / "webapp" / "build" / "_next" / "static" / "chunks"
    for path in sorted(glob.glob(str(bundle / "*.js"))):
        text = Path(path).read_text(errors="replace")
        if f"query {name}(" in text or f"query {name} " in text:
            break
    else:
        raise LookupError(f"query {name} not found under {bundle}")
    blocks, pending, done = [_definition(text, "query", name)], [], set()
    pending += re.findall(r"\.\.\.(\w+)", blocks[0])
    while pending:
        fragment = pending.pop()
        if fragment in done:
            continue
        done.add(fragment)
        block = _definition(text, "fragment", fragment)
        blocks.append(block)
        pending += re.findall(r"\.\.\.(\w+)", block)
    return "\n".join(blocks)


# -- servers ----------------------------------------------------------------------------------------

@contextmanager
def process(command: list[str], env: dict, log_path: Path, cwd: Path):
    from tests.support.servers import stop_process_group

    out = open(log_path, "wb")
    proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        stop_process_group(proc, timeout=30)
        out.close()


def graphql(url: str, query: str, variables: dict | None = None, timeout: float = 300.0) -> tuple[dict, float]:
    import requests

    started = time.perf_counter()
    response = requests.post(f"{url}/graphql", json={"query": query, "variables": variables or {}}, timeout=timeout)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    data = response.json()
    if data.get("errors"):
        raise RuntimeError(f"GraphQL errors: {json.dumps(data['errors'])[:2000]}")
    return data["data"], elapsed


def wait_for_location(url: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        data, _ = graphql(url, """{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
            locationOrLoadError { __typename ... on PythonError { message } } } } } }""")
        entries = data["workspaceOrError"].get("locationEntries", [])
        if entries and all(e["loadStatus"] == "LOADED" for e in entries):
            errors = [e for e in entries if e["locationOrLoadError"]["__typename"] == "PythonError"]
            if errors:
                raise RuntimeError(f"code location failed to load: {errors[0]['locationOrLoadError']['message']}")
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"code location not loaded within {timeout} s: {entries}")
        time.sleep(0.5)


SENSOR_SELECTOR = {"repositoryLocationName": "stacchip_assets", "repositoryName": "__repository__",
                   "sensorName": "stac_item_sensor"}


def time_ui_queries(url: str, repeat: int) -> dict:
    asset_key = {"path": ["chip_index"]}
    out = {}
    for name, variables in (("AssetGraphLiveQuery", {"assetKeys": [asset_key]}),
                            ("PartitionHealthQuery", {"assetKey": asset_key})):
        query = ui_query(name)
        times, summary = [], {}
        for _ in range(repeat):
            data, elapsed = graphql(url, query, variables)
            times.append(round(elapsed, 3))
        if name == "AssetGraphLiveQuery":
            summary = data["assetNodes"][0]["partitionStats"]
        else:
            node = data["assetNodeOrError"]
            summary = {"partition_keys": sum(len(d["partitionKeys"]) for d in node["partitionKeysByDimension"]),
                       "materialized": len(node["assetPartitionStatuses"].get("materializedPartitions", []))}
        out[name] = {"seconds": times, "median": statistics.median(times), "result": summary}
        log(f"  {name}: {times} s  {summary}")
    return out


# -- the benchmark ----------------------------------------------------------------------------------

def run(args) -> dict:
    import dagster as dg
    import yaml

    from stacchip_assets.dagster_defs import ITEM_PARTITIONS_NAME, item_partition_key
    from stacchip_assets.dagster_defs.sensors import dump_cursor

    from tests.support.servers import (
        free_port,
        load_items,
        pgstac_api,
        postgres_cluster,
        synthetic_collection,
        synthetic_item,
        wait_for_http,
    )

    results: dict = {"partitions": args.partitions, "items": args.items, "cap": args.cap,
                     "materialized": args.materialized, "sensor_interval_seconds": args.interval,
                     "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="scale-", dir=work))
    home, project = run_dir / "home", run_dir / "project"
    home.mkdir()
    project.mkdir()
    with ExitStack() as stack:
        started = time.perf_counter()
        pg = stack.enter_context(postgres_cluster("dagster"))
        api = stack.enter_context(pgstac_api())
        results["servers_start_seconds"] = round(time.perf_counter() - started, 2)
        log(f"PostgreSQL (instance) on :{pg.port}, STAC API at {api.url} ({results['servers_start_seconds']} s)")

        config = yaml.safe_load((REPO / "deploy" / "dagster.postgres.yaml").read_text())
        config["concurrency"]["runs"]["max_concurrent_runs"] = 0  # queue the runs, launch none
        (home / "dagster.yaml").write_text(yaml.safe_dump(config))
        shutil.copyfile(REPO / "workspace.yaml", project / "workspace.yaml")
        (project / "collections.yaml").write_text(
            f"collections:\n  - collection: {COLLECTION}\n    search: {{selection: all}}\n"
            "    chips: {indexer: nostats}\n")
        env = dict(os.environ, DAGSTER_HOME=str(home), DAGSTER_PG_URL=pg.url, STACCHIP_STAC_API_URL=api.url,
                   STACCHIP_COLLECTIONS_FILE=str(project / "collections.yaml"), STACCHIP_STAC_CATALOG="",
                   STACCHIP_COLLECTIONS="", STACCHIP_STORAGE_BASE=str(run_dir / "base"),
                   STACCHIP_MAX_ITEMS_PER_TICK=str(args.cap), STACCHIP_SENSOR_INTERVAL_SECONDS=str(args.interval))
        env.pop("DAGSTER_IS_DEV_CLI", None)
        os.environ["DAGSTER_PG_URL"] = pg.url

        # 2. partitions, the same items in the STAC API, some materialized
        instance = dg.DagsterInstance.from_config(str(home))
        stack.callback(instance.dispose)
        old_ids = [f"{COLLECTION}-{n:07d}" for n in range(args.partitions)]
        keys = [item_partition_key(COLLECTION, i) for i in old_ids]
        started = time.perf_counter()
        for i in range(0, len(keys), 10_000):
            instance.add_dynamic_partitions(ITEM_PARTITIONS_NAME, keys[i:i + 10_000])
        results["register_partitions_seconds"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        count = len(instance.get_dynamic_partitions(ITEM_PARTITIONS_NAME))
        results["list_partitions_seconds"] = round(time.perf_counter() - started, 3)
        log(f"registered {count} partitions in {results['register_partitions_seconds']} s "
            f"(listing them: {results['list_partitions_seconds']} s)")
        started = time.perf_counter()
        for key in keys[:args.materialized]:
            instance.report_runless_asset_event(dg.AssetMaterialization("chip_index", partition=key))
        results["report_materializations_seconds"] = round(time.perf_counter() - started, 2)

        api.create_collection(synthetic_collection(COLLECTION))
        old_updated = [iso(OLD_T0 + dt.timedelta(seconds=n)) for n in range(args.partitions)]
        started = time.perf_counter()
        for i in range(0, args.partitions, 20_000):
            load_items(api, [synthetic_item(COLLECTION, n, old_updated[n]) for n in range(i, min(i + 20_000, args.partitions))],
                       run_dir / "ndjson")
        results["load_old_items_seconds"] = round(time.perf_counter() - started, 2)
        log(f"loaded {args.partitions} old items into the STAC API in {results['load_old_items_seconds']} s")

        # 3. the webserver, and the asset page's queries at `partitions` partitions
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        stack.enter_context(process(
            [sys.executable, "-m", "dagster_webserver", "-w", str(project / "workspace.yaml"), "-h", "127.0.0.1",
             "-p", str(port), "--log-level", "warning"], env, run_dir / "webserver.log", project))
        started = time.perf_counter()
        wait_for_http(f"{url}/server_info", timeout=300)
        wait_for_location(url)
        results["webserver_start_seconds"] = round(time.perf_counter() - started, 2)
        log(f"dagster-webserver at {url} ({results['webserver_start_seconds']} s); UI queries at {args.partitions} partitions:")
        results["ui_queries_before"] = time_ui_queries(url, args.repeat)

        # 4. the cursor after the old items, new items, the daemon's ticks
        cursor = dump_cursor({COLLECTION: (old_updated[-1], old_ids[-1])}) if args.partitions else None
        graphql(url, """mutation SetCursor($selector: SensorSelector!, $cursor: String) {
            setSensorCursor(sensorSelector: $selector, cursor: $cursor) { __typename } }""",
                {"selector": SENSOR_SELECTOR, "cursor": cursor})
        new = [synthetic_item(COLLECTION, args.partitions + n, iso(NEW_T0 + dt.timedelta(milliseconds=250 * n)))
               for n in range(args.items)]
        started = time.perf_counter()
        load_items(api, new, run_dir / "ndjson")
        results["load_new_items_seconds"] = round(time.perf_counter() - started, 2)
        log(f"loaded {args.items} new items in {results['load_new_items_seconds']} s; starting dagster-daemon")
        last = (new[-1]["properties"]["updated"], new[-1]["id"]) if new else None

        daemon_started = time.time()
        daemon = stack.enter_context(process([sys.executable, "-m", "dagster._daemon", "run", "-w",
                                              str(project / "workspace.yaml"), "--log-level", "warning"],
                                             env, run_dir / "daemon.log", project))
        ticks_query = """query Ticks($selector: SensorSelector!, $limit: Int) { sensorOrError(sensorSelector: $selector) {
            __typename ... on Sensor { sensorState { ticks(limit: $limit) { id status timestamp endTimestamp
            cursor runIds skipReason error { message } } } } } }"""
        deadline = time.monotonic() + args.timeout
        ticks: list[dict] = []
        results["stopped"] = None
        while True:
            if time.monotonic() > deadline:
                results["stopped"] = f"timeout after {args.timeout} s"  # report what was reached
                break
            try:
                time.sleep(2)
            except KeyboardInterrupt:  # Ctrl-C: stop following the ticks, still report
                results["stopped"] = "interrupted"
                break
            if daemon.poll() is not None:
                raise RuntimeError(f"dagster-daemon exited with {daemon.returncode}: "
                                   f"{(run_dir / 'daemon.log').read_text(errors='replace')[-3000:]}")
            data, _ = graphql(url, ticks_query, {"selector": SENSOR_SELECTOR, "limit": 1000})
            ticks = [t for t in data["sensorOrError"]["sensorState"]["ticks"] if t["timestamp"] >= daemon_started - 1]
            failed = [t for t in ticks if t["status"] == "FAILURE"]
            if failed:
                raise RuntimeError(f"sensor tick failed: {failed[0]['error']}")
            done = [t for t in ticks if t["endTimestamp"] and t["cursor"] and last is not None
                    and tuple(json.loads(t["cursor"])["collections"].get(COLLECTION, [])) == last]
            if done or last is None:
                break
        if results["stopped"]:
            data, _ = graphql(url, ticks_query, {"selector": SENSOR_SELECTOR, "limit": 1000})
            ticks = [t for t in data["sensorOrError"]["sensorState"]["ticks"] if t["timestamp"] >= daemon_started - 1]
        discovery = sorted((t for t in ticks if t["runIds"]), key=lambda t: t["timestamp"])
        per_tick = [{"runs": len(t["runIds"]), "status": t["status"],
                     "seconds": round(t["endTimestamp"] - t["timestamp"], 2) if t["endTimestamp"] else None}
                    for t in discovery]
        durations = [t["seconds"] for t in per_tick if t["seconds"] is not None]
        results["ticks"] = per_tick
        results["tick_seconds"] = {"count": len(durations), "max": max(durations, default=0),
                                   "median": statistics.median(durations) if durations else 0,
                                   "min": min(durations, default=0)}
        results["items_discovered"] = sum(t["runs"] for t in per_tick)
        results["discovery_wall_seconds"] = round(((discovery[-1]["endTimestamp"] or time.time()) - daemon_started)
                                                  if discovery else 0, 1)
        log(f"{results['items_discovered']} items in {len(durations)} ticks; tick seconds {results['tick_seconds']}; "
            f"wall {results['discovery_wall_seconds']} s from daemon start")
        queued = len(instance.get_run_ids(dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED])))
        results["queued_runs"] = queued

        # 5. the asset page again, with the new partitions and the queued runs
        log(f"UI queries at {args.partitions + args.items} partitions, {queued} queued runs:")
        results["ui_queries_after"] = time_ui_queries(url, args.repeat)
    shutil.rmtree(run_dir, ignore_errors=True)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--partitions", type=int, default=100_000, help="item partitions registered first (100000)")
    parser.add_argument("--items", type=int, default=10_000, help="new items the sensor must discover (10000)")
    parser.add_argument("--quick", action="store_true", help="10000 partitions and 1000 items")
    parser.add_argument("--cap", type=int, default=100, help="STACCHIP_MAX_ITEMS_PER_TICK (100, the default)")
    parser.add_argument("--interval", type=int, default=5, help="STACCHIP_SENSOR_INTERVAL_SECONDS (5)")
    parser.add_argument("--materialized", type=int, default=1000, help="partitions marked materialized (1000)")
    parser.add_argument("--repeat", type=int, default=3, help="times each UI query is sent (3)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the sensor (3600)")
    parser.add_argument("--workdir", default=str(HERE / ".cache" / "scale"))
    parser.add_argument("--output", default=None, help="results JSON (default <workdir>/results[-quick].json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.partitions, args.items = 10_000, 1_000
    args.materialized = min(args.materialized, args.partitions)
    started = time.perf_counter()
    results = run(args)
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    results["command"] = " ".join(["python", "benchmarks/scale.py", *(argv if argv is not None else sys.argv[1:])])
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    output = Path(args.output) if args.output else Path(args.workdir) / ("results-quick.json" if args.quick else "results.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=1))
    print(json.dumps({k: v for k, v in results.items() if k != "ticks"}, indent=1))
    log(f"results written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
