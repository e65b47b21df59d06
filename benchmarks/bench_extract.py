#!/usr/bin/env python
"""Whole-item chip extraction: ours vs upstream stacchip's Chipper loop vs decoding each block once.

    python benchmarks/bench_extract.py [--workdir benchmarks/.cache] [--repeat 3] [--skip-upstream]

On the full-size Sentinel-2-like scene of ``bench_core.py`` (reused from ``<workdir>/scene``, built
there if missing), every chip the index keeps (1573 of the 42 x 42 chips of 256 px) is extracted for
5 assets (blue, green, red, nir at 10 m; scl at 20 m, upsampled to the chip):

- ``upstream_loop``: ``stacchip.chipper.Chipper(indexer, assets=...).chip(x, y)`` for every chip, in
  grid order, in the upstream venv (upstream opens every file for every chip and asset, so each
  512 px block of a 10 m band is decoded 4 times and each SCL block 16 times);
- ``ours``: :func:`stacchip_assets.training.iter_item_chips` over the same chips (one Chipper, a band
  of chip rows per ``Chipper.chips`` call), i.e. the extraction ``write_training_set`` runs; native
  dtypes, as upstream returns them;
- ``ours_f32``: the same plus copying every chip into float32 (n, C, H, W) shard buffers, i.e.
  ``write_training_set`` without the file writes (informational);
- ``raw_decode_once``: the floor: each asset opened once (``NUM_THREADS=ALL_CPUS``, as ours) and
  each block under a kept chip decoded once, one window per block row spanning the needed blocks;
  no chip assembly, no upsampling;
- ``*_1cpu``: ours and the floor with the process pinned to one CPU (``sched_setaffinity``), to
  compare per core.

Every measurement runs in a fresh subprocess (GDAL's block cache is per process), repeats round-robin
``--repeat`` times (default 5), median reported; ``ours`` and its floor run back to back in each round
and the median of the per-round ratios is reported too (robust to other work on a shared machine). The OS page cache is warmed first. Correctness (not timed): one
extra run per side hashes every chip of every asset in grid order (sha256); ours must equal upstream.
Targets: ours >= 4x upstream's chips/s, and ours <= 1.5x the decode-once time.
Results: printed, and written to ``<workdir>/results_extract.json``.

Runs under two interpreters (ours and the upstream venv): the top level stays stdlib-only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_core as core  # noqa: E402  (stdlib-only at import time, like this file)

ASSETS = list(core.ASSETS)  # blue, green, red, nir, scl
CHIP_SIZE = core.CHIP_SIZE
TARGET_SPEEDUP = 4.0
TARGET_OVER_FLOOR = 1.5


# =================================================================================================
# Workers (fresh subprocesses)
# =================================================================================================
def _positions(path: str) -> tuple[list[int], list[int]]:
    p = json.loads(Path(path).read_text())
    return p["x"], p["y"]


def _pin_one_cpu() -> None:
    cpu = sorted(os.sched_getaffinity(0))[0]
    os.sched_setaffinity(0, {cpu})


def _hashers():
    import hashlib

    return {k: hashlib.sha256() for k in ASSETS}


def worker_upstream(args) -> dict:
    from stacchip.chipper import Chipper
    from stacchip.indexer import Sentinel2Indexer

    xs, ys = _positions(args.positions)
    item = core._load_item(args.item, migrate=False)
    chipper = Chipper(Sentinel2Indexer(item, chip_size=CHIP_SIZE), assets=ASSETS)
    hashes = _hashers() if args.verify else None
    t0 = time.perf_counter()
    for x, y in zip(xs, ys):
        chip = chipper.chip(x, y)
        if hashes:
            for k in ASSETS:
                hashes[k].update(chip[k].tobytes())
    return {"seconds": time.perf_counter() - t0, "n_chips": len(xs),
            "sha256": {k: h.hexdigest() for k, h in hashes.items()} if hashes else None}


def worker_ours(args) -> dict:
    import numpy as np

    from stacchip_assets.index.chip_indexer import Sentinel2Indexer
    from stacchip_assets.index.chipper import Chipper
    from stacchip_assets.training.extract import batch_rows, iter_item_chips

    if args.mode.endswith("_1cpu"):
        _pin_one_cpu()
    xs, ys = _positions(args.positions)
    xs, ys = np.asarray(xs), np.asarray(ys)
    item = core._load_item(args.item, migrate=True)
    indexer = Sentinel2Indexer(item, chip_size=CHIP_SIZE)
    hashes = _hashers() if args.verify else None
    f32 = args.mode.startswith("ours_f32")
    shard = 128
    t0 = time.perf_counter()
    chipper = Chipper(indexer, assets=ASSETS)
    buf, filled, n = None, 0, 0
    for positions, pixels in iter_item_chips(chipper, xs, ys):
        n += len(positions)
        if f32:  # what write_training_set's shard sink does with each batch
            k = 0
            while k < len(positions):
                if buf is None:
                    buf, filled = np.empty((shard, len(ASSETS), CHIP_SIZE, CHIP_SIZE), np.float32), 0
                take = min(shard - filled, len(positions) - k)
                for c, key in enumerate(ASSETS):
                    np.copyto(buf[filled : filled + take, c : c + 1], pixels[key][k : k + take], casting="unsafe")
                filled += take
                k += take
                if filled == shard:
                    buf = None
        if hashes:
            order = np.argsort(positions)  # hash in the positions' (grid) order
            for key in ASSETS:
                for i in order:
                    hashes[key].update(pixels[key][i].tobytes())
    chipper.close()
    seconds = time.perf_counter() - t0
    with Chipper(indexer, assets=ASSETS) as again:
        rows = batch_rows(again, ASSETS)
    return {"seconds": seconds, "n_chips": int(n), "rows_per_batch": rows, "cpus": len(os.sched_getaffinity(0)),
            "sha256": {k: h.hexdigest() for k, h in hashes.items()} if hashes else None}


def worker_raw(args) -> dict:
    """Decode every block under a kept chip exactly once: per asset and block row, one window from
    the first to the last needed block of that row."""
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    if args.mode.endswith("_1cpu"):
        _pin_one_cpu()
    xs, ys = _positions(args.positions)
    xs, ys = np.asarray(xs), np.asarray(ys)
    item = core._load_item(args.item, migrate=False)
    t0 = time.perf_counter()
    blocks = 0
    for key in ASSETS:
        with rasterio.open(item.assets[key].href, NUM_THREADS="ALL_CPUS") as ds:
            factor = core.SIZE_10M // ds.width  # grid px per asset px (1 or 2)
            c = CHIP_SIZE // factor  # asset px per chip side
            bh, bw = ds.block_shapes[0]
            # blocks under each chip (a chip may straddle blocks in general)
            rows: dict[int, tuple[int, int]] = {}
            for x, y in zip(xs.tolist(), ys.tolist()):
                for br in range(y * c // bh, ((y + 1) * c - 1) // bh + 1):
                    lo, hi = x * c // bw, ((x + 1) * c - 1) // bw
                    a, b = rows.get(br, (lo, hi))
                    rows[br] = (min(a, lo), max(b, hi))
            for br, (lo, hi) in sorted(rows.items()):
                r0, c0 = br * bh, lo * bw
                ds.read(window=Window(c0, r0, min((hi + 1) * bw, ds.width) - c0, min(bh, ds.height - r0)))
                blocks += hi - lo + 1
    return {"seconds": time.perf_counter() - t0, "n_chips": int(len(xs)), "blocks_decoded": blocks,
            "cpus": len(os.sched_getaffinity(0))}


def run_worker(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="bench_extract.py _worker")
    p.add_argument("mode")
    p.add_argument("--item", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--positions", required=True)
    p.add_argument("--verify", action="store_true")
    args = p.parse_args(argv)
    if args.mode == "upstream_loop":
        res = worker_upstream(args)
    elif args.mode.startswith("ours"):
        res = worker_ours(args)
    else:
        res = worker_raw(args)
    res["chips_per_second"] = res["n_chips"] / res["seconds"]
    core._write_json(Path(args.out), res)


# =================================================================================================
# Orchestration
# =================================================================================================
def spawn(python, mode: str, item: Path, tmp: Path, positions: Path, env: dict, verify: bool = False) -> dict:
    import subprocess

    out = tmp / f"extract_{mode}{'_verify' if verify else ''}.json"
    out.unlink(missing_ok=True)
    cmd = [str(python), str(Path(__file__).resolve()), "_worker", mode, "--item", str(item), "--out", str(out),
           "--positions", str(positions)] + (["--verify"] if verify else [])
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp))
    if r.returncode != 0 or not out.exists():
        tail = (r.stderr or r.stdout or "").strip().splitlines()[-15:]
        return {"error": "\n".join(tail) or f"exit code {r.returncode}"}
    return json.loads(out.read_text())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default=str(HERE / ".cache"), help="cache + results folder (default benchmarks/.cache)")
    p.add_argument("--repeat", type=int, default=5, help="fresh-process runs per measurement; median reported")
    p.add_argument("--upstream-python", help="interpreter with stacchip 0.1.38 (skip the managed venv)")
    p.add_argument("--skip-upstream", action="store_true")
    p.add_argument("--no-verify", action="store_true", help="skip the (untimed) sha256 comparison of every chip")
    args = p.parse_args(argv)

    workdir = Path(args.workdir).resolve()
    tmp = workdir / "run"
    tmp.mkdir(parents=True, exist_ok=True)
    up_py, up_info = (None, "") if args.skip_upstream else core.ensure_upstream_venv(workdir, args.upstream_python)
    item = core.ensure_scene(workdir, 0)
    core.prewarm_page_cache(item)

    # The chips every side extracts: those our index keeps (identical to upstream's, bench_core checks it).
    sys.path.insert(0, str(core.REPO_ROOT))
    from stacchip_assets.index.chip_indexer import Sentinel2Indexer

    table = Sentinel2Indexer(core._load_item(str(item), migrate=True), chip_size=CHIP_SIZE).create_index()
    xs = [int(v) for v in table.column("chip_index_x").to_pylist()]
    ys = [int(v) for v in table.column("chip_index_y").to_pylist()]
    order = sorted(range(len(xs)), key=lambda i: (ys[i], xs[i]))
    xs, ys = [xs[i] for i in order], [ys[i] for i in order]
    positions = tmp / "extract_positions.json"
    core._write_json(positions, {"x": xs, "y": ys})
    core._log(f"{len(xs)} chips x {len(ASSETS)} assets")

    ours_env, up_env = core._ours_env(), core._upstream_env()
    specs = []
    if up_py:
        specs.append(("upstream_loop", up_py, up_env))
    # ours and its floor run back to back in every round, so a per-round ratio sees the same load
    specs += [(m, sys.executable, ours_env) for m in ("ours", "raw_decode_once", "ours_f32", "ours_1cpu", "raw_decode_once_1cpu")]
    runs: dict[str, list[dict]] = {m: [] for m, _, _ in specs}
    errors: dict[str, str] = {}
    load_before = core._loadavg()
    for i in range(args.repeat):
        for mode, py, env in specs:
            if mode in errors:
                continue
            res = spawn(py, mode, item, tmp, positions, env)
            if "error" in res:
                errors[mode] = res["error"]
                core._log(f"{mode}: FAILED\n{res['error']}")
                continue
            runs[mode].append(res)
            core._log(f"{mode} run {i + 1}/{args.repeat}: {res['seconds']:.3f} s")
    load_after = core._loadavg()

    m: dict[str, dict] = {}
    for mode, found in runs.items():
        if found:
            secs = [r["seconds"] for r in found]
            m[mode] = {**{k: v for k, v in found[-1].items() if k not in ("seconds", "sha256")},
                       "seconds": statistics.median(secs), "min_seconds": min(secs), "runs": secs}
            m[mode]["chips_per_second"] = m[mode]["n_chips"] / m[mode]["seconds"]
        elif mode in errors:
            m[mode] = {"error": errors[mode]}

    verify: dict = {}
    if not args.no_verify:
        ours_hash = spawn(sys.executable, "ours", item, tmp, positions, ours_env, verify=True).get("sha256")
        verify["ours"] = ours_hash
        if up_py:
            up_hash = spawn(up_py, "upstream_loop", item, tmp, positions, up_env, verify=True).get("sha256")
            verify["upstream"] = up_hash
            verify["equal"] = {k: bool(ours_hash and up_hash and ours_hash[k] == up_hash[k]) for k in ASSETS}

    def sec(k):
        return m.get(k, {}).get("seconds")

    def ratio(a, b):
        return a / b if a and b else None

    def paired(a, b):
        """Median over rounds of a/b, both measured in the same round (robust to slow load drifts)."""
        pairs = [x["seconds"] / y["seconds"] for x, y in zip(runs.get(a, []), runs.get(b, []))]
        return statistics.median(pairs) if pairs else None

    ratios = {
        "speedup_ours_over_upstream": ratio(sec("upstream_loop"), sec("ours")),
        "ours_over_decode_once": ratio(sec("ours"), sec("raw_decode_once")),
        "ours_f32_over_decode_once": ratio(sec("ours_f32"), sec("raw_decode_once")),
        "ours_1cpu_over_decode_once_1cpu": ratio(sec("ours_1cpu"), sec("raw_decode_once_1cpu")),
        "speedup_ours_1cpu_over_upstream": ratio(sec("upstream_loop"), sec("ours_1cpu")),
        "upstream_over_decode_once_1cpu": ratio(sec("upstream_loop"), sec("raw_decode_once_1cpu")),
        "ours_over_decode_once_paired_median": paired("ours", "raw_decode_once"),
        "ours_1cpu_over_decode_once_1cpu_paired_median": paired("ours_1cpu", "raw_decode_once_1cpu"),
        "speedup_ours_over_upstream_paired_median": (1 / paired("ours", "upstream_loop")) if paired("ours", "upstream_loop") else None,
    }
    targets = {
        "chips/s ours / upstream": (ratios["speedup_ours_over_upstream"], f">= {TARGET_SPEEDUP}x",
                                    None if ratios["speedup_ours_over_upstream"] is None else ratios["speedup_ours_over_upstream"] >= TARGET_SPEEDUP),
        "ours s / decode-once s": (ratios["ours_over_decode_once"], f"<= {TARGET_OVER_FLOOR}x",
                                   None if ratios["ours_over_decode_once"] is None else ratios["ours_over_decode_once"] <= TARGET_OVER_FLOOR),
        "ours s / decode-once s, one CPU (info)": (ratios["ours_1cpu_over_decode_once_1cpu"], f"<= {TARGET_OVER_FLOOR}x",
                                                   None if ratios["ours_1cpu_over_decode_once_1cpu"] is None else ratios["ours_1cpu_over_decode_once_1cpu"] <= TARGET_OVER_FLOOR),
    }
    results = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "machine": core.machine_info(up_info or "? ? ? ? ?"),
        "chips": len(xs), "assets": ASSETS, "chip_size": CHIP_SIZE, "repeat": args.repeat,
        "load_average_before_after": [load_before, load_after],
        "measurements": m, "ratios": ratios,
        "targets": {k: {"value": v, "target": t, "verdict": None if ok is None else ("PASS" if ok else "MISS")}
                    for k, (v, t, ok) in targets.items()},
        "verify": verify,
    }
    core._write_json(workdir / "results_extract.json", results)

    print()
    mi = results["machine"]
    print(f"machine: {mi.get('cpu', '?')}, nproc={mi['nproc']}, GDAL {mi['gdal']}, rasterio {mi['rasterio']}; "
          f"load average before {load_before}, after {load_after}")
    print(f"{len(xs)} chips of {CHIP_SIZE} px x {len(ASSETS)} assets; median of {args.repeat} fresh-process runs")
    print(f"{'measurement':28s} {'seconds':>9s} {'min':>9s} {'chips/s':>9s}")
    for key in ("upstream_loop", "ours", "ours_f32", "raw_decode_once", "ours_1cpu", "raw_decode_once_1cpu"):
        v = m.get(key)
        if not v:
            continue
        if "error" in v:
            print(f"{key:28s} ERROR {v['error'].splitlines()[-1][:70]}")
            continue
        extra = f"  blocks decoded {v['blocks_decoded']}" if "blocks_decoded" in v else ""
        extra += f"  rows/batch {v['rows_per_batch']}" if "rows_per_batch" in v else ""
        print(f"{key:28s} {v['seconds']:9.3f} {v['min_seconds']:9.3f} {v['chips_per_second']:9.1f}{extra}")
    print("\nratios:")
    for k, v in ratios.items():
        if v is not None:
            print(f"  {k:38s} {v:6.2f}x")
    print("\ntargets:")
    for k, t in results["targets"].items():
        val = "-" if t["value"] is None else f"{t['value']:.2f}x"
        print(f"  {k:40s} {val:>7s}  ({t['target']})  {t['verdict'] or 'NOT MEASURED'}")
    if verify.get("equal"):
        print(f"\nverify: every chip ours == upstream (sha256 per asset): {verify['equal']}")
    print(f"\nresults written to {workdir / 'results_extract.json'}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        run_worker(sys.argv[2:])
    else:
        sys.exit(main())
