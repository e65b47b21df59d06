"""The only module that touches Dagster's private API (``dagster._...``), for the batch path.

Why: a chip_index run over a range of partitions reports each partition as its own
AssetMaterialization (own metadata, own data version) and its own check results. Dagster 1.13 has no
public way to (1) give such a materialization the provenance tags an output's materialization gets
(code version, input data versions and event pointers: without them the UI calls the partition
stale), nor (2) point a check result at the materialization it checks (the target a check gets when
it runs in the same step as the output). Both are built here with Dagster's own helpers.

Upgrading Dagster: `tests/dagster/test_dagster_internals.py` imports every name below and checks the
signatures and fields this module relies on; it fails loudly, naming the changed helper, when an
upgrade moves or reshapes one (README: "Private Dagster APIs"). Everything else uses public API.
"""

from __future__ import annotations

from typing import Any

from dagster import AssetExecutionContext, AssetKey, DataVersion

#: (module, name, parameters or fields relied on) of every private Dagster name used here.
PRIVATE_NAMES: list[tuple[str, str, tuple[str, ...]]] = [
    ("dagster._core.execution.plan.execute_step", "_get_input_provenance_data", ("asset_key", "step_context")),
    ("dagster._core.execution.plan.execute_step", "_build_data_version_tags",
     ("data_version", "code_version", "input_provenance_data", "data_version_is_user_provided")),
    ("dagster._core.definitions.asset_checks.asset_check_evaluation", "AssetCheckEvaluationTargetMaterializationData",
     ("storage_id", "run_id", "timestamp")),
]


def provenance_tags(context: AssetExecutionContext, asset_key: AssetKey, code_version: str) -> dict[str, str]:
    """The tags Dagster puts on an output's materialization of `asset_key` in this step (code version,
    input data versions and event pointers), without the data version (each partition adds its own)."""
    from dagster._core.execution.plan.execute_step import _build_data_version_tags, _get_input_provenance_data

    step = context.get_step_execution_context()
    provenance = _get_input_provenance_data(asset_key, step)
    tags = _build_data_version_tags(DataVersion("-"), code_version, provenance, True)
    return {k: v for k, v in tags.items() if k != "dagster/data_version"}


def check_target(storage_id: int, run_id: str, timestamp: float) -> Any:
    """The `target_materialization_data` of an AssetCheckEvaluation: the materialization it checks."""
    from dagster._core.definitions.asset_checks.asset_check_evaluation import (
        AssetCheckEvaluationTargetMaterializationData,
    )

    return AssetCheckEvaluationTargetMaterializationData(storage_id=storage_id, run_id=run_id, timestamp=timestamp)


__all__ = ["PRIVATE_NAMES", "check_target", "provenance_tags"]
