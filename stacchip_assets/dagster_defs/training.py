"""Training data assets: shards fed by the combined index, and per-band statistics (wiring only).

The work is done by `stacchip_assets.training` and `stacchip_assets.training.band_stats`; this module reads the
combined index, passes the configuration, picks the Dask client from `DaskResource` and reports
metadata. Outputs go to `{base}/training/{name}/` (a local or shared folder the Dask workers see).
"""


import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, cast

import pyarrow.compute as pc
from dagster import (
    AssetExecutionContext,
    AssetKey,
    Config,
    ConfigurableResource,
    EnvVar,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from stacchip_assets.core.ids import validate_id
from stacchip_assets.dagster_defs.assets import COMBINED_INDEX_KEY
from stacchip_assets.dagster_defs.pictures import column_lineage
from stacchip_assets.dagster_defs.presets import CollectionConfig
from stacchip_assets.dagster_defs.resources import StacSourceResource, StorageResource
from stacchip_assets.index.combined import read_combined
from stacchip_assets.io.settings import DASK_SCHEDULER_ENV, Settings, load_settings
from stacchip_assets.training import TrainingSetConfig, dask_client, read_manifest, select_chips, write_training_set
from stacchip_assets.training.band_stats import (
    band_statistics,
    band_statistics_markdown,
    write_band_statistics_json,
    write_band_statistics_parquet,
)

TRAINING_SET_KEY = AssetKey("training_set")
BAND_STATISTICS_KEY = AssetKey("band_statistics")
#: Mask assets are inputs of the statistics, not model bands.
MASK_ASSETS = {"scl", "SCL", "qa_pixel", "QA_PIXEL", "sur_refl_qc_500m"}


class DaskResource(ConfigurableResource):
    """Where pixel extraction runs: a new LocalCluster of worker processes (default), an existing
    scheduler (`scheduler_address`, e.g. tcp://scheduler:8786), or in this process (`enabled: false`)."""

    enabled: bool = Field(default=True, description="false: extract in the run process")
    scheduler_address: str | None = Field(default=None, description="an existing Dask scheduler")
    n_workers: int = Field(default=2, description="worker processes of the LocalCluster")

    @contextlib.contextmanager
    def client(self) -> Iterator[Any]:
        """A `distributed.Client` for the duration of the block, or None when disabled."""
        if not self.enabled:
            yield None
            return
        with dask_client(self.scheduler_address, n_workers=self.n_workers) as client:
            yield client


def default_dask_resource(settings: Settings | None = None) -> DaskResource:
    """The dask resource: an existing scheduler if `STACCHIP_DASK_SCHEDULER` is set (from `io.settings`),
    else a local cluster started per run."""
    settings = load_settings() if settings is None else settings
    if settings.dask_scheduler:
        return DaskResource(scheduler_address=EnvVar(DASK_SCHEDULER_ENV))
    return DaskResource()


class TrainingSetSettings(Config):
    """What goes into a training set (see `stacchip_assets.training.TrainingSetConfig`)."""

    name: str = Field(default="default", description="folder under {base}/training/")
    bands: dict[str, list[str]] | None = Field(
        default=None, description="asset keys per collection, in channel order (default: each collection's kept assets, masks excluded)"
    )
    collections: list[str] | None = None
    max_cloud: float | None = None
    max_nodata: float | None = None
    start: str | None = Field(default=None, description="ISO date or datetime, inclusive")
    end: str | None = Field(default=None, description="ISO date or datetime, inclusive")
    bbox: list[float] | None = Field(default=None, description="[west, south, east, north] in degrees")
    sample_size: int | None = Field(default=None, description="chips to draw without replacement (default: all)")
    shard_size: int = 128
    seed: int = 42
    format: str = Field(default="npz", description="npz (as stacchip's prechip wrote it) or zarr")

    def to_core(self, collections: list[CollectionConfig]) -> TrainingSetConfig:
        bands = self.bands
        if bands is None:
            bands = {c.collection: [a for a in (c.chips.assets or ()) if a not in MASK_ASSETS] for c in collections}
            bands = {k: v for k, v in bands.items() if v}
        return TrainingSetConfig(
            bands=bands, collections=self.collections, max_cloud=self.max_cloud, max_nodata=self.max_nodata,
            start=self.start, end=self.end, bbox=tuple(self.bbox) if self.bbox else None,
            sample_size=self.sample_size, shard_size=self.shard_size, seed=self.seed,
            format=cast(Literal["npz", "zarr"], self.format),  # Config fields are plain str; TrainingSetConfig checks it
        )


def _training_dir(storage: StorageResource, name: str) -> Path:
    base = storage.storage()
    if "://" in str(base.base):
        raise Failure(
            f"training sets are written to a local or shared folder the Dask workers can see, but the "
            f"storage base is {base.base}; run with a local STACCHIP_STORAGE_BASE for training data"
        )
    return Path(base.path(f"training/{validate_id(name, 'training set')}"))


def build_training_assets(collections: list[CollectionConfig]):
    """The `training_set` and `band_statistics` assets for the configured collections."""
    return _build_training_set(collections), _build_band_statistics(collections)


def _build_training_set(collections: list[CollectionConfig]):
    """The `training_set` asset: shards drawn from the combined index (Dask extraction)."""

    @asset(
        key=TRAINING_SET_KEY, deps=[COMBINED_INDEX_KEY], group_name="training", code_version="1",
        kinds={"numpy", "dask"},
        description="Shards of chips (npz as stacchip's prechip, or Zarr) drawn from the combined index, "
        "with a manifest tracing every sample to its chip id.",
    )
    def training_set(
        context: AssetExecutionContext, config: TrainingSetSettings, storage: StorageResource, dask: DaskResource,
        stac_source: StacSourceResource,
    ) -> MaterializeResult:
        core = config.to_core(collections)
        out_dir = _training_dir(storage, config.name)
        with storage.gdal_env():
            index = read_combined(storage.storage())
            selection = select_chips(index, core)
            context.log.info(
                "training set %r: %d of %d chips selected, writing %s shards of %d to %s",
                config.name, selection.num_rows, index.num_rows, core.format, core.shard_size, out_dir,
            )
            with dask.client() as client:
                context.log.info("extracting %s", f"on Dask ({client.dashboard_link})" if client else "in this process")
                # the stored item JSON is read again: its hrefs pass the code location's policy
                manifest = write_training_set(selection, core, out_dir, client=client, overwrite=True,
                                              href_policy=stac_source.href_policy())
        info = json.loads((out_dir / "training_set.json").read_text())
        per_collection = info["collections"]
        summary = "\n".join(
            ["| collection | samples | shards | channels |", "|---|---|---|---|"]
            + [f"| {c} | {v['samples']} | {v['shards']} | {len(v['layout']['channels'])} |" for c, v in sorted(per_collection.items())]
        )
        return MaterializeResult(
            metadata={
                "samples": manifest.num_rows,
                "shards": len(info["shards"]),
                "format": core.format,
                "path": MetadataValue.path(str(out_dir)),
                "config": MetadataValue.json(core.to_dict()),
                "summary": MetadataValue.md(summary),
                "dagster/row_count": manifest.num_rows,
                # the manifest's columns come from the combined index's (the samples' chip rows)
                "dagster/column_lineage": column_lineage(manifest.column_names, COMBINED_INDEX_KEY),
            }
        )

    return training_set


def _build_band_statistics(collections: list[CollectionConfig]):
    """The `band_statistics` asset: per collection and band statistics of a training set's chips."""

    @asset(
        key=BAND_STATISTICS_KEY, deps=[TRAINING_SET_KEY], group_name="training", code_version="1",
        kinds={"numpy"},
        description="Per collection and band: count, mean, std, min, max and percentiles over the training "
        "set's chips, nodata masked, in one streaming pass.",
    )
    def band_statistics_asset(
        context: AssetExecutionContext, config: TrainingSetSettings, storage: StorageResource, dask: DaskResource,
        stac_source: StacSourceResource,
    ) -> MaterializeResult:
        core = config.to_core(collections)
        out_dir = _training_dir(storage, config.name)
        manifest = read_manifest(out_dir)
        with storage.gdal_env():
            # The training set's chips exactly: the combined index's rows whose ids are in the manifest.
            index = read_combined(storage.storage())
            keys = pc.binary_join_element_wise(manifest["collection"], manifest["chipid"], "\x1f")
            in_set = pc.is_in(pc.binary_join_element_wise(index["collection"], index["chipid"], "\x1f"), value_set=keys)
            selection = index.filter(in_set)
            if selection.num_rows != manifest.num_rows:
                raise Failure(
                    f"the combined index holds {selection.num_rows} of the training set's {manifest.num_rows} chips; "
                    "re-materialize training_set"
                )
            with dask.client() as client:
                records = band_statistics(selection, core, client, href_policy=stac_source.href_policy())
        json_path = write_band_statistics_json(records, out_dir / "band_statistics.json")
        write_band_statistics_parquet(records, out_dir / "band_statistics.parquet")
        context.log.info("band statistics of %d bands written to %s", len(records), json_path)
        return MaterializeResult(
            metadata={
                "bands": len(records),
                "path": MetadataValue.path(str(json_path)),
                "statistics": MetadataValue.md(band_statistics_markdown(records)),
            }
        )

    return band_statistics_asset
