"""Upgrade-drift guard of the private Dagster API (issue 14): `dagster_defs/dagster_internals.py` is
the only module of the package that uses ``dagster._...``; this test fails, naming the helper, when a
Dagster upgrade moves or reshapes one of the names it relies on."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re

import dagster as dg
import pytest

from stacchip_assets.dagster_defs.dagster_internals import PRIVATE_NAMES

from tests.conftest import PROJECT
from tests.support.dagster_support import in_memory_instance

PACKAGE = PROJECT / "stacchip_assets"


@pytest.mark.parametrize("module, name, expected", PRIVATE_NAMES, ids=[n for _, n, _ in PRIVATE_NAMES])
def test_each_private_dagster_name_still_has_the_shape_we_use(module, name, expected):
    try:
        target = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"dagster {dg.__version__} moved {module}.{name}, which "
                    f"stacchip_assets/dagster_defs/dagster_internals.py uses: {exc}")
    if inspect.isclass(target):
        fields = getattr(target, "_fields", None) or (
            [f.name for f in dataclasses.fields(target)] if dataclasses.is_dataclass(target)
            else list(inspect.signature(target).parameters))
        assert set(expected) <= set(fields), f"dagster {dg.__version__}: {name} fields are now {fields}"
    else:
        params = list(inspect.signature(target).parameters)
        assert params[:len(expected)] == list(expected), f"dagster {dg.__version__}: {name}{params}"


def test_only_dagster_internals_uses_private_dagster_names():
    pattern = re.compile(r"^\s*(from|import)\s+dagster\._", re.M)
    users = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if pattern.search(p.read_text()))
    assert users == ["dagster_defs/dagster_internals.py"]


def test_the_tags_we_build_are_those_dagster_puts_on_a_materialization():
    """One single-partition run: the provenance tags of its output's materialization are what
    `provenance_tags` builds in the same step (so a batch's partitions look like a run's)."""
    from stacchip_assets.dagster_defs.dagster_internals import provenance_tags

    built: dict[str, str] = {}

    @dg.asset(code_version="7")
    def upstream() -> int:
        return 1

    @dg.asset(code_version="3")
    def downstream(context, upstream: int) -> int:
        built.update(provenance_tags(context, dg.AssetKey("downstream"), "3"))
        return upstream

    with in_memory_instance() as instance:
        assert dg.materialize([upstream, downstream], instance=instance).success
        tags = instance.get_latest_materialization_event(dg.AssetKey("downstream")).asset_materialization.tags
    expected = {k: v for k, v in tags.items() if k != "dagster/data_version"}
    # the batch gives each partition its content hash as data version: user-provided, unlike this output's
    assert built.pop("dagster/data_version_is_user_provided") == "true"
    assert built == expected and "dagster/code_version" in built
    assert any(k.startswith("dagster/input_data_version/") for k in built)
