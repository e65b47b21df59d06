#!/usr/bin/env python
"""Core benchmark: stacchip_assets vs upstream stacchip 0.1.38, on the same local files.

    python benchmarks/bench_core.py [--workdir DIR] [--chips 200] [--seed 0] [--repeat 3]

One run:

1. makes sure ``DIR/venv-upstream`` exists with ``stacchip==0.1.38`` (upstream pins numpy<2, and
   pyarrow 26 needs numpy>=2, so upstream lives in its own venv; ``--upstream-python`` points at
   another interpreter that already has stacchip instead);
2. builds, once (cached under ``DIR/scene`` with a marker file), a full-size Sentinel-2-like scene:
   four 10 m uint16 COGs (blue, green, red, nir, 10980 x 10980 px) and a 20 m uint8 SCL COG
   (5490 x 5490 px), all 512 px tiles, DEFLATE, with overviews, EPSG:32631, plus a STAC item JSON;
3. times, each measurement in a fresh subprocess with ``time.perf_counter`` around the measured call
   only: the chip index (upstream / ours / raw-rasterio lower bound) and reading N random chips of
   the 5 assets (upstream / ours one by one / ours batched, if a batch method exists / raw lower
   bound);
4. prints a table and writes ``DIR/results.json`` (seconds, ratios, targets marked PASS/MISS; a
   miss does not fail the script).

About ``proj:epsg``: pystac >= 1.12 migrates projection v1.1 items on read (``proj:epsg`` becomes
``proj:code``, extension v2.0). Upstream only reads ``proj:epsg`` / ``proj:wkt2`` and raises
"Could not identify CRS" on a migrated item, so the upstream workers load the item with
``pystac.Item.from_dict(d, migrate=False)``. Our workers load it the ordinary way
(``pystac.Item.from_file``), i.e. they get the migrated ``proj:code`` item a user would get.

This file runs under two interpreters (the main one and the upstream venv): keep its top level
stdlib-only; numpy / rasterio / pystac are imported inside functions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent

# --- scene layout -------------------------------------------------------------------------------
SCENE_VERSION = 4  # bump when the generator changes: forces a rebuild of a cached scene
EPSG = 32631
ORIGIN_X, ORIGIN_Y = 399960.0, 5500020.0
SIZE_10M = 10980
SIZE_20M = 5490
BLOCK = 512
BANDS = ("blue", "green", "red", "nir")
ASSETS = BANDS + ("scl",)
ITEM_ID = "S2X_31UDQ_20240601_0_L2A_BENCH"
CHIP_SIZE = 256
SCL_CLOUD = (1, 3, 8, 9, 10)
SCL_NODATA = 0

TARGET_INDEX_SPEEDUP = 10.0
TARGET_CHIPS_SPEEDUP = 1.8

# Names we look for on our Chipper for a batch read (first one found wins).
BATCH_CANDIDATES = (
    "chips",
    "chip_many",
    "chips_batch",
    "read_chips",
    "chip_batch",
    "batch",
    "get_chips",
    "iter_chips",
)


# =================================================================================================
# Helpers usable in both interpreters
# =================================================================================================
def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _write_json(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


# =================================================================================================
# 1. Upstream venv
# =================================================================================================
UPSTREAM_CHECK = (
    "import stacchip, stacchip.indexer, stacchip.chipper, importlib.metadata as m, rasterio, numpy, pyarrow;"
    "print(m.version('stacchip'), rasterio.__version__, rasterio.__gdal_version__, numpy.__version__,"
    " pyarrow.__version__)"
)


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _check_upstream(python: Path) -> str | None:
    if not python.exists():
        return None
    r = subprocess.run([str(python), "-c", UPSTREAM_CHECK], capture_output=True, text=True)
    if r.returncode != 0:
        return None
    return r.stdout.strip()


def ensure_upstream_venv(workdir: Path, upstream_python: str | None) -> tuple[Path, str]:
    if upstream_python:
        py = Path(upstream_python)
        info = _check_upstream(py)
        if info is None:
            raise SystemExit(f"--upstream-python {py} cannot import stacchip")
        return py, info
    venv = workdir / "venv-upstream"
    py = _venv_python(venv)
    info = _check_upstream(py)
    if info is not None and info.split()[0] == "0.1.38":
        _log(f"reusing {venv} (stacchip, rasterio, GDAL, numpy, pyarrow = {info})")
        return py, info
    if venv.exists():
        _log(f"{venv} exists but does not import stacchip 0.1.38: recreating it")
        shutil.rmtree(venv)
    _log(f"creating {venv} (python -m venv + pip install stacchip==0.1.38 'pyarrow<26')")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    r = subprocess.run(pip + ["stacchip==0.1.38", "pyarrow<26"], capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stdout + r.stderr)
        raise SystemExit(f"pip install into {venv} failed (exit {r.returncode})")
    info = _check_upstream(py)
    if info is None:
        raise SystemExit(f"{venv}: stacchip still does not import after pip install")
    _log(f"venv ready in {time.perf_counter() - t0:.0f} s ({info})")
    return py, info


# =================================================================================================
# 2. The scene
# =================================================================================================
def _transform_list(res: float) -> list[float]:
    return [res, 0.0, ORIGIN_X, 0.0, -res, ORIGIN_Y]


def _smooth(a, passes: int = 3):
    """Cheap separable box blur with wrap-around (for low-res random fields)."""
    import numpy as np

    for _ in range(passes):
        a = (a + np.roll(a, 1, 0) + np.roll(a, -1, 0)) / 3.0
        a = (a + np.roll(a, 1, 1) + np.roll(a, -1, 1)) / 3.0
    return a


def _up(a, factor: int):
    """Nearest upsampling by an integer factor (np.repeat on both axes)."""
    import numpy as np

    return np.repeat(np.repeat(a, factor, axis=0), factor, axis=1)


def make_scl(rng):
    """A 5490 x 5490 uint8 SCL band with a nodata wedge, cloud blobs and land classes."""
    import numpy as np

    n = SIZE_20M
    # Land classes from a coarse field (183 x 183 cells of 600 m, upsampled x30).
    coarse = _smooth(rng.random((183, 183)), 2)
    land_lut = np.array([4, 4, 4, 5, 5, 6, 7, 2, 4, 11], dtype=np.uint8)  # mostly vegetation
    q = np.clip((coarse - coarse.min()) / (np.ptp(coarse) + 1e-9) * 10, 0, 9.999).astype(np.uint8)
    scl = _up(land_lut[q], 30)  # (5490, 5490)
    # Pixel-level speckle (real SCL is noisy): ~3 % of pixels get another land class.
    speckle = rng.random((n, n), dtype=np.float32)
    flip = speckle < 0.03
    scl[flip] = np.array([2, 5, 7], dtype=np.uint8)[(speckle[flip] * 100).astype(np.uint8) % 3]
    del speckle, flip

    # Cloud blobs: smooth coarse field thresholded, with jagged edges from a 100 m field (x5).
    cloud_field = _smooth(rng.random((183, 183)), 4)
    cloud_field = (cloud_field - cloud_field.mean()) / (cloud_field.std() + 1e-9)
    edge = rng.standard_normal((1098, 1098)).astype(np.float32) * 0.35
    field = _up(cloud_field.astype(np.float32), 30) + _up(edge, 5)
    cloudy = field > 0.75  # ~25 % of the scene
    # Cloud class inside the blobs: core 9 (high prob), rim 8 (medium), some 10 (cirrus),
    # shadows (3) next to the blobs, a few saturated pixels (1).
    cls = np.full(field.shape, 8, dtype=np.uint8)
    cls[field > 1.3] = 9
    cirrus = _up(_smooth(rng.random((183, 183)), 3) > 0.56, 30)
    cls[cirrus & (field < 1.0)] = 10
    scl[cloudy] = cls[cloudy]
    shadow = np.roll(np.roll(cloudy, 40, axis=0), 25, axis=1) & ~cloudy
    scl[shadow] = 3
    sat = rng.random((1098, 1098)) > 0.9995
    scl[_up(sat, 5)] = 1
    del field, cls, cirrus, shadow, sat, cloudy

    # Nodata wedge on the east side (a swath edge, as in real S2 tiles).
    rows = np.arange(n, dtype=np.float32)[:, None]
    cols = np.arange(n, dtype=np.float32)[None, :]
    nodata = (cols - 0.35 * rows) > 3900.0
    scl[nodata] = SCL_NODATA
    return scl


def make_band(rng, idx: int, scl10_cloud, scl10_nodata):
    """A 10980 x 10980 uint16 reflectance-like band."""
    import numpy as np

    base = _smooth(rng.random((183, 183)), 2) * (1800 + 600 * idx) + 300 + 150 * idx
    mid = rng.random((1098, 1098)).astype(np.float32) * 400.0
    band = _up(base.astype(np.uint16), 60)
    band += _up(mid.astype(np.uint16), 10)
    band += rng.integers(0, 160, size=band.shape, dtype=np.uint16)
    band[scl10_cloud] += np.uint16(4000)
    band[scl10_nodata] = 0
    return band


def _write_cog(path: Path, arr, res: float, nodata, overview_resampling: str) -> None:
    import rasterio
    import rasterio.shutil
    from affine import Affine
    from rasterio.io import MemoryFile

    profile = dict(
        driver="GTiff",
        width=arr.shape[1],
        height=arr.shape[0],
        count=1,
        dtype=arr.dtype.name,
        crs=f"EPSG:{EPSG}",
        transform=Affine(res, 0, ORIGIN_X, 0, -res, ORIGIN_Y),
        nodata=nodata,
        tiled=True,
        blockxsize=BLOCK,
        blockysize=BLOCK,
    )
    tmp = path.with_name(path.stem + ".tmp.tif")
    with MemoryFile() as mem:
        with mem.open(**profile) as ds:
            ds.write(arr, 1)
        with mem.open() as src:
            rasterio.shutil.copy(
                src,
                tmp,
                driver="COG",
                blocksize=BLOCK,
                compress="DEFLATE",
                predictor=2,
                overview_resampling=overview_resampling,
                num_threads="ALL_CPUS",
                bigtiff="IF_SAFER",
            )
    os.replace(tmp, path)


def _item_dict(scene: Path) -> dict:
    import pyproj

    to_wgs = pyproj.Transformer.from_crs(EPSG, 4326, always_xy=True)
    x0, y1 = ORIGIN_X, ORIGIN_Y
    x1, y0 = ORIGIN_X + 10 * SIZE_10M, ORIGIN_Y - 10 * SIZE_10M
    ring = [to_wgs.transform(x, y) for x, y in [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]]
    lons = [p[0] for p in ring]
    lats = [p[1] for p in ring]
    assets = {}
    for key in ASSETS:
        res = 20.0 if key == "scl" else 10.0
        size = SIZE_20M if key == "scl" else SIZE_10M
        assets[key] = {
            "href": str((scene / f"{key}.tif").resolve()),
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "roles": ["data"],
            "gsd": res,
            "proj:shape": [size, size],
            "proj:transform": _transform_list(res),
        }
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": ["https://stac-extensions.github.io/projection/v1.1.0/schema.json"],
        "id": ITEM_ID,
        "collection": "sentinel-2-l2a",
        "geometry": {"type": "Polygon", "coordinates": [[list(p) for p in ring]]},
        "bbox": [min(lons), min(lats), max(lons), max(lats)],
        "properties": {
            "datetime": "2024-06-01T10:56:29Z",
            "platform": "sentinel-2x",
            "proj:epsg": EPSG,
            "proj:shape": [SIZE_10M, SIZE_10M],
            "proj:transform": _transform_list(10.0),
        },
        "links": [],
        "assets": assets,
    }


def ensure_scene(workdir: Path, seed: int) -> Path:
    """Build the scene once; return the path of the item JSON."""
    scene = workdir / "scene"
    marker = scene / ".built.json"
    want = {"version": SCENE_VERSION, "seed": seed, "size": SIZE_10M, "block": BLOCK}
    item_path = scene / "item.json"
    if marker.exists() and item_path.exists():
        try:
            if json.loads(marker.read_text()).get("params") == want and all(
                (scene / f"{k}.tif").exists() for k in ASSETS
            ):
                _log(f"reusing scene in {scene}")
                return item_path
        except ValueError:
            pass
    import numpy as np

    scene.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    _log(f"building scene in {scene} (4 x {SIZE_10M}^2 uint16 + {SIZE_20M}^2 uint8 COGs)")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    scl = make_scl(rng)
    _write_cog(scene / "scl.tif", scl, 20.0, 0, "nearest")
    lut = np.zeros(256, dtype=bool)
    lut[list(SCL_CLOUD)] = True
    cloud10 = _up(lut[scl], 2)
    nodata10 = _up(scl == SCL_NODATA, 2)
    stats = {
        "scl_cloud_fraction": float(lut[scl].mean()),
        "scl_nodata_fraction": float((scl == SCL_NODATA).mean()),
    }
    del scl
    _log(f"  scl done ({time.perf_counter() - t0:.0f} s) {stats}")
    for i, key in enumerate(BANDS):
        band = make_band(rng, i, cloud10, nodata10)
        _write_cog(scene / f"{key}.tif", band, 10.0, 0, "average")
        del band
        _log(f"  {key} done ({time.perf_counter() - t0:.0f} s)")
    del cloud10, nodata10
    _write_json(item_path, _item_dict(scene))
    sizes = {k: (scene / f"{k}.tif").stat().st_size for k in ASSETS}
    _write_json(
        marker,
        {
            "params": want,
            "built_seconds": round(time.perf_counter() - t0, 1),
            "file_bytes": sizes,
            **stats,
        },
    )
    _log(f"scene built in {time.perf_counter() - t0:.0f} s, {sum(sizes.values()) / 2**20:.0f} MiB")
    return item_path


def prewarm_page_cache(item_path: Path) -> None:
    """Read every file once so that no measurement pays the first disk read (fair for all)."""
    scene = item_path.parent
    for k in ASSETS:
        with open(scene / f"{k}.tif", "rb") as f:
            while f.read(1 << 24):
                pass


# =================================================================================================
# 3. Workers (run in fresh subprocesses)
# =================================================================================================
def _load_item(item_path: str, migrate: bool):
    import pystac

    with open(item_path) as f:
        d = json.load(f)
    return pystac.Item.from_dict(d, migrate=migrate)


def _index_arrays(table, flavour: str) -> dict:
    """x, y, cloud, nodata and geometry bounds of an index table, as plain numpy arrays."""
    import numpy as np
    import shapely

    out = {
        "x": np.asarray(table.column("chip_index_x").to_numpy(), dtype=np.int64),
        "y": np.asarray(table.column("chip_index_y").to_numpy(), dtype=np.int64),
        "cloud": np.asarray(table.column("cloud_cover_percentage").to_numpy(), dtype=np.float64),
        "nodata": np.asarray(table.column("nodata_percentage").to_numpy(), dtype=np.float64),
    }
    try:
        col = table.column("geometry")
        if flavour == "upstream":
            import geoarrow.pyarrow as ga

            wkb = ga.as_wkb(col)
            geoms = shapely.from_wkb([v.wkb if hasattr(v, "wkb") else v.as_py() for v in wkb])
        else:
            vals = col.to_pylist()
            geoms = shapely.from_wkb(vals) if vals and isinstance(vals[0], bytes) else shapely.from_wkt(vals)
        out["bounds"] = shapely.bounds(np.asarray(geoms))
    except Exception as exc:  # noqa: BLE001 - informative only
        out["bounds_error"] = f"{type(exc).__name__}: {exc}"
    return out


def worker_index(args) -> dict:
    import numpy as np

    res: dict = {}
    if args.mode == "upstream_index":
        from stacchip.indexer import Sentinel2Indexer

        item = _load_item(args.item, migrate=False)
    else:
        from stacchip_assets.index.chip_indexer import Sentinel2Indexer

        item = _load_item(args.item, migrate=True)
    t0 = time.perf_counter()
    indexer = Sentinel2Indexer(item, chip_size=CHIP_SIZE, chip_max_nodata=0.5)
    res["init_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    table = indexer.create_index()
    res["seconds"] = time.perf_counter() - t0
    res["rows"] = table.num_rows
    # Informational: a second indexer + create_index in the same process. One-time costs are gone
    # (lazy imports: any pa.array() call imports pandas, ~0.15 s, on both sides) and GDAL's block
    # cache already holds the SCL tiles (for both sides).
    t0 = time.perf_counter()
    Sentinel2Indexer(item, chip_size=CHIP_SIZE, chip_max_nodata=0.5).create_index()
    res["warm_seconds"] = time.perf_counter() - t0
    res["pandas_imported"] = "pandas" in sys.modules
    res["grid"] = [indexer.x_size, indexer.y_size]
    res["transform"] = [float(v) for v in list(indexer.transform)[:6]]
    res["shape"] = [int(v) for v in list(indexer.shape)[:2]]
    if args.dump:
        arrays = _index_arrays(table, "upstream" if args.mode.startswith("upstream") else "ours")
        err = arrays.pop("bounds_error", None)
        if err:
            res["bounds_error"] = err
        np.savez(args.dump, **arrays)
    return res


def worker_upstream_breakdown(args) -> dict:
    """Where upstream's create_index time goes (a separate, unmeasured-for-ratios run)."""
    from stacchip.indexer import Sentinel2Indexer

    item = _load_item(args.item, migrate=False)
    idx = Sentinel2Indexer(item, chip_size=CHIP_SIZE, chip_max_nodata=0.5)
    t0 = time.perf_counter()
    scl = idx.scl  # cached_property: reads SCL upsampled to 10980 x 10980 (nearest)
    t_scl = time.perf_counter() - t0
    t0 = time.perf_counter()
    for y in range(idx.y_size):
        for x in range(idx.x_size):
            idx.get_stats(x, y)
    t_stats = time.perf_counter() - t0
    t0 = time.perf_counter()
    for y in range(idx.y_size):
        for x in range(idx.x_size):
            idx.get_chip_bbox(x, y)
    t_bbox = time.perf_counter() - t0
    t0 = time.perf_counter()
    idx.create_index()  # SCL already cached
    t_rest = time.perf_counter() - t0
    return {
        "scl_upsampled_read_seconds": t_scl,
        "scl_upsampled_shape": list(scl.shape),
        "scl_upsampled_mbytes": scl.nbytes / 2**20,
        "get_stats_loop_seconds": t_stats,
        "get_chip_bbox_loop_seconds": t_bbox,
        "create_index_with_cached_scl_seconds": t_rest,
        "n_chips": idx.size,
    }


def _scl_fractions(a, chip: int, nx: int, ny: int):
    """Per-chip cloud and nodata pixel counts of a native-resolution SCL.

    One band of `chip` rows at a time (stays in cache): classify with comparisons (about 3x
    faster than a lookup table ``lut[a]``), column sums, then sums of `chip` columns. About 4x
    faster than classifying the whole array and reshaping to (ny, chip, nx, chip)."""
    import numpy as np

    cloud = np.empty((ny, nx), dtype=np.uint32)
    nodata = np.empty((ny, nx), dtype=np.uint32)
    for j in range(ny):
        band = a[j * chip : (j + 1) * chip, : nx * chip]
        cl = ((band | np.uint8(2)) == 3) | ((band - np.uint8(8)) <= 2)  # {1, 3} | {8, 9, 10}
        cloud[j] = cl.view(np.uint8).sum(axis=0, dtype=np.uint16).reshape(nx, chip).sum(axis=1)
        nd = band == SCL_NODATA
        nodata[j] = nd.view(np.uint8).sum(axis=0, dtype=np.uint16).reshape(nx, chip).sum(axis=1)
    return cloud, nodata


def worker_raw_index(args) -> dict:
    """Lower bound: read SCL once at native resolution (GDAL decoding on all cores), per-chip
    fractions with a numpy reshape. Footprints (one vectorized pyproj call) are timed on top."""
    import numpy as np
    import rasterio

    item = _load_item(args.item, migrate=False)
    href = item.assets["scl"].href
    t0 = time.perf_counter()
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"), rasterio.open(href) as src:
        factor = SIZE_10M // src.width  # 2
        c = CHIP_SIZE // factor  # 128 SCL px per chip side
        nx, ny = SIZE_10M // CHIP_SIZE, SIZE_10M // CHIP_SIZE
        scl = src.read(1)
    t_read = time.perf_counter() - t0
    n_cloud, n_nodata = _scl_fractions(scl, c, nx, ny)
    cloud = n_cloud / (c * c)
    nodata = n_nodata / (c * c)
    keep = nodata <= 0.5
    t_stats = time.perf_counter() - t0
    import pyproj
    import shapely

    to_wgs = pyproj.Transformer.from_crs(EPSG, 4326, always_xy=True)
    yy, xx = np.nonzero(keep)
    x0 = ORIGIN_X + xx * 10.0 * CHIP_SIZE
    y0 = ORIGIN_Y - yy * 10.0 * CHIP_SIZE
    x1, y1 = x0 + 10.0 * CHIP_SIZE, y0 - 10.0 * CHIP_SIZE
    cx = np.stack([x0, x1, x1, x0, x0], axis=1)
    cy = np.stack([y1, y1, y0, y0, y1], axis=1)
    lon, lat = to_wgs.transform(cx.ravel(), cy.ravel())
    coords = np.stack([lon, lat], axis=1).reshape(-1, 5, 2)
    polys = shapely.polygons(coords)
    wkb = shapely.to_wkb(polys)
    t_all = time.perf_counter() - t0
    if args.dump:
        np.savez(
            args.dump,
            x=xx,
            y=yy,
            cloud=cloud[keep],
            nodata=nodata[keep],
            bounds=shapely.bounds(polys),
        )
    return {
        "seconds": t_stats,
        "scl_read_seconds": t_read,
        "with_footprints_seconds": t_all,
        "rows": int(keep.sum()),
        "wkb_bytes": int(sum(len(w) for w in wkb)),
    }


def _positions(path: str):
    with open(path) as f:
        p = json.load(f)
    return p["x"], p["y"], p.get("check", 5)


def worker_chips(args) -> dict:
    import numpy as np

    xs, ys, ncheck = _positions(args.positions)
    res: dict = {"n_chips": len(xs)}
    keep: dict = {}
    mode = args.mode
    if mode == "upstream_chips":
        from stacchip.chipper import Chipper
        from stacchip.indexer import Sentinel2Indexer

        item = _load_item(args.item, migrate=False)
        indexer = Sentinel2Indexer(item, chip_size=CHIP_SIZE, chip_max_nodata=0.5)
        chipper = Chipper(indexer, assets=list(ASSETS))
        t0 = time.perf_counter()
        for i, (x, y) in enumerate(zip(xs, ys)):
            chip = chipper.chip(x, y)
            if i < ncheck:
                keep.update({f"{i}_{k}": v for k, v in chip.items()})
        res["seconds"] = time.perf_counter() - t0
    elif mode in ("ours_chips", "ours_chips_batch"):
        from stacchip_assets.index.chip_indexer import Sentinel2Indexer
        from stacchip_assets.index.chipper import Chipper

        item = _load_item(args.item, migrate=True)
        indexer = Sentinel2Indexer(item, chip_size=CHIP_SIZE, chip_max_nodata=0.5)
        chipper = Chipper(indexer, assets=list(ASSETS))
        if mode == "ours_chips":
            t0 = time.perf_counter()
            for i, (x, y) in enumerate(zip(xs, ys)):
                chip = chipper.chip(x, y)
                if i < ncheck:
                    keep.update({f"{i}_{k}": np.asarray(v) for k, v in chip.items()})
            res["seconds"] = time.perf_counter() - t0
        else:
            name = args.batch_method
            fn = getattr(chipper, name)
            res["batch_method"] = name
            t0 = time.perf_counter()
            out = _call_batch(fn, xs, ys)
            n = 0
            for i, chip in enumerate(out):  # consume generators inside the timing
                n += 1
                if i < ncheck:
                    keep.update({f"{i}_{k}": np.asarray(v) for k, v in chip.items()})
            res["seconds"] = time.perf_counter() - t0
            res["batch_call"] = _call_batch.last  # type: ignore[attr-defined]
            res["n_returned"] = n
    elif mode == "raw_chips":
        import rasterio
        from rasterio.enums import Resampling
        from rasterio.windows import Window

        item = _load_item(args.item, migrate=False)
        t0 = time.perf_counter()
        dss = {k: rasterio.open(item.assets[k].href) for k in ASSETS}
        for i, (x, y) in enumerate(zip(xs, ys)):
            chip = {}
            for k, ds in dss.items():
                f = SIZE_10M // ds.width
                c = CHIP_SIZE // f
                chip[k] = ds.read(
                    window=Window(x * c, y * c, c, c),
                    out_shape=(ds.count, CHIP_SIZE, CHIP_SIZE),
                    resampling=Resampling.nearest,
                )
            if i < ncheck:
                keep.update({f"{i}_{k}": v for k, v in chip.items()})
        for ds in dss.values():
            ds.close()
        res["seconds"] = time.perf_counter() - t0
    elif mode == "raw_chips_threaded":
        import threading
        from concurrent.futures import ThreadPoolExecutor

        import rasterio
        from rasterio.enums import Resampling
        from rasterio.windows import Window

        item = _load_item(args.item, migrate=False)
        hrefs = {k: item.assets[k].href for k in ASSETS}
        local = threading.local()
        opened = []
        lock = threading.Lock()
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        res["threads"] = workers

        def read(task):
            x, y, k = task
            dss = getattr(local, "dss", None)
            if dss is None:  # rasterio datasets are not thread-safe: one set per thread
                dss = local.dss = {kk: rasterio.open(h) for kk, h in hrefs.items()}
                with lock:
                    opened.append(dss)
            ds = dss[k]
            f = SIZE_10M // ds.width
            c = CHIP_SIZE // f
            return ds.read(
                window=Window(x * c, y * c, c, c),
                out_shape=(ds.count, CHIP_SIZE, CHIP_SIZE),
                resampling=Resampling.nearest,
            )

        t0 = time.perf_counter()
        tasks = [(x, y, k) for x, y in zip(xs, ys) for k in ASSETS]
        with ThreadPoolExecutor(workers) as pool:
            arrays = list(pool.map(read, tasks))
        chips = [dict(zip(ASSETS, arrays[i : i + len(ASSETS)])) for i in range(0, len(arrays), len(ASSETS))]
        res["seconds"] = time.perf_counter() - t0
        for dss in opened:
            for ds in dss.values():
                ds.close()
        for i, chip in enumerate(chips[:ncheck]):
            keep.update({f"{i}_{k}": v for k, v in chip.items()})
    else:
        raise SystemExit(f"unknown mode {mode}")
    res["chips_per_second"] = len(xs) / res["seconds"]
    if args.dump:
        np.savez(args.dump, **keep)
    return res


def _normalise_chip(obj):
    """A batch method may yield dicts, (x, y, dict) tuples or objects with a dict; get the dict."""
    if isinstance(obj, dict):
        return obj
    if isinstance(obj, tuple) and obj and isinstance(obj[-1], dict):
        return obj[-1]
    for attr in ("pixels", "data", "arrays", "chip"):
        v = getattr(obj, attr, None)
        if isinstance(v, dict):
            return v
    raise TypeError(f"cannot interpret a batch result of type {type(obj).__name__}")


def _call_batch(fn, xs, ys):
    """Call a batch method with the most likely signatures; return a list of chip dicts."""
    attempts = (
        ("fn(xs, ys)", lambda: fn(xs, ys)),
        ("fn(list(zip(xs, ys)))", lambda: fn(list(zip(xs, ys)))),
        ("fn(xs=xs, ys=ys)", lambda: fn(xs=xs, ys=ys)),
    )
    errors = []
    for label, call in attempts:
        try:
            out = call()
        except TypeError as exc:
            errors.append(f"{label}: {exc}")
            continue
        _call_batch.last = label  # type: ignore[attr-defined]
        if isinstance(out, dict):
            # {asset: ndarray(n, bands, h, w)} or {(x, y): chip}
            keys = list(out)
            if keys and isinstance(keys[0], tuple):
                return [_normalise_chip(out[k]) for k in keys]
            n = len(xs)
            return [{k: v[i] for k, v in out.items()} for i in range(n)]
        return [_normalise_chip(o) for o in out]
    raise TypeError("no batch signature worked: " + "; ".join(errors))


def run_worker(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="bench_core.py _worker")
    p.add_argument("mode")
    p.add_argument("--item", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--positions")
    p.add_argument("--dump")
    p.add_argument("--batch-method")
    args = p.parse_args(argv)
    if args.mode in ("upstream_index", "ours_index"):
        res = worker_index(args)
    elif args.mode == "upstream_breakdown":
        res = worker_upstream_breakdown(args)
    elif args.mode == "raw_index":
        res = worker_raw_index(args)
    else:
        res = worker_chips(args)
    _write_json(Path(args.out), res)


# =================================================================================================
# 4. Orchestration
# =================================================================================================
def _ours_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _upstream_env() -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def spawn(python: Path | str, mode: str, item: Path, tmp: Path, *, env: dict, extra=(), dump=None):
    out = tmp / f"{mode}.json"
    out.unlink(missing_ok=True)
    cmd = [str(python), str(Path(__file__).resolve()), "_worker", mode, "--item", str(item), "--out", str(out)]
    if dump:
        cmd += ["--dump", str(dump)]
    cmd += list(extra)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp))
    wall = time.perf_counter() - t0
    if r.returncode != 0 or not out.exists():
        tail = (r.stderr or r.stdout or "").strip().splitlines()[-15:]
        return {"error": "\n".join(tail) or f"exit code {r.returncode}", "process_wall_seconds": wall}
    res = json.loads(out.read_text())
    res["process_wall_seconds"] = wall
    return res


def _summarise(runs: list[dict]) -> dict:
    secs = [r["seconds"] for r in runs]
    summary = {k: v for k, v in runs[-1].items() if k != "seconds"}
    summary.update({"seconds": statistics.median(secs), "min_seconds": min(secs), "runs": secs})
    if all("warm_seconds" in r for r in runs):
        summary["warm_seconds"] = statistics.median(r["warm_seconds"] for r in runs)
    if "n_chips" in summary:
        summary["chips_per_second"] = summary["n_chips"] / summary["seconds"]
    return summary


def measure_all(specs: list[dict], repeat: int, item: Path, tmp: Path) -> dict:
    """Run every spec `repeat` times, round-robin (spec A, B, C, A, B, C, ...), so that background
    load on a shared machine is spread over all measurements instead of hitting one of them."""
    runs: dict = {s["key"]: [] for s in specs}
    failed: dict = {}
    for i in range(repeat):
        for s in specs:
            if s["key"] in failed:
                continue
            res = spawn(s["python"], s["mode"], item, tmp, env=s["env"], extra=s.get("extra", ()),
                        dump=s.get("dump") if i == 0 else None)
            if "error" in res:
                _log(f"{s['label']}: FAILED\n{res['error']}")
                failed[s["key"]] = res["error"]
                continue
            runs[s["key"]].append(res)
            _log(f"{s['label']} run {i + 1}/{repeat}: {res['seconds']:.3f} s")
    out = {}
    for s in specs:
        k = s["key"]
        if k in failed:
            out[k] = {"error": failed[k], "runs": [r["seconds"] for r in runs[k]]}
        elif runs[k]:
            out[k] = _summarise(runs[k])
    return out


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def ours_status() -> tuple[bool, str, list[str]]:
    code = (
        "import json, stacchip_assets.index.chip_indexer as i, stacchip_assets.index.chipper as c;"
        "print(json.dumps([n for n in dir(c.Chipper) if not n.startswith('_')]))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_ours_env(), cwd=str(REPO_ROOT))
    if r.returncode != 0:
        tail = (r.stderr or "").strip().splitlines()[-1:] or ["?"]
        return False, tail[0], []
    return True, "", json.loads(r.stdout.strip().splitlines()[-1])


def _cmp_index(a_path: Path, b_path: Path) -> dict:
    import numpy as np

    a, b = np.load(a_path), np.load(b_path)
    ka = {(int(x), int(y)): i for i, (x, y) in enumerate(zip(a["x"], a["y"]))}
    kb = {(int(x), int(y)): i for i, (x, y) in enumerate(zip(b["x"], b["y"]))}
    common = sorted(set(ka) & set(kb))
    ia = np.array([ka[k] for k in common], dtype=np.int64)
    ib = np.array([kb[k] for k in common], dtype=np.int64)
    out = {
        "rows": [len(ka), len(kb)],
        "only_in_first": len(set(ka) - set(kb)),
        "only_in_second": len(set(kb) - set(ka)),
        "max_abs_diff_cloud": float(np.abs(a["cloud"][ia] - b["cloud"][ib]).max()) if common else None,
        "max_abs_diff_nodata": float(np.abs(a["nodata"][ia] - b["nodata"][ib]).max()) if common else None,
    }
    if "bounds" in a.files and "bounds" in b.files and common:
        out["max_abs_diff_footprint_deg"] = float(np.abs(a["bounds"][ia] - b["bounds"][ib]).max())
    return out


def _cmp_chips(a_path: Path, b_path: Path) -> dict:
    import numpy as np

    a, b = np.load(a_path), np.load(b_path)
    res = {"compared": 0, "mismatches": [], "scl_mismatches": []}
    for key in sorted(set(a.files) & set(b.files)):
        va, vb = a[key], b[key]
        res["compared"] += 1
        same = va.shape == vb.shape and va.dtype == vb.dtype and np.array_equal(va, vb)
        if not same:
            desc = f"{key}: {va.dtype}{va.shape} vs {vb.dtype}{vb.shape}"
            if va.shape == vb.shape:
                desc += f", {int((va != vb).sum())} px differ"
            (res["scl_mismatches"] if key.endswith("_scl") else res["mismatches"]).append(desc)
    res["missing_keys"] = sorted(set(a.files) ^ set(b.files))
    return res


def machine_info(upstream_info: str) -> dict:
    import numpy
    import rasterio

    info = {
        "nproc": os.cpu_count(),
        "nproc_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "gdal": rasterio.__gdal_version__,
        "rasterio": rasterio.__version__,
        "numpy": numpy.__version__,
        "upstream_env": dict(zip(["stacchip", "rasterio", "gdal", "numpy", "pyarrow"], upstream_info.split())),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["mem_gib"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return info


def _fmt(v, unit=""):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return f"{v:.3f}{unit}" if v < 100 else f"{v:.1f}{unit}"


def _ratio(a, b):
    try:
        return a / b if a and b else None
    except TypeError:
        return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default=str(HERE / ".cache"), help="cache + results folder (default benchmarks/.cache)")
    p.add_argument("--chips", type=int, default=200, help="number of random chip positions (default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the chip positions and of the scene (default 0)")
    p.add_argument("--repeat", type=int, default=5, help="fresh-process runs per measurement; median reported")
    p.add_argument("--check", type=int, default=5, help="chips compared pixel-for-pixel, ours vs upstream")
    p.add_argument("--upstream-python", help="interpreter with stacchip 0.1.38 (skip the managed venv)")
    p.add_argument("--skip-upstream", action="store_true", help="measure only ours and the raw bounds")
    p.add_argument("--skip-ours", action="store_true", help="measure only upstream and the raw bounds")
    args = p.parse_args(argv)

    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = workdir / "run"
    tmp.mkdir(exist_ok=True)

    up_py, up_info = (None, "") if args.skip_upstream else ensure_upstream_venv(workdir, args.upstream_python)
    item = ensure_scene(workdir, args.seed)
    prewarm_page_cache(item)

    import numpy as np

    rng = np.random.default_rng(args.seed)
    grid = SIZE_10M // CHIP_SIZE  # 42
    flat = rng.choice(grid * grid, size=min(args.chips, grid * grid), replace=False)
    xs = [int(v % grid) for v in flat]
    ys = [int(v // grid) for v in flat]
    pos_path = tmp / "positions.json"
    _write_json(pos_path, {"x": xs, "y": ys, "check": args.check})

    ours_ok, ours_err, chipper_attrs = (False, "skipped (--skip-ours)", []) if args.skip_ours else ours_status()
    batch = next((n for n in BATCH_CANDIDATES if n in chipper_attrs), None)
    if not args.skip_ours:
        _log(f"ours importable: {ours_ok}" + ("" if ours_ok else f" ({ours_err})"))
        if ours_ok:
            _log(f"our Chipper public attributes: {chipper_attrs}; batch method: {batch}")

    m: dict = {}
    R = args.repeat
    up_env, our_env = _upstream_env(), _ours_env()
    d = {k: tmp / f"dump_{k}.npz" for k in ("up_index", "our_index", "raw_index", "up_chips", "our_chips", "our_batch", "raw_chips", "raw_thr")}
    for f in d.values():
        f.unlink(missing_ok=True)

    pos = ["--positions", str(pos_path)]
    index_specs, chip_specs = [], []
    if up_py:
        index_specs.append(dict(key="upstream_index", label="upstream create_index", python=up_py,
                                mode="upstream_index", env=up_env, dump=d["up_index"]))
        chip_specs.append(dict(key="upstream_chips", label="upstream chips", python=up_py,
                               mode="upstream_chips", env=up_env, extra=pos, dump=d["up_chips"]))
    if ours_ok:
        index_specs.append(dict(key="ours_index", label="ours create_index", python=sys.executable,
                                mode="ours_index", env=our_env, dump=d["our_index"]))
        chip_specs.append(dict(key="ours_chips", label="ours chips", python=sys.executable,
                               mode="ours_chips", env=our_env, extra=pos, dump=d["our_chips"]))
        if batch:
            chip_specs.append(dict(key="ours_chips_batch", label=f"ours chips batch ({batch})",
                                   python=sys.executable, mode="ours_chips_batch", env=our_env,
                                   extra=pos + ["--batch-method", batch], dump=d["our_batch"]))
    index_specs.append(dict(key="raw_index", label="raw index lower bound", python=sys.executable,
                            mode="raw_index", env=up_env, dump=d["raw_index"]))
    chip_specs.append(dict(key="raw_chips", label="raw chips lower bound", python=sys.executable,
                           mode="raw_chips", env=up_env, extra=pos, dump=d["raw_chips"]))
    chip_specs.append(dict(key="raw_chips_threaded", label="raw chips, threads", python=sys.executable,
                           mode="raw_chips_threaded", env=up_env, extra=pos, dump=d["raw_thr"]))

    load_before = _loadavg()
    m.update(measure_all(index_specs, R, item, tmp))
    if up_py:
        m["upstream_index_breakdown"] = spawn(up_py, "upstream_breakdown", item, tmp, env=up_env)
    m.update(measure_all(chip_specs, R, item, tmp))
    load_after = _loadavg()

    # --- sanity ---
    sanity: dict = {}
    pairs = {
        "index ours vs upstream": ("our_index", "up_index", _cmp_index),
        "index raw vs upstream": ("raw_index", "up_index", _cmp_index),
        "index ours vs raw": ("our_index", "raw_index", _cmp_index),
        "chips ours vs upstream": ("our_chips", "up_chips", _cmp_chips),
        "chips ours-batch vs upstream": ("our_batch", "up_chips", _cmp_chips),
        "chips raw vs upstream": ("raw_chips", "up_chips", _cmp_chips),
        "chips raw-threaded vs upstream": ("raw_thr", "up_chips", _cmp_chips),
        "chips ours vs raw": ("our_chips", "raw_chips", _cmp_chips),
    }
    for label, (a, b, fn) in pairs.items():
        if d[a].exists() and d[b].exists():
            try:
                sanity[label] = fn(d[a], d[b])
            except Exception as exc:  # noqa: BLE001
                sanity[label] = {"error": f"{type(exc).__name__}: {exc}"}

    # --- ratios ---
    def sec(k):
        return m.get(k, {}).get("seconds")

    def warm(k):
        return m.get(k, {}).get("warm_seconds")

    def cps(k):
        return m.get(k, {}).get("chips_per_second")

    best_ours_cps = max([v for v in (cps("ours_chips"), cps("ours_chips_batch")) if v] or [None], key=lambda v: v or 0)
    ratios = {
        "index_speedup_upstream_over_ours": _ratio(sec("upstream_index"), sec("ours_index")),
        "index_speedup_upstream_over_ours_warm": _ratio(warm("upstream_index"), warm("ours_index")),
        "index_ours_over_raw_lower_bound": _ratio(sec("ours_index"), sec("raw_index")),
        "index_upstream_over_raw_lower_bound": _ratio(sec("upstream_index"), sec("raw_index")),
        "chips_per_second_ours_over_upstream": _ratio(cps("ours_chips"), cps("upstream_chips")),
        "chips_per_second_ours_batch_over_upstream": _ratio(cps("ours_chips_batch"), cps("upstream_chips")),
        "chips_per_second_best_ours_over_upstream": _ratio(best_ours_cps, cps("upstream_chips")),
        "chips_per_second_raw_over_ours": _ratio(cps("raw_chips"), cps("ours_chips")),
        "chips_per_second_raw_over_upstream": _ratio(cps("raw_chips"), cps("upstream_chips")),
        "chips_per_second_raw_threaded_over_ours": _ratio(cps("raw_chips_threaded"), best_ours_cps),
        "chips_per_second_raw_threaded_over_upstream": _ratio(cps("raw_chips_threaded"), cps("upstream_chips")),
        "index_ours_over_raw_with_footprints": _ratio(sec("ours_index"), m.get("raw_index", {}).get("with_footprints_seconds")),
    }

    def verdict(v, target):
        return None if v is None else ("PASS" if v >= target else "MISS")

    targets = {
        "create_index speedup (upstream s / ours s)": {
            "target": TARGET_INDEX_SPEEDUP,
            "value": ratios["index_speedup_upstream_over_ours"],
            "verdict": verdict(ratios["index_speedup_upstream_over_ours"], TARGET_INDEX_SPEEDUP),
        },
        "create_index speedup, warm 2nd call (info)": {
            "target": TARGET_INDEX_SPEEDUP,
            "value": ratios["index_speedup_upstream_over_ours_warm"],
            "verdict": verdict(ratios["index_speedup_upstream_over_ours_warm"], TARGET_INDEX_SPEEDUP),
        },
        "chips/s ours (one by one) / upstream": {
            "target": TARGET_CHIPS_SPEEDUP,
            "value": ratios["chips_per_second_ours_over_upstream"],
            "verdict": verdict(ratios["chips_per_second_ours_over_upstream"], TARGET_CHIPS_SPEEDUP),
        },
    }
    if ratios["chips_per_second_ours_batch_over_upstream"] is not None:
        targets["chips/s ours (batch) / upstream"] = {
            "target": TARGET_CHIPS_SPEEDUP,
            "value": ratios["chips_per_second_ours_batch_over_upstream"],
            "verdict": verdict(ratios["chips_per_second_ours_batch_over_upstream"], TARGET_CHIPS_SPEEDUP),
        }

    marker = json.loads((item.parent / ".built.json").read_text())
    results = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "machine": machine_info(up_info or "? ? ? ? ?"),
        "config": {
            "chips": len(xs),
            "seed": args.seed,
            "repeat": R,
            "chip_size": CHIP_SIZE,
            "grid": [grid, grid],
            "workdir": str(workdir),
            "item": str(item),
            "scene": marker,
            "upstream_item_loading": "pystac.Item.from_dict(d, migrate=False) (keeps proj:epsg)",
            "ours_item_loading": "pystac.Item.from_dict(d) (migrated: proj:code)",
        },
        "load_average_before_after": [load_before, load_after],
        "ours_importable": ours_ok,
        "ours_import_error": None if ours_ok else ours_err,
        "ours_chipper_public_attributes": chipper_attrs,
        "ours_batch_method": batch,
        "measurements": m,
        "ratios": ratios,
        "targets": targets,
        "sanity": sanity,
    }
    _write_json(workdir / "results.json", results)
    print_report(results)
    print(f"\nresults written to {workdir / 'results.json'}")
    return 0


def print_report(r: dict) -> None:
    mi = r["machine"]
    print()
    print(f"machine: {mi.get('cpu', '?')}, nproc={mi['nproc']} (available {mi['nproc_available']}), "
          f"mem={mi.get('mem_gib', '?')} GiB, python {mi['python']}")
    print(f"ours:     rasterio {mi['rasterio']}, GDAL {mi['gdal']}, numpy {mi['numpy']}")
    ue = mi["upstream_env"]
    print(f"upstream: stacchip {ue.get('stacchip')}, rasterio {ue.get('rasterio')}, GDAL {ue.get('gdal')}, "
          f"numpy {ue.get('numpy')}, pyarrow {ue.get('pyarrow')}")
    la = r.get("load_average_before_after") or [None, None]
    if la[0]:
        busy = " (other work was running: numbers are noisier)" if la[0][0] > 0.5 else ""
        print(f"load average (1/5/15 min) before: {la[0]}, after: {la[1]}{busy}")
    c = r["config"]
    print(f"scene: 4 x {SIZE_10M}^2 uint16 + SCL {SIZE_20M}^2 uint8, {BLOCK} px tiles, DEFLATE; "
          f"grid {c['grid'][0]}x{c['grid'][1]} chips of {c['chip_size']}; {c['chips']} chip positions x "
          f"{len(ASSETS)} assets; median of {c['repeat']} fresh-process runs")
    print()
    m = r["measurements"]
    rows = [
        ("create_index  upstream", "upstream_index", "s"),
        ("create_index  ours", "ours_index", "s"),
        ("index         raw lower bound", "raw_index", "s"),
        ("chips         upstream (loop)", "upstream_chips", "c"),
        ("chips         ours (loop)", "ours_chips", "c"),
        ("chips         ours (batch)", "ours_chips_batch", "c"),
        ("chips         raw lower bound", "raw_chips", "c"),
        ("chips         raw, threads", "raw_chips_threaded", "c"),
    ]
    print(f"{'measurement':34s} {'seconds':>9s} {'min':>9s} {'chips/s':>9s}  note")
    print("-" * 80)
    for label, key, kind in rows:
        v = m.get(key)
        if v is None:
            if key == "ours_chips_batch" and r["ours_importable"]:
                print(f"{label:34s} {'-':>9s} {'-':>9s} {'-':>9s}  no batch method on our Chipper")
            elif key.startswith("ours"):
                print(f"{label:34s} {'-':>9s} {'-':>9s} {'-':>9s}  not measured: {r.get('ours_import_error')}")
            continue
        if "error" in v:
            print(f"{label:34s} {'ERROR':>9s} {'':>9s} {'':>9s}  {v['error'].splitlines()[-1][:60]}")
            continue
        note = ""
        if kind == "s":
            note = f"{v.get('rows')} chips kept"
            if v.get("warm_seconds") is not None:
                note += f"; warm 2nd call {v['warm_seconds']:.3f} s"
            if key == "raw_index":
                note += (f"; SCL read (GDAL_NUM_THREADS=ALL_CPUS) {v['scl_read_seconds']:.3f} s;"
                         f" +footprints {v['with_footprints_seconds']:.3f} s")
        elif key == "raw_chips_threaded":
            note = f"{v.get('threads')} threads, one dataset set per thread"
        elif key == "raw_chips":
            note = "datasets opened once, one thread"
        elif key == "ours_chips_batch":
            note = f"{r['ours_batch_method']}: {v.get('batch_call')}"
        cps = v.get("chips_per_second")
        print(f"{label:34s} {_fmt(v['seconds']):>9s} {_fmt(v['min_seconds']):>9s} {_fmt(cps) if cps else '':>9s}  {note}")
    bd = m.get("upstream_index_breakdown")
    if bd and "error" not in bd:
        print()
        print(f"upstream create_index breakdown (one run): SCL read upsampled to {bd['scl_upsampled_shape']} "
              f"({bd['scl_upsampled_mbytes']:.0f} MiB) {bd['scl_upsampled_read_seconds']:.2f} s; "
              f"get_stats x{bd['n_chips']} {bd['get_stats_loop_seconds']:.2f} s; "
              f"get_chip_bbox x{bd['n_chips']} {bd['get_chip_bbox_loop_seconds']:.2f} s; "
              f"create_index with SCL cached {bd['create_index_with_cached_scl_seconds']:.2f} s")
    print()
    print("ratios:")
    for k, v in r["ratios"].items():
        if v is not None:
            print(f"  {k:45s} {v:8.2f}x")
    print()
    print("targets:")
    for k, t in r["targets"].items():
        val = "-" if t["value"] is None else f"{t['value']:.2f}x"
        print(f"  {k:45s} {val:>8s}  (target >= {t['target']}x)  {t['verdict'] or 'NOT MEASURED'}")
    if r["sanity"]:
        print()
        print("sanity:")
        for k, s in r["sanity"].items():
            if "error" in s:
                print(f"  {k}: ERROR {s['error']}")
            elif "compared" in s:
                ok = not s["mismatches"] and not s["missing_keys"]
                extra = f"; SCL mismatches: {s['scl_mismatches']}" if s["scl_mismatches"] else ""
                print(f"  {k}: {s['compared']} arrays compared, "
                      f"{'all 10 m bands equal' if ok else 'MISMATCH ' + str(s['mismatches'][:4]) + str(s['missing_keys'][:4])}{extra}")
            else:
                print(f"  {k}: rows {s['rows']}, only-in-first {s['only_in_first']}, only-in-second "
                      f"{s['only_in_second']}, max |d cloud| {s['max_abs_diff_cloud']}, max |d nodata| "
                      f"{s['max_abs_diff_nodata']}, max |d footprint| {s.get('max_abs_diff_footprint_deg')} deg")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        run_worker(sys.argv[2:])
    else:
        sys.exit(main())
