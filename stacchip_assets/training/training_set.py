"""A training-set folder: written whole (staged in a hidden sibling, renamed into place) and read back.

Layout of ``out_dir``::

    manifest.parquet            one row per sample: chipid, collection, item_id, shard, position,
                                index, path, chip_index_x/y, chip_size, chip_stride, datetime, item_href
    training_set.json           config, per-collection channel layout (asset, band, dtype, nodata),
                                counts, shard files, formulas
    {collection}/shard_000000.npz       format "npz": prechip's keys, one file per shard
    {collection}.zarr/                  format "zarr": one Zarr v3 group per collection

Every sample traces back to its chip: manifest row ``i`` of a collection is sample ``index`` of that
collection, stored in shard ``shard`` at ``position``. The whole folder is written in a hidden
sibling and renamed into place, so readers never see a partial training set.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stacchip_assets.core.ids import validate_id
from stacchip_assets.errors import StacchipError
from stacchip_assets.io.atomic import atomic_directory
from stacchip_assets.io.local_files import HrefPolicy
from stacchip_assets.training.band_stats import merge_results, write_band_statistics_json, write_band_statistics_parquet
from stacchip_assets.training.config import FORMAT_VERSION, INFO_NAME, MANIFEST_NAME, NORM_KEYS, TrainingSetConfig
from stacchip_assets.training.distributed import run_tasks
from stacchip_assets.training.extract import collection_layouts
from stacchip_assets.training.layout import CollectionLayout
from stacchip_assets.training.metadata import chip_norms
from stacchip_assets.training.plan import make_tasks, plan_training_set
from stacchip_assets.training.shards import create_zarr_group, write_task, zarr_array
from stacchip_assets.training.tables import string_column

log = logging.getLogger(__name__)

__all__ = ["load_shard", "read_manifest", "read_training_set_info", "training_set_info", "write_training_set"]


def _check_replaceable(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not overwrite and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists and is not empty (pass overwrite=True to replace it)")


def write_training_set(
    selection: pa.Table,
    config: TrainingSetConfig,
    out_dir: str | os.PathLike[str],
    *,
    client: Any = None,
    chips_per_task: int = 2048,
    mountpath: str | None = None,
    overwrite: bool = False,
    statistics: bool = False,
    href_policy: HrefPolicy | None = None,
) -> pa.Table:
    """Write the shards of a selection (see :func:`select_chips`) and return the manifest.

    ``client``: a ``distributed.Client``; tasks of whole shards then run on its workers (which must
    see ``out_dir``), with byte-identical output. ``statistics=True`` also computes the band
    statistics in the same pass (``band_statistics.json`` / ``.parquet`` in ``out_dir``).
    ``overwrite`` replaces an existing, non-empty ``out_dir``; the new set appears atomically.
    ``href_policy``: what the stored items' asset hrefs may point at (they are untrusted input);
    default :func:`stacchip_assets.core.hrefs.default_read_policy`. HrefPolicyError before GDAL opens anything.
    """
    out_dir = Path(out_dir).absolute()
    plan = plan_training_set(selection, config)
    layouts = collection_layouts(plan, config, mountpath=mountpath, href_policy=href_policy) if plan.num_rows else {}
    norms = chip_norms(plan, legacy_latlon_swap=config.legacy_latlon_swap)
    tasks = make_tasks(plan, config, chips_per_task=chips_per_task, whole_shards=True, norms=norms)
    coll = string_column(plan, "collection")
    totals = {c: int((coll == c).sum()) for c in layouts}

    _check_replaceable(out_dir, overwrite)  # before any work; again before the swap (inside the stage)
    with atomic_directory(out_dir) as stage:
        _create_collections(stage, layouts, totals, config)
        groups = [  # one group per collection: the layout and the sample count differ
            ([t for t in tasks if t.collection == collection],
             dict(root=str(stage), layout=layout, config=config, total=totals[collection], mountpath=mountpath,
                  statistics=statistics, href_policy=href_policy))
            for collection, layout in layouts.items()
        ]
        results: list[dict[str, Any]] = run_tasks(write_task, groups, client=client)
        shards = sorted((s for r in results for s in r["shards"]), key=lambda s: (s["collection"], s["shard"]))
        expected = sum(int(math.ceil(t / config.shard_size)) for t in totals.values())
        if len(shards) != expected:
            raise StacchipError(f"wrote {len(shards)} shards, the plan has {expected}")
        pq.write_table(plan.drop_columns(["bbox"]), stage / MANIFEST_NAME, compression="zstd")
        info = training_set_info(config, plan.num_rows, layouts, totals, shards)
        (stage / INFO_NAME).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        if statistics:
            _write_statistics(stage, [r["statistics"] for r in results], layouts)
        _check_replaceable(out_dir, overwrite)
    log.info("training set: %d samples in %d shards (%s) at %s", plan.num_rows, len(shards), config.format, out_dir)
    return pq.read_table(out_dir / MANIFEST_NAME)


def _create_collections(stage: Path, layouts: Mapping[str, CollectionLayout], totals: Mapping[str, int],
                        config: TrainingSetConfig) -> None:
    """Each collection's empty container in the staging folder: an npz folder or a sized Zarr group."""
    for collection, layout in layouts.items():
        if config.format == "npz":
            (stage / collection).mkdir()
        else:
            create_zarr_group(stage / f"{collection}.zarr", layout, totals[collection], config)


def training_set_info(config: TrainingSetConfig, samples: int, layouts: Mapping[str, CollectionLayout],
                      totals: Mapping[str, int], shards: list[dict[str, Any]]) -> dict[str, Any]:
    """The content of training_set.json: config, per-collection layout and counts, shard files, formulas."""
    return {
        "format_version": FORMAT_VERSION,
        "format": config.format,
        "config": config.to_dict(),
        "samples": samples,
        "collections": {
            c: {"samples": totals[c], "shards": int(math.ceil(totals[c] / config.shard_size)),
                "layout": layouts[c].to_dict()} for c in layouts
        },
        "shards": shards,
        "npz_keys": ["pixels", *NORM_KEYS],
        "normalization": {
            "lat_norm": "(sin(lat*pi/180), cos(lat*pi/180)), lat = centre of the footprint bbox",
            "lon_norm": "(sin(lon*pi/180), cos(lon*pi/180)), lon = centre of the footprint bbox",
            "week_norm": "(sin(w*2*pi/52), cos(w*2*pi/52)), w = ISO week of the UTC datetime",
            "hour_norm": "(sin(h*2*pi/24), cos(h*2*pi/24)), h = UTC hour (integer)",
            "legacy_latlon_swap": bool(config.legacy_latlon_swap),
        },
    }


def _write_statistics(stage: Path, partials: Sequence[Any], layouts: Mapping[str, CollectionLayout]) -> None:
    """band_statistics.json / .parquet from the tasks' partial accumulators, merged in task order."""
    records = merge_results(list(partials), layouts)
    write_band_statistics_json(records, stage / "band_statistics.json")
    write_band_statistics_parquet(records, stage / "band_statistics.parquet")


def read_training_set_info(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The training_set.json of a training set folder."""
    return json.loads((Path(out_dir) / INFO_NAME).read_text())


def read_manifest(out_dir: str | os.PathLike[str]) -> pa.Table:
    """The manifest of a training set folder."""
    return pq.read_table(Path(out_dir) / MANIFEST_NAME)


def load_shard(out_dir: str | os.PathLike[str], collection: str, shard: int) -> dict[str, np.ndarray]:
    """The arrays of one shard (npz or Zarr): ``pixels`` (n, C, H, W) and the four norms (n, 2)."""
    out_dir = Path(out_dir)
    info = read_training_set_info(out_dir)
    size = int(info["config"]["shard_size"])
    validate_id(collection, "collection")
    if info["format"] == "npz":
        with np.load(out_dir / collection / f"shard_{int(shard):06d}.npz", allow_pickle=False) as data:
            return {k: data[k] for k in ("pixels", *NORM_KEYS)}
    import zarr

    group = zarr.open_group(str(out_dir / f"{collection}.zarr"), mode="r")
    start = int(shard) * size
    return {k: np.asarray(zarr_array(group, k)[start : start + size]) for k in ("pixels", *NORM_KEYS)}
