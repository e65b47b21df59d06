"""io.settings: every STACCHIP_* variable read in one place, names and defaults as the README says."""

import ast
import pathlib

import pytest

from stacchip_assets.core.limits import ReadLimits
from stacchip_assets.errors import StacchipError
from stacchip_assets.io.settings import Settings, load_settings, read_limits

from tests.conftest import PROJECT

PACKAGE = PROJECT / "stacchip_assets"


def test_defaults_with_an_empty_environment():
    s = load_settings({})
    assert (s.executor, s.sensor_interval_seconds, s.combined_interval_seconds, s.backfill_partitions_per_run) == (
        "in_process", 60, 30, 100)
    assert s.limits == ReadLimits()
    assert s.collections is None and s.collections_file is None and s.dask_scheduler is None
    assert s.default_base == str(pathlib.Path(".dagster_home").absolute() / "stacchip")
    assert {k: dict(v) for k, v in s.resources.items()} == {"stac_source": {}, "storage": {}, "chip_settings": {}}


def test_values_are_read_and_parsed():
    s = load_settings({
        "STACCHIP_EXECUTOR": " Multiprocess ", "STACCHIP_SENSOR_INTERVAL_SECONDS": "5",
        "STACCHIP_COMBINED_INTERVAL_SECONDS": "0", "STACCHIP_BACKFILL_PARTITIONS_PER_RUN": "25",
        "STACCHIP_MAX_CHIP_SIZE": "512", "STACCHIP_STORAGE_BASE": "s3://b/p", "DAGSTER_HOME": "/x",
        "STACCHIP_GDAL_OPTIONS": '{"GDAL_HTTP_MAX_RETRY": 5}', "STACCHIP_CHIP_MAX_NODATA": "0.25",
        "STACCHIP_CHIP_SIZE": "128", "STACCHIP_SAMPLE_DIR": "/tmp/sample",
    })
    assert s.executor == "multiprocess"
    assert (s.sensor_interval_seconds, s.combined_interval_seconds, s.backfill_partitions_per_run) == (5, 1, 25)
    assert s.limits.max_chip_size == 512 and s.limits.max_tile_pixels == ReadLimits().max_tile_pixels
    assert s.default_base == "s3://b/p"
    assert s.default_sample_dir == pathlib.Path("/tmp/sample")
    assert s.resources["storage"]["gdal_options"] == ("STACCHIP_GDAL_OPTIONS", {"GDAL_HTTP_MAX_RETRY": "5"})
    assert s.resources["chip_settings"] == {"chip_max_nodata": ("STACCHIP_CHIP_MAX_NODATA", 0.25),
                                           "chip_size": ("STACCHIP_CHIP_SIZE", "128")}
    with pytest.raises(AttributeError):
        s.executor = "k8s"  # frozen


@pytest.mark.parametrize("name, value, message", [
    ("STACCHIP_SENSOR_INTERVAL_SECONDS", "soon", "STACCHIP_SENSOR_INTERVAL_SECONDS must be a whole number of seconds"),
    ("STACCHIP_BACKFILL_PARTITIONS_PER_RUN", "0", "STACCHIP_BACKFILL_PARTITIONS_PER_RUN='0' must be a whole number"),
    ("STACCHIP_MAX_MASK_PIXELS", "many", "STACCHIP_MAX_MASK_PIXELS='many' is not an integer"),
    ("STACCHIP_GDAL_OPTIONS", "[1]", "STACCHIP_GDAL_OPTIONS must be a JSON object"),
    ("STACCHIP_CHIP_MAX_NODATA", "half", "STACCHIP_CHIP_MAX_NODATA must be a number"),
])
def test_a_malformed_value_names_its_variable(name, value, message):
    with pytest.raises(StacchipError, match=message):
        load_settings({name: value})


def test_read_limits_uses_the_process_environment(monkeypatch):
    monkeypatch.setenv("STACCHIP_MAX_CHIPS_PER_ITEM", "7")
    assert read_limits().max_chips_per_item == 7
    assert read_limits({}, max_chip_size=9) == ReadLimits(max_chip_size=9)
    assert Settings().limits == ReadLimits()


def test_no_other_module_reads_the_environment_for_stacchip_variables():
    """os.environ / os.getenv appear outside io/settings.py only where they are not STACCHIP_* reads."""
    readers = []
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).as_posix() == "io/settings.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("os.environ.get", "os.getenv"):
                arg = ast.unparse(node.args[0]) if node.args else ""
                if "STACCHIP" in arg or arg.isupper() and not arg.startswith(("'", '"')):
                    readers.append(f"{path.relative_to(PACKAGE)}: {ast.unparse(node)}")
    assert readers == []


def test_core_limits_does_not_import_os():
    tree = ast.parse((PACKAGE / "core" / "limits.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "os" not in imported
