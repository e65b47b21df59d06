"""Jobs the distributed tests run, importable by Celery worker processes (a reconstructable pointer).

The catalog and the storage base come from the environment the test gives the workers too:
STACCHIP_STAC_CATALOG, STACCHIP_STORAGE_BASE, STACCHIP_EXECUTOR and STACCHIP_TEST_COG_ROOT (the folder of
the COGs the items name).
"""

from __future__ import annotations

import os

from stacchip_assets.dagster_defs import ChipSettingsResource, StacSourceResource, StorageResource, build_definitions
from stacchip_assets.dagster_defs.presets import load_collections


def chip_index_job():
    """chip_index_job over the naip collection of STACCHIP_STAC_CATALOG, written to STACCHIP_STORAGE_BASE."""
    collections = [c for c in load_collections() if c.collection == "naip"]
    resources = {
        "stac_source": StacSourceResource(catalog_path=os.environ["STACCHIP_STAC_CATALOG"],
                                          allowed_local_roots=[os.environ["STACCHIP_TEST_COG_ROOT"]]),
        "storage": StorageResource(base=os.environ["STACCHIP_STORAGE_BASE"]),
        "chip_settings": ChipSettingsResource(),
    }
    return build_definitions(collections=collections, resources=resources).resolve_job_def("chip_index_job")
