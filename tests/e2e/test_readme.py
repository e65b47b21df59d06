"""The README runs as written: after its main command, every ```python block runs from the repository
root, except those that start with `# not run: <what it needs>`. Also: the main command's summary says
where the sample catalog and every output are, and those places exist.

The main job runs in a temporary folder standing in for the repository root (it writes `./.dagster_home`
there, never in the repository); each block is saved there as a script and run with `python`, as a
reader would."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT

ROOT = PROJECT
README = (ROOT / "README.md").read_text()
#: ```python fenced blocks, in order
BLOCKS = re.findall(r"^```python\n(.*?)^```\s*$", README, flags=re.S | re.M)
NOT_RUN = re.compile(r"^# not run: \S.*")

pytestmark = pytest.mark.timeout(900)  # the main job (sample generation included) and a Dask cluster


def clean_env() -> dict[str, str]:
    """The environment of a new shell: no STACCHIP_* or DAGSTER_* settings (PYTHONPATH kept, so the
    code under test is imported)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("STACCHIP_", "DAGSTER_"))}


@pytest.fixture(scope="module")
def after_main(tmp_path_factory) -> tuple[Path, str]:
    """A folder where `python -m stacchip_assets.demo.main` ran with the defaults; its output."""
    work = tmp_path_factory.mktemp("readme")
    result = subprocess.run([sys.executable, "-m", "stacchip_assets.demo.main"], cwd=work, env=clean_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return work, result.stdout


def test_the_readme_has_python_blocks_and_says_why_any_is_not_run():
    assert len(BLOCKS) >= 4
    for block in BLOCKS:
        compile(block, "README.md", "exec")  # even the ones not run are valid Python
        if "not run" in block.splitlines()[0]:
            assert NOT_RUN.match(block.splitlines()[0]), block.splitlines()[0]
    assert sum(not NOT_RUN.match(b) for b in BLOCKS) >= 3


def located(out: str) -> dict[str, str]:
    """The `where everything is:` rows of the main job's summary: label -> value."""
    section = out.split("where everything is:\n", 1)[1]
    rows = [re.match(r"^  ([a-zA-Z ]+):\s+(.*)$", line) for line in section.splitlines()]
    return {m.group(1): m.group(2) for m in rows if m}


def test_the_summary_says_where_the_sample_catalog_and_every_output_are(after_main):
    work, out = after_main
    where = located(out)
    home = work / ".dagster_home"
    base = home / "stacchip"
    assert where["sample catalog"] == str(home / "stacchip_sample" / "catalog.json")
    assert Path(where["sample catalog"]).is_file()
    assert where["Dagster home"].split(" (")[0] == str(home) and (home / "dagster.yaml").is_file()
    assert where["storage base"] == str(base)
    s2, item = "sentinel-2-l2a", "S2B_31UDQ_20230704_0_L2A"  # the README's item: every pattern holds for it
    for label in ("item sets", "stored items", "chip indexes", "quicklooks", "combined index"):
        path = where[label].split(" (")[0].replace("{collection}", s2).replace("{item_id}", item)
        assert Path(path).is_file(), (label, path)
    for label in ("training sets", "chip queries"):  # written by other jobs later, under the same base
        assert where[label].startswith(f"{base}/"), where[label]
    assert (work / ".dagster_home" / "stacchip_sample" / s2 / item / f"{item}.json").is_file()
    assert f"combined index: {base / 'combined'}" in out


@pytest.mark.parametrize("number", range(len(BLOCKS)))
def test_readme_python_block_runs_as_written(after_main, number):
    block = BLOCKS[number]
    if NOT_RUN.match(block.splitlines()[0]):
        pytest.skip(f"README block {number + 1}: {block.splitlines()[0]}")
    work, _ = after_main
    script = work / f"readme_block_{number + 1}.py"
    script.write_text(block)
    result = subprocess.run([sys.executable, script.name], cwd=work, env=clean_env(), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, f"README block {number + 1}:\n{block}\n{result.stdout[-2000:]}{result.stderr[-4000:]}"
