"""End-to-end ingest throughput: the sensor-driven Dagster deployment against the bare library loop.

    python benchmarks/e2e_throughput.py                     # 2,000 items, static catalog and pgstac
    python benchmarks/e2e_throughput.py --items 400 --sources static

For each source (a static catalog, and pgstac behind stac-fastapi on a throwaway PostgreSQL), N items
(copies of the sample NAIP item, real COGs, asset hrefs to the sample's local files):

1. **Dagster**: a fresh $DAGSTER_HOME with the project's dagster.yaml (default run launcher: one
   process per run, at most 4 at once), a code location with the naip collection on that source, and
   `dagster-daemon run`. Timed from the first tick of stac_item_sensor to the moment the combined index
   holds every chip (`CombinedIndex.num_rows()` equals the bare loop's total). The sensor and the
   combined trigger run every `--interval` seconds (STACCHIP_SENSOR_INTERVAL_SECONDS,
   STACCHIP_COMBINED_INTERVAL_SECONDS); runs cover STACCHIP_BACKFILL_PARTITIONS_PER_RUN items (100).
2. **Bare loop**, in this process on the same items: `source.search`, `index_item` for each item,
   `CombinedIndex.update`: what the deployment orchestrates, without it.

Reported: seconds, items per hour both ways, and the overhead ratio (Dagster / bare). Results are
printed and written to `<workdir>/e2e-<time>.json`. Nothing is asserted (issue 14 asks for the ratio
within 2x at 2,000 items); run on an idle machine for figures you publish.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
NAIP = "naip"
NAIP_ITEM = "me_m_4406901_ne_19_060_20211006"

CODE_LOCATION = '''
import os
from stacchip_assets.dagster_defs import ChipSettingsResource, StacSourceResource, StorageResource, build_definitions
from stacchip_assets.dagster_defs.presets import load_collections

source = StacSourceResource(api_url=os.environ.get("BENCH_API") or None, catalog_path=os.environ.get("BENCH_CATALOG") or None,
                            allowed_local_roots=[os.environ["BENCH_ROOT"]], page_size=1000, timeout_seconds=60)
defs = build_definitions(collections=[c for c in load_collections() if c.collection == "naip"], resources={
    "stac_source": source, "storage": StorageResource(base=os.environ["BENCH_BASE"]),
    "chip_settings": ChipSettingsResource()})
'''


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def naip_items(sample: Path, count: int) -> list[dict]:
    """`count` copies of the sample NAIP item, asset hrefs absolute, `updated` increasing."""
    folder = sample.parent / NAIP / NAIP_ITEM
    template = json.loads((folder / f"{NAIP_ITEM}.json").read_text())
    for asset in template["assets"].values():
        if "://" not in asset["href"]:
            asset["href"] = str((folder / asset["href"]).resolve())
    items = []
    for n in range(count):
        updated = f"2025-03-01T{n // 3600:02d}:{n // 60 % 60:02d}:{n % 60:02d}.000000Z"
        items.append(dict(template, id=f"naip-copy-{n:05d}", collection=NAIP, links=[],
                          properties=dict(template["properties"], updated=updated)))
    return items


def write_static(sample: Path, items: list[dict], dest: Path) -> Path:
    """A static catalog of `items` (written as JSON, no pystac)."""
    collection = json.loads((sample.parent / NAIP / "collection.json").read_text())
    collection["links"] = [link for link in collection["links"] if link["rel"] not in ("item", "self")]
    (dest / NAIP).mkdir(parents=True)
    for item in items:
        (dest / NAIP / item["id"]).mkdir()
        (dest / NAIP / item["id"] / f"{item['id']}.json").write_text(json.dumps(item))
        collection["links"].append({"rel": "item", "href": f"./{item['id']}/{item['id']}.json"})
    (dest / NAIP / "collection.json").write_text(json.dumps(collection))
    (dest / "catalog.json").write_text(json.dumps({
        "type": "Catalog", "id": "bench", "stac_version": "1.0.0", "description": "e2e benchmark",
        "links": [{"rel": "child", "href": f"./{NAIP}/collection.json"}]}))
    return dest / "catalog.json"


def bare_loop(source_kwargs: dict, root: Path, base: Path) -> dict:
    """Index every item with the library and combine: the work without the orchestration."""
    from stacchip_assets.dagster_defs import ChipSettingsResource
    from stacchip_assets.dagster_defs.presets import load_collections
    from stacchip_assets.index.combined import CombinedIndex
    from stacchip_assets.index.item_index import index_item
    from stacchip_assets.io.local_files import HrefPolicy
    from stacchip_assets.io.stac_source import open_source
    from stacchip_assets.io.storage import Storage

    config = next(c for c in load_collections() if c.collection == NAIP)
    settings = ChipSettingsResource().for_collection(config)
    policy = HrefPolicy(local_roots=(str(root),))
    started = time.perf_counter()
    source = open_source(**source_kwargs)
    items = source.search(NAIP, dataclasses.replace(config.search, max_items=None))  # all, as the sensor
    storage = Storage.from_uri(str(base))
    chips = sum(index_item(item, storage, settings, collection=NAIP, href_policy=policy).chips_kept for item in items)
    CombinedIndex(storage).update([(NAIP, item.id) for item in items])
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "items": len(items), "chips": chips,
            "combined_rows": CombinedIndex(storage).num_rows()}


@contextmanager
def process(command: list[str], env: dict, log_path: Path, cwd: Path):
    from tests.support.servers import stop_process_group

    with open(log_path, "wb") as out:
        proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield proc
        finally:
            stop_process_group(proc, timeout=30)


def first_tick(instance, sensor: str = "stac_item_sensor") -> float | None:
    """Timestamp of the sensor's first tick on this instance, if any."""
    for state in instance.all_instigator_state():
        if state.name == sensor:
            ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1000)
            return min((t.timestamp for t in ticks), default=None)
    return None


def dagster_run(source_env: dict, root: Path, run_dir: Path, expected_rows: int, args) -> dict:
    """The deployment on a fresh Dagster home: daemon start to the combined index holding every chip."""
    import dagster as dg

    from stacchip_assets.index.combined import CombinedIndex
    from stacchip_assets.io.storage import Storage

    home, project, base = run_dir / "home", run_dir / "project", run_dir / "dagster-base"
    home.mkdir()
    project.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    (project / "bench_defs.py").write_text(CODE_LOCATION)
    (project / "workspace.yaml").write_text(
        f"load_from:\n  - python_file:\n      relative_path: bench_defs.py\n      working_directory: {project}\n")
    env = dict(os.environ, DAGSTER_HOME=str(home), BENCH_ROOT=str(root), BENCH_BASE=str(base),
               STACCHIP_SENSOR_INTERVAL_SECONDS=str(args.interval), STACCHIP_COMBINED_INTERVAL_SECONDS=str(args.interval),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), **source_env)
    env.pop("DAGSTER_IS_DEV_CLI", None)
    with dg.DagsterInstance.from_config(str(home)) as instance, \
            process(["dagster-daemon", "run", "-w", str(project / "workspace.yaml"), "--log-level", "warning"],
                    env, run_dir / "daemon.log", project) as daemon:
        started = time.time()
        deadline = time.monotonic() + args.timeout
        rows = 0
        while time.monotonic() < deadline:
            if daemon.poll() is not None:
                raise RuntimeError(f"dagster-daemon exited: {(run_dir / 'daemon.log').read_text()[-3000:]}")
            try:
                rows = CombinedIndex(Storage.from_uri(str(base))).num_rows() if (base / "combined").exists() else 0
            except Exception:  # noqa: BLE001 - mid-update
                rows = rows
            if rows >= expected_rows:
                break
            time.sleep(1.0)
        ended = time.time()
        tick = first_tick(instance) or started
        runs = instance.get_runs()
        statuses = {}
        for run in runs:
            statuses[run.status.value] = statuses.get(run.status.value, 0) + 1
    return {"seconds": round(ended - tick, 2), "daemon_start_to_first_tick_seconds": round(tick - started, 2),
            "combined_rows": rows, "complete": rows >= expected_rows, "runs": statuses}


def bench_source(kind: str, sample: Path, items: list[dict], work: Path, stack: ExitStack, args) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=work))
    root = sample.parent.resolve()
    if kind == "static":
        catalog = write_static(sample, items, run_dir / "catalog")
        source_kwargs, source_env = {"catalog_path": str(catalog)}, {"BENCH_CATALOG": str(catalog)}
    else:
        from tests.support.servers import collection_json, load_items, pgstac_api

        api = stack.enter_context(pgstac_api())
        api.delete_collection(NAIP)
        api.create_collection(collection_json(sample, NAIP, NAIP))
        load_items(api, items, run_dir / "ndjson")
        source_kwargs, source_env = {"api_url": api.url, "page_size": 1000}, {"BENCH_API": api.url}
    log(f"{kind}: {len(items)} items ready; bare library loop ...")
    bare = bare_loop(source_kwargs, root, run_dir / "bare-base")
    log(f"{kind}: bare loop {bare}; Dagster ...")
    dagster = dagster_run(source_env, root, run_dir, bare["combined_rows"], args)
    log(f"{kind}: Dagster {dagster}")
    per_hour = {name: round(len(items) * 3600 / r["seconds"]) for name, r in (("bare", bare), ("dagster", dagster))}
    return {"bare": bare, "dagster": dagster, "items_per_hour": per_hour,
            "overhead_ratio": round(dagster["seconds"] / bare["seconds"], 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--sources", default="static,pgstac", help="comma-separated: static, pgstac")
    parser.add_argument("--interval", type=int, default=5, help="seconds between sensor ticks (both sensors)")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--workdir", default=str(REPO / "benchmarks" / ".cache" / "e2e"))
    args = parser.parse_args(argv)
    from stacchip_assets.demo.sample_data import ensure_sample_catalog

    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    sample = ensure_sample_catalog(work / "sample")
    items = naip_items(sample, args.items)
    load = os.getloadavg()
    results: dict = {"items": args.items, "interval_seconds": args.interval, "load_before": load,
                     "partitions_per_run": os.environ.get("STACCHIP_BACKFILL_PARTITIONS_PER_RUN", "100"),
                     "cpus": os.cpu_count()}
    with ExitStack() as stack:
        for kind in [s.strip() for s in args.sources.split(",") if s.strip()]:
            results[kind] = bench_source(kind, sample, items, work, stack, args)
    results["load_after"] = os.getloadavg()
    out = work / f"e2e-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    log(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
