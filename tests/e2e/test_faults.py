"""kill -9 in the middle of writing: no partial file is ever visible, and a re-run ends equal to a clean run.

A child process indexes every sample item and updates the combined index, over and over; the test
kills its whole process group with SIGKILL at staggered moments, then checks what a reader would see.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from stacchip_assets.demo.sample_data import generate_sample_catalog

WORKER = textwrap.dedent(
    """
    import sys, pystac
    from stacchip_assets.index.combined import CombinedIndex
    from stacchip_assets.index.item_index import index_item
    from stacchip_assets.demo.sample_data import sample_item_paths
    from stacchip_assets.io.storage import Storage

    catalog, base, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    storage = Storage(base)
    items = [pystac.Item.from_file(str(p)) for p in sample_item_paths(catalog).values()]
    for _ in range(rounds):
        for item in items:
            index_item(item, storage)
            CombinedIndex(storage).update([(item.collection_id, item.id)])
    print("done", flush=True)
    """
)


def run_worker(catalog: Path, base: Path, rounds: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(catalog), str(base), str(rounds)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )


def visible_parquet(base: Path) -> list[Path]:
    """What a reader sees: parquet files not hidden by a leading dot or underscore."""
    return [
        p for p in base.rglob("*.parquet")
        if not any(part.startswith((".", "_")) for part in p.relative_to(base).parts)
    ]


def chip_ids(base: Path) -> list[str]:
    table = pads.dataset(str(base / "combined"), format="parquet").to_table(columns=["chipid"])
    return sorted(table["chipid"].to_pylist())


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    return generate_sample_catalog(tmp_path_factory.mktemp("faults") / "catalog")


@pytest.fixture(scope="module")
def clean(catalog, tmp_path_factory) -> tuple[Path, list[str], dict[str, int]]:
    base = tmp_path_factory.mktemp("clean") / "base"
    worker = run_worker(catalog, base, 1)
    out, err = worker.communicate(timeout=300)
    assert worker.returncode == 0, err.decode()[-2000:]
    rows = {str(p.relative_to(base)): pq.read_metadata(p).num_rows for p in visible_parquet(base)}
    return base, chip_ids(base), rows


@pytest.mark.parametrize("delay", [0.9, 1.3, 2.0, 2.6, 3.3])
def test_kill_9_while_writing_leaves_only_whole_files_and_a_rerun_catches_up(catalog, clean, tmp_path, delay):
    _, clean_ids, clean_rows = clean
    base = tmp_path / "base"
    worker = run_worker(catalog, base, rounds=50)
    time.sleep(delay)
    assert worker.poll() is None, "the worker must still be writing when it is killed"
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(timeout=30)
    # Every file a reader can see is whole and has exactly the rows of the clean run's same file.
    for path in visible_parquet(base):
        key = str(path.relative_to(base))
        assert pq.read_metadata(path).num_rows == clean_rows[key], key
        pq.read_table(path)  # every page decodes
    # A re-run (one round) ends exactly where a clean run ends: no chip lost, none twice.
    rerun = run_worker(catalog, base, 1)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err.decode()[-2000:]
    assert chip_ids(base) == clean_ids
    assert len(set(clean_ids)) == len(clean_ids)
    assert {str(p.relative_to(base)): pq.read_metadata(p).num_rows for p in visible_parquet(base)} == clean_rows
