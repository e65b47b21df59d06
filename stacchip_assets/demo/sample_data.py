"""Deterministic synthetic sample data: real Cloud Optimized GeoTIFFs plus a static STAC catalog.

Why: the test suite and the Dagster code location's embedded default both need a small catalog of
*real* COGs (several sensors, with clouds and nodata, different CRS encodings) that exists on a fresh
machine with no network. Everything here is a pure function of fixed seeds, so two runs write
byte-identical COGs and identical item JSON, and the output is published atomically: it is written
into a temporary sibling folder and renamed into place, so a half-written catalog is never visible.

Layout written under ``out_dir`` (pystac "best practices", self-contained, relative hrefs)::

    catalog.json
    {collection_id}/collection.json
    {collection_id}/{item_id}/{item_id}.json
    {collection_id}/{item_id}/{asset_key}.tif       (COG; "thumbnail.png" for the thumbnail)
    .stacchip_sample.json                          (completion marker, written last)

Usage: ``python -m stacchip_assets.demo.sample_data [OUT_DIR]`` prints the catalog.json path.

This module is the public entry point and the CLI; the work is split by concern:
:mod:`~stacchip_assets.demo.sample_catalog` (catalog assembly, atomic publication, ensure/generate API),
:mod:`~stacchip_assets.demo.sensors_s2`, ``sensors_landsat``, ``sensors_naip``, ``sensors_s1``,
``sensors_modis`` (one builder per sensor), :mod:`~stacchip_assets.demo.stac_items` (STAC helpers),
:mod:`~stacchip_assets.demo.cog_writer` (COG/PNG writers) and
:mod:`~stacchip_assets.demo.synthetic_fields` (seeded random fields).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from stacchip_assets.demo.cog_writer import BLOCK_SIZE
from stacchip_assets.demo.sample_catalog import (
    CATALOG_ID,
    MARKER_NAME,
    SAMPLE_COLLECTIONS,
    SAMPLE_DATA_VERSION,
    default_sample_dir,
    ensure_sample_catalog,
    generate_sample_catalog,
    sample_item_paths,
)
from stacchip_assets.demo.sensors_modis import MODIS_500M, MODIS_QC_FILL, MODIS_REFL_FILL, MODIS_SINUSOIDAL
from stacchip_assets.demo.sensors_s1 import S1_NODATA
from stacchip_assets.demo.sensors_s2 import _build_s2  # noqa: F401 - old private name, patch sensors_s2
from stacchip_assets.demo.stac_items import (
    COG_MEDIA_TYPE,
    EO_EXT,
    GRID_EXT,
    MGRS_EXT,
    PNG_MEDIA_TYPE,
    PROJ_V2,
    PROJ_V11,
    RASTER_EXT,
    S2_EXT,
    SAR_EXT,
    SAT_EXT,
)

__all__ = [
    "SAMPLE_DATA_VERSION",
    "SAMPLE_COLLECTIONS",
    "generate_sample_catalog",
    "default_sample_dir",
    "ensure_sample_catalog",
    "sample_item_paths",
    "main",
    # constants of the split modules, still reachable here (tests and older callers read them from this path)
    "BLOCK_SIZE", "CATALOG_ID", "COG_MEDIA_TYPE", "EO_EXT", "GRID_EXT", "MARKER_NAME", "MGRS_EXT", "MODIS_500M",
    "MODIS_QC_FILL", "MODIS_REFL_FILL", "MODIS_SINUSOIDAL", "PNG_MEDIA_TYPE", "PROJ_V2", "PROJ_V11", "RASTER_EXT",
    "S1_NODATA", "S2_EXT", "SAR_EXT", "SAT_EXT",
]


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: generate (if needed) the sample catalog and print its catalog.json path."""
    parser = argparse.ArgumentParser(
        prog="python -m stacchip_assets.demo.sample_data",
        description="Write the deterministic stacchip-assets sample catalog (real COGs + static STAC).",
    )
    parser.add_argument("out_dir", nargs="?", default=None,
                        help="output folder (default: $STACCHIP_SAMPLE_DIR, $DAGSTER_HOME/stacchip_sample "
                             "or ~/.cache/stacchip_assets/sample)")
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    args = parser.parse_args(argv)
    out_dir = args.out_dir if args.out_dir is not None else default_sample_dir()
    print(generate_sample_catalog(out_dir, force=args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
