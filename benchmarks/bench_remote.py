#!/usr/bin/env python
"""Remote COGs: stacchip_assets vs upstream stacchip 0.1.38 over HTTP and S3 with added latency.

    python benchmarks/bench_remote.py [--latency-ms 20] [--bandwidth-mbps 0] [--chips 60] [--repeat 3]
                                      [--iter-chips 120] [--no-s3] [--quick]

The full-size S2-like scene of ``bench_core.py`` (and its upstream venv, cached in .cache) is served

- over HTTP by a Range-capable server in its own process (``_serve``) that waits ``--latency-ms``
  before answering every request, optionally paces all bodies through one link of
  ``--bandwidth-mbps``, and counts requests and body bytes (``GET /__stats__``, ``/__reset__``). It
  answers as a static server does (listen backlog 256, TCP_NODELAY, bodies by ``sendfile``, each answer
  prepared before its wait), because it shares the client's cores;
- over S3 by SeaweedFS (``weed mini``, as the tests start it) behind the same server in proxy mode
  (same latency, same counters; the ``Host`` header is forwarded, so SigV4 signatures hold).

Cases (fresh processes, ``--repeat`` times round-robin, medians; chips are random valid rows of the
index, 5 assets each): ``index`` (create_index, SCL read remotely), ``chip1`` (``chip(x, y)`` one by
one), ``chips`` (one ``chips(xs, ys)`` call; upstream has none), ``iter`` (``--iter-chips`` consecutive
index rows: ``for x, y, px in chipper``; upstream: ``chip()`` on them), ``extract`` (every chip of the
item through ``training.iter_item_chips``, ours, remote vs local files).

Per case: seconds, CPU seconds, chips/s, requests and bytes seen by the server, the ratio to upstream
and, for ours, the bound ``requests / in_flight x latency + bytes / bandwidth + local time`` (local: the
same case on local files). With the load average; written to ``.cache/results_remote.json``.

``--quick``: 20 chips, 40 iterated, 1 repeat, HTTP only. Runs under two interpreters: stdlib-only top level.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import http.server
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_core as core  # noqa: E402  (stdlib-only at import time)

ASSETS = list(core.ASSETS)
IN_FLIGHT = 32  # RemoteReadConfig.max_in_flight default (the bound's concurrency)


# =================================================================================================
# The server: a directory or a reverse proxy, with latency, a bandwidth cap and counters
# =================================================================================================
class _Link:
    """Per-request latency, one shared link of `bandwidth` bytes/s, request and byte counters."""

    def __init__(self, latency: float, bandwidth: float) -> None:
        self.latency, self.bandwidth = latency, bandwidth
        self.lock = threading.Lock()
        self.next_free, self.requests, self.bytes = 0.0, 0, 0

    def before_answer(self, nbytes: int) -> None:
        with self.lock:
            self.requests += 1
            self.bytes += nbytes
        delay = self.latency
        if self.bandwidth > 0:
            with self.lock:
                start = max(time.monotonic() + self.latency, self.next_free)
                self.next_free = start + nbytes / self.bandwidth
                delay = self.next_free - time.monotonic()
        if delay > 0:
            time.sleep(delay)


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves files of `root` with Range, or forwards to `upstream`; `link` adds latency and counts."""

    protocol_version = "HTTP/1.1"
    # As object stores and nginx do: without TCP_NODELAY a small body written after the headers waits
    # for the client's delayed ACK (40 ms on Linux), which made every small range cost ~65 ms.
    disable_nagle_algorithm = True
    link: _Link
    root: str | None = None
    upstream: str | None = None
    local = threading.local()  # one upstream connection per server thread

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: bytes, headers=(), length: int | None = None, *, counted: int | None = None,
              file=None, start: int = 0) -> None:
        """Answer; with `counted`, count those body bytes and wait the link's latency first. Everything
        is prepared before the wait, so a woken thread only writes (a store answers many at once)."""
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self._headers_buffer.append(b"\r\n")  # end_headers() without its flush: headers and body in one write
        head = b"".join(self._headers_buffer)
        self._headers_buffer = []
        data = head + body if self.command != "HEAD" else head
        if counted is not None:
            self.link.before_answer(counted)
        self.wfile.write(data)
        if file is not None and self.command != "HEAD":  # the body from the page cache by the kernel
            self.connection.sendfile(file, start, length)

    def _control(self) -> bool:
        link = self.link
        if self.path == "/__stats__":
            body = json.dumps({"requests": link.requests, "bytes": link.bytes}).encode()
        elif self.path == "/__reset__":
            with link.lock:
                link.requests = link.bytes = 0
            body = b"{}"
        else:
            return False
        self._send(200, body, [("Content-Type", "application/json")])
        return True

    def do_GET(self):
        if not self._control():
            self._proxy() if self.upstream else self._file()

    do_HEAD = do_GET

    def do_PUT(self):
        self._proxy()

    do_POST = do_DELETE = do_PUT

    def _file(self):
        path = os.path.join(self.root, self.path.split("?", 1)[0].lstrip("/"))
        if ".." in self.path or not os.path.isfile(path):
            return self._send(404, b"not found", counted=0)
        size = os.path.getsize(path)
        m = re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("Range", ""))
        start, end = (int(m.group(1)), min(int(m.group(2) or size - 1), size - 1)) if m else (0, size - 1)
        if start >= size:
            return self._send(416, b"", [("Content-Range", f"bytes */{size}")], counted=0)
        length = end - start + 1
        headers = [("Accept-Ranges", "bytes"), ("Content-Type", "image/tiff")]
        if m:
            headers.append(("Content-Range", f"bytes {start}-{end}/{size}"))
        with open(path, "rb") as f:  # sent by the kernel (sendfile), as static servers do; HEAD: none counted
            self._send(206 if m else 200, b"", headers, length=length,
                       counted=length if self.command != "HEAD" else 0, file=f, start=start)

    def _forward(self, payload):
        host = self.upstream.split("://", 1)[1]
        for attempt in range(2):  # a kept-alive upstream connection may have been closed
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = self.local.conn = http.client.HTTPConnection(host, timeout=120)
            try:
                conn.request(self.command, self.path, body=payload, headers=dict(self.headers.items()))
                answer = conn.getresponse()
                return answer, answer.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self.local.conn = None
                if attempt:
                    raise

    def _proxy(self):
        length = int(self.headers.get("Content-Length") or 0)
        answer, body = self._forward(self.rfile.read(length) if length else None)
        skip = {"content-length", "transfer-encoding", "connection", "keep-alive"}
        self._send(answer.status, body, [(k, v) for k, v in answer.getheaders() if k.lower() not in skip],
                   counted=len(body))


class _ThreadingServer(http.server.ThreadingHTTPServer):
    # The listen backlog is set in __init__ (socketserver's default is 5): with 32 connections opened
    # at once, the SYNs beyond the backlog were dropped and those connections waited 1 s to retry.
    request_queue_size = 256
    daemon_threads = True


def serve(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="bench_remote.py _serve")
    p.add_argument("--root")
    p.add_argument("--upstream")
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--bandwidth-mbps", type=float, default=0.0)
    a = p.parse_args(argv)
    link = _Link(a.latency_ms / 1000.0, a.bandwidth_mbps * 1e6 / 8)
    handler = type("Handler", (_Handler,), {"link": link, "root": a.root, "upstream": a.upstream})
    server = _ThreadingServer(("127.0.0.1", 0), handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


class Server:
    """A `_serve` child process (its own session); `.url`, `.stats()`, `.reset()`, `.stop()`."""

    def __init__(self, *, root=None, upstream=None, latency_ms=0.0, bandwidth_mbps=0.0) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "_serve", "--latency-ms", str(latency_ms),
               "--bandwidth-mbps", str(bandwidth_mbps)]
        cmd += ["--root", str(root)] if root else ["--upstream", upstream]
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
        self.url = f"http://127.0.0.1:{int(self.process.stdout.readline())}"

    def _get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def stats(self) -> dict:
        return self._get("/__stats__")

    def reset(self) -> None:
        self._get("/__reset__")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        self.process.stdout.close()


# =================================================================================================
# Workers (fresh processes)
# =================================================================================================
def _digest(h, chip: dict) -> None:
    import numpy as np

    for k in ASSETS:
        h.update(np.ascontiguousarray(chip[k]).tobytes())


def _indexer(item_path: str, upstream: bool):
    if upstream:
        from stacchip.indexer import Sentinel2Indexer
    else:
        from stacchip_assets.indexer import Sentinel2Indexer
    return Sentinel2Indexer(core._load_item(item_path, migrate=not upstream), chip_size=core.CHIP_SIZE,
                            chip_max_nodata=0.5)


def worker(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="bench_remote.py _worker")
    p.add_argument("case")  # index | chip1 | chips | iter | extract
    p.add_argument("--item", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--positions")
    p.add_argument("--upstream", action="store_true")
    a = p.parse_args(argv)
    pos = json.loads(Path(a.positions).read_text()) if a.positions else {}
    res: dict = {}
    h = hashlib.sha256()
    cpu0 = time.process_time()  # CPU seconds of all threads: the work, whatever the machine's load
    if a.case == "index":
        # The library is imported and the item loaded before the clock starts, for both packages
        # (what a process indexing many items pays once); the import is reported on its own.
        t0 = time.perf_counter()
        indexer = _indexer(a.item, a.upstream)
        res["import_seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        table = indexer.create_index()
        res["seconds"] = time.perf_counter() - t0
        res["rows"] = table.num_rows
    else:
        chipper_mod = __import__("stacchip.chipper" if a.upstream else "stacchip_assets.chipper", fromlist=["Chipper"])
        indexer = _indexer(a.item, a.upstream)
        key = "iter" if a.case == "iter" else "random"
        xs, ys = pos[key]["x"], pos[key]["y"]
        if a.case == "iter" and not a.upstream:  # the index restricted to these rows, built before timing
            import pyarrow as pa

            indexer.index = pa.table({"chip_index_x": xs, "chip_index_y": ys})
        t0 = time.perf_counter()
        chipper = chipper_mod.Chipper(indexer, assets=ASSETS)
        if a.case == "chip1" or (a.case == "iter" and a.upstream):
            for x, y in zip(xs, ys):
                _digest(h, chipper.chip(x, y))
        elif a.case == "chips":
            out = chipper.chips(xs, ys)
            for i in range(len(xs)):
                _digest(h, {k: v[i] for k, v in out.items()})
        elif a.case == "iter":
            for _, _, px in chipper:
                _digest(h, px)
        elif a.case == "extract":
            import numpy as np

            from stacchip_assets.training.extract import iter_item_chips

            n = 0
            for positions, _pixels in iter_item_chips(chipper, np.asarray(xs), np.asarray(ys)):
                n += len(positions)
            assert n == len(xs)
        res["seconds"] = time.perf_counter() - t0
        res["n_chips"] = len(xs)
        res["sha256"] = h.hexdigest() if a.case != "extract" else None
    res["cpu_seconds"] = time.process_time() - cpu0
    core._write_json(Path(a.out), res)


# =================================================================================================
# Orchestration
# =================================================================================================
def _spawn(python, case, item, tmp, env, upstream=False, positions=None) -> dict:
    out = tmp / f"r_{case}_{os.getpid()}.json"
    out.unlink(missing_ok=True)
    cmd = [str(python), str(Path(__file__).resolve()), "_worker", case, "--item", str(item), "--out", str(out)]
    cmd += (["--upstream"] if upstream else []) + (["--positions", str(positions)] if positions else [])
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp))
    if r.returncode or not out.exists():
        return {"error": "\n".join((r.stderr or r.stdout).strip().splitlines()[-12:])}
    return json.loads(out.read_text())


def _remote_item(item: Path, base: str, dest: Path) -> Path:
    d = json.loads(item.read_text())
    for _key, asset in d["assets"].items():
        asset["href"] = f"{base}/{Path(asset['href']).name}"
    dest.write_text(json.dumps(d))
    return dest


def _start_s3(scene: Path, tmp: Path):
    """SeaweedFS with the scene in bucket `bench`; returns (context manager stack, endpoint, keys)."""
    sys.path.insert(0, str(core.REPO_ROOT))
    import contextlib

    from tests.support.servers import seaweedfs

    stack = contextlib.ExitStack()
    folder = Path(tempfile.mkdtemp(prefix="weed-", dir=tmp))  # a fresh data folder per run
    stack.callback(shutil.rmtree, folder, ignore_errors=True)
    s3 = stack.enter_context(seaweedfs(folder / "data"))
    client = s3.client()
    client.create_bucket(Bucket="bench")
    for k in ASSETS:
        client.upload_file(str(scene / f"{k}.tif"), "bench", f"scene/{k}.tif")
    return stack, s3


def run_target(name, item_remote, item_local, server, args, up_py, tmp, env_ours, env_up, pos_path) -> dict:
    """All cases against one server (HTTP or S3 proxy), round-robin repeats, medians."""
    specs = [("index", True), ("index", False), ("chip1", True), ("chip1", False), ("chips", False),
             ("iter", True), ("iter", False)]
    if up_py is None:
        specs = [s for s in specs if not s[1]]
    runs: dict = {}
    for rep in range(args.repeat):
        for case, upstream in specs:
            key = f"{'upstream' if upstream else 'ours'}_{case}"
            server.reset()
            res = _spawn(up_py if upstream else sys.executable, case, item_remote, tmp,
                         env_up if upstream else env_ours, upstream, pos_path)
            res.update(server.stats())
            runs.setdefault(key, []).append(res)
            core._log(f"{name} {key} run {rep + 1}: " + (f"{res['seconds']:.3f} s, {res['requests']} requests, "
                      f"{res['bytes'] / 1e6:.1f} MB" if "seconds" in res else f"FAILED {res['error']}"))
    local: dict = {}
    for case in ("index", "chips", "iter", "chip1"):  # ours on local files: the decode-time term
        secs = [_spawn(sys.executable, case, item_local, tmp, env_ours, False, pos_path).get("seconds")
                for _ in range(args.repeat)]
        secs = [s for s in secs if s is not None]
        local[case] = statistics.median(secs) if secs else None
    return {"runs": runs, "local_seconds": local}


def summarise(result: dict, latency: float, bandwidth: float) -> dict:
    rows = {}
    runs, local = result["runs"], result["local_seconds"]
    for key, rs in runs.items():
        good = [r for r in rs if "seconds" in r]
        if not good:
            rows[key] = {"error": rs[-1].get("error")}
            continue
        sec = statistics.median(r["seconds"] for r in good)
        row = {"seconds": sec, "requests": statistics.median(r["requests"] for r in good),
               "mbytes": statistics.median(r["bytes"] for r in good) / 1e6, "runs": [r["seconds"] for r in good],
               "sha256": good[-1].get("sha256"), "cpu_seconds": statistics.median(r.get("cpu_seconds", 0) for r in good)}
        if "import_seconds" in good[-1]:
            row["import_seconds"] = statistics.median(r["import_seconds"] for r in good)
        if "n_chips" in good[-1]:
            row["chips_per_second"] = good[-1]["n_chips"] / sec
        case = key.split("_", 1)[1]
        if key.startswith("ours") and local.get(case) is not None:
            bound = row["requests"] / IN_FLIGHT * latency + (row["mbytes"] * 1e6 / bandwidth if bandwidth else 0)
            row["bound_seconds"] = bound + local[case]
            row["local_seconds"] = local[case]
            row["over_bound"] = sec / row["bound_seconds"]
        rows[key] = row
    for case, base in (("index", "upstream_index"), ("chip1", "upstream_chip1"), ("chips", "upstream_chip1"),
                       ("iter", "upstream_iter")):
        o, u = rows.get(f"ours_{case}", {}), rows.get(base, {})
        if "seconds" in o and "seconds" in u:
            o["vs_upstream"] = (u["seconds"] / o["seconds"] if case == "index"
                                else o["chips_per_second"] / u["chips_per_second"])
    for case in ("chip1", "iter"):
        o, u = rows.get(f"ours_{case}", {}), rows.get(f"upstream_{case}", {})
        if o.get("sha256") and u.get("sha256"):
            o["pixels_equal_upstream"] = o["sha256"] == u["sha256"]
    o = rows.get("ours_extract", {})
    if "seconds" in o and local.get("extract"):
        o["fraction_of_local"] = local["extract"] / o["seconds"]
    return rows


def _fmt(rows: dict, name: str) -> str:
    lines = [f"\n{name}", f"{'case':<18}{'s':>8}{'cpu s':>7}{'chips/s':>9}{'req':>7}{'MB':>7}{'bound s':>9}{'x bound':>8}"
                           f"{'vs up':>8}"]
    for key, r in rows.items():
        if "error" in r:
            lines.append(f"{key:<18} FAILED: {r['error'][-200:]}")
            continue
        f = lambda v, p=2: "" if v is None else f"{v:.{p}f}"  # noqa: E731
        lines.append(f"{key:<18}{f(r['seconds'], 3):>8}{f(r.get('cpu_seconds')):>7}{f(r.get('chips_per_second'), 1):>9}"
                     f"{r['requests']:>7.0f}"
                     f"{r['mbytes']:>7.1f}{f(r.get('bound_seconds'), 3):>9}{f(r.get('over_bound')):>8}"
                     f"{f(r.get('vs_upstream'), 1):>8}" + (f"  ({r['fraction_of_local']:.0%} of local)"
                                                          if "fraction_of_local" in r else "")
                     + (f"  (import + item {r['import_seconds']:.2f} s, untimed)" if "import_seconds" in r else "")
                     + {True: "  pixels == upstream", False: "  PIXELS DIFFER"}.get(r.get("pixels_equal_upstream"), ""))
    return "\n".join(lines)


def _positions(item: Path, tmp: Path, n: int, n_iter: int, seed: int) -> Path:
    """Random rows of our local index (valid chips), a contiguous slice of it, and all of it."""
    import numpy as np

    sys.path.insert(0, str(core.REPO_ROOT))
    from stacchip_assets.indexer import Sentinel2Indexer

    table = Sentinel2Indexer(core._load_item(str(item), migrate=True), chip_size=core.CHIP_SIZE,
                             chip_max_nodata=0.5).create_index()
    xs = table.column("chip_index_x").to_numpy().astype(int)
    ys = table.column("chip_index_y").to_numpy().astype(int)
    pick = np.random.default_rng(seed).choice(len(xs), size=min(n, len(xs)), replace=False)
    start = max(0, len(xs) // 2 - n_iter // 2)
    path = tmp / "remote_positions.json"
    core._write_json(path, {"random": {"x": xs[pick].tolist(), "y": ys[pick].tolist()},
                            "iter": {"x": xs[start:start + n_iter].tolist(), "y": ys[start:start + n_iter].tolist()},
                            "all": {"x": xs.tolist(), "y": ys.tolist()}})
    return path


def _target(name, item, tmp, args, env_ours, env_up):
    """(exit stack, latency server, remote item JSON, env ours, env upstream) of "http" or "s3"."""
    if name == "http":
        server = Server(root=item.parent, latency_ms=args.latency_ms, bandwidth_mbps=args.bandwidth_mbps)
        return None, server, _remote_item(item, server.url, tmp / "item_http.json"), env_ours, env_up
    stack, s3 = _start_s3(item.parent, tmp)
    server = Server(upstream=s3.endpoint, latency_ms=args.latency_ms, bandwidth_mbps=args.bandwidth_mbps)
    s3env = {"AWS_S3_ENDPOINT": server.url.split("://")[1], "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE",
             "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key, "AWS_REGION": "us-east-1"}
    remote = _remote_item(item, "s3://bench/scene", tmp / "item_s3.json")
    return stack, server, remote, dict(env_ours, **s3env), dict(env_up, **s3env)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default=str(HERE / ".cache"))
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--bandwidth-mbps", type=float, default=0.0, help="shared link cap (0: none)")
    p.add_argument("--chips", type=int, default=60)
    p.add_argument("--iter-chips", type=int, default=120)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-s3", action="store_true")
    p.add_argument("--no-http", action="store_true")
    p.add_argument("--skip-upstream", action="store_true")
    p.add_argument("--quick", action="store_true", help="20 chips, 40 iterated, 1 repeat, HTTP only")
    args = p.parse_args(argv)
    if args.quick:
        args.chips, args.iter_chips, args.repeat, args.no_s3 = 20, 40, 1, True
    workdir = Path(args.workdir).resolve()
    tmp = workdir / "run_remote"
    tmp.mkdir(parents=True, exist_ok=True)
    up_py = None if args.skip_upstream else core.ensure_upstream_venv(workdir, None)[0]
    item = core.ensure_scene(workdir, 0)
    core.prewarm_page_cache(item)
    pos_path = _positions(item, tmp, args.chips, args.iter_chips, args.seed)
    extract_pos = tmp / "remote_positions_extract.json"  # the whole-item extraction: every chip of the index
    allpos = json.loads(pos_path.read_text())
    core._write_json(extract_pos, {"random": allpos["all"], "iter": allpos["iter"]})
    env_ours, env_up = core._ours_env(), core._upstream_env()
    latency, bandwidth = args.latency_ms / 1000.0, args.bandwidth_mbps * 1e6 / 8
    results: dict = {"args": vars(args), "load_before": core._loadavg(), "targets": {}}
    for name in [t for t, skip in (("http", args.no_http), ("s3", args.no_s3)) if not skip]:
        stack, server, remote, env_o, env_u = _target(name, item, tmp, args, env_ours, env_up)
        try:
            result = run_target(name, remote, item, server, args, up_py, tmp, env_o, env_u, pos_path)
            ex = []
            for rep in range(args.repeat):
                server.reset()
                ex.append(_spawn(sys.executable, "extract", remote, tmp, env_o, False, extract_pos))
                ex[-1].update(server.stats())
                core._log(f"{name} ours_extract run {rep + 1}: {ex[-1].get('seconds', ex[-1].get('error'))}")
            result["runs"]["ours_extract"] = ex
            result["local_seconds"]["extract"] = statistics.median(
                _spawn(sys.executable, "extract", item, tmp, env_ours, False, extract_pos)["seconds"]
                for _ in range(args.repeat))
        finally:
            server.stop()
            if stack is not None:
                stack.close()
        rows = summarise(result, latency, bandwidth)
        results["targets"][name] = {"rows": rows, "local_seconds": result["local_seconds"]}
        print(_fmt(rows, f"{name.upper()} at {args.latency_ms:g} ms" +
                   (f", {args.bandwidth_mbps:g} Mbit/s" if args.bandwidth_mbps else "")))
    results["load_after"] = core._loadavg()
    print(f"\nload average before {results['load_before']}, after {results['load_after']}; "
          f"bound = requests / {IN_FLIGHT} x latency + bytes / bandwidth + ours on local files")
    core._write_json(workdir / "results_remote.json", results)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_serve":
        serve(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "_worker":
        worker(sys.argv[2:])
    else:
        sys.exit(main())
