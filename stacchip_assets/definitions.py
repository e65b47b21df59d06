"""The Dagster code location (``[tool.dagster] module_name``, ``workspace.yaml``): ``defs``."""

from stacchip_assets.dagster_defs import build_definitions

defs = build_definitions()
