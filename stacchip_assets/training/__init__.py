"""Training shards from a chip index: selection, whole-item extraction, npz / Zarr shards, manifest.

Pure library (no Dagster). The Dagster layer wires these functions into assets::

    from stacchip_assets.training import TrainingSetConfig, select_chips, write_training_set

    config = TrainingSetConfig(bands={"sentinel-2-l2a": ["blue", "green", "red", "nir"]},
                               max_cloud=0.2, sample_size=10_000, seed=42)
    selection = select_chips(combined_index, config)          # filters + seeded sampling
    manifest = write_training_set(selection, config, "out/")  # shards + manifest.parquet
    manifest = write_training_set(selection, config, "out/", client=dask_client)  # same bytes

What it improves on stacchip's ``prechip``
------------------------------------------
- Sampling is **without replacement** (prechip drew ``randint`` rows, so chips repeated);
  ``allow_duplicates=True`` restores sampling with replacement.
- Chips are grouped by item: the item JSON is loaded once per item (per task), each asset is opened
  once (one :class:`~stacchip_assets.index.chipper.Chipper` per item), and chips are read in grid order,
  a band of chip rows per call, so each COG block is decoded once (prechip reloaded the item and
  reopened every file for every chip, and decoded each 512 px block four times for 256 px chips).
- Each chip keeps its acquisition hour (the index's ``datetime`` column); prechip read the ``date``
  column and forced noon.
- The last, partial shard is written (prechip dropped incomplete cubes).
- ``lat_norm`` holds latitude and ``lon_norm`` longitude. prechip swapped them
  (``lon_norm, lat_norm = normalize_latlon(bounds)`` while the function returns ``(lat, lon)``);
  ``legacy_latlon_swap=True`` reproduces that for models trained on prechip cubes.


Modules (each one concern; the arrows point one way, config -> ... -> training_set)
--------------------------------------------------------------------------------
- :mod:`.config`        :class:`TrainingSetConfig`, the folder's names and format version
- :mod:`.tables`        Arrow helpers shared by the steps below
- :mod:`.metadata`      normalized lon/lat/week/hour (prechip's formulas, vectorized)
- :mod:`.selection`     filters, seeded sampling, training order (:func:`select_chips`)
- :mod:`.plan`          which chip goes to which shard and position; tasks of whole shards
- :mod:`.layout`        the channels of a collection's samples
- :mod:`.extract`       whole-item pixel extraction (one Chipper per item, blocks decoded once)
- :mod:`.distributed`   tasks in this process or on Dask workers (:func:`dask_client`), same bytes
- :mod:`.band_stats`    per-band statistics in the same pass
- :mod:`.shards`        npz / Zarr shard writers
- :mod:`.training_set`  the folder: written atomically, read back (manifest, info, shards)
- :mod:`.torch`         PyTorch datasets over an index or a written training set
"""

from __future__ import annotations

# The public API (``__all__``), then the pipeline's steps, importable from here as before (``X as X``:
# an explicit re-export) for tests, benchmarks and notebooks; new code imports them from their module.
from stacchip_assets.index.reader import load_item  # the stored item JSON (local, http(s) or s3://)
from stacchip_assets.training.config import FORMAT_VERSION as FORMAT_VERSION
from stacchip_assets.training.config import INFO_NAME as INFO_NAME
from stacchip_assets.training.config import MANIFEST_NAME as MANIFEST_NAME
from stacchip_assets.training.config import NORM_KEYS, TrainingSetConfig
from stacchip_assets.training.config import REQUIRED_COLUMNS as REQUIRED_COLUMNS
from stacchip_assets.training.distributed import dask_client
from stacchip_assets.training.distributed import run_tasks as run_tasks
from stacchip_assets.training.extract import batch_rows as batch_rows
from stacchip_assets.training.extract import chip_indexer as chip_indexer
from stacchip_assets.training.extract import collection_layouts, iter_item_chips
from stacchip_assets.training.extract import iter_task_pixels as iter_task_pixels
from stacchip_assets.training.layout import ChannelSpec, CollectionLayout
from stacchip_assets.training.layout import check_layout as check_layout
from stacchip_assets.training.layout import layout_from_chipper as layout_from_chipper
from stacchip_assets.training.metadata import chip_centres as chip_centres
from stacchip_assets.training.metadata import chip_norms, normalize_latlon, normalize_timestamp
from stacchip_assets.training.metadata import iso_week as iso_week
from stacchip_assets.training.metadata import timestamps_micros as timestamps_micros
from stacchip_assets.training.metadata import utc_hour as utc_hour
from stacchip_assets.training.plan import ChipTask as ChipTask
from stacchip_assets.training.plan import make_tasks as make_tasks
from stacchip_assets.training.plan import plan_training_set
from stacchip_assets.training.selection import select_chips, training_order
from stacchip_assets.training.shards import create_zarr_group as create_zarr_group
from stacchip_assets.training.tables import as_table as as_table
from stacchip_assets.training.tables import string_column as string_column
from stacchip_assets.training.training_set import load_shard, read_manifest, read_training_set_info, write_training_set

__all__ = [
    "NORM_KEYS", "ChannelSpec", "CollectionLayout", "TrainingSetConfig", "chip_norms", "collection_layouts",
    "dask_client", "iter_item_chips", "load_item", "load_shard", "normalize_latlon", "normalize_timestamp",
    "plan_training_set", "read_manifest", "read_training_set_info", "select_chips", "training_order",
    "write_training_set",
]
