"""The one atomic-write helper (stacchip_assets.io.atomic): files and folders appear whole or not at all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from stacchip_assets.io import atomic
from stacchip_assets.io.atomic import atomic_directory, atomic_path, atomic_write_bytes, remove_stale_temporaries


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_write_bytes_replaces_the_target_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a" / "b.json"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["b.json"]


def test_a_failed_write_keeps_the_previous_file_and_removes_its_temporary(tmp_path):
    target = tmp_path / "t.parquet"
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError, match="half way"):
        with atomic_path(target, tmp_dir=tmp_path / ".tmp") as tmp:
            Path(tmp).write_bytes(b"half")
            raise RuntimeError("half way")
    assert target.read_bytes() == b"previous"
    assert list((tmp_path / ".tmp").iterdir()) == []


def test_pyarrow_writes_through_a_staged_path(tmp_path):
    import pyarrow as pa

    target = tmp_path / "x.parquet"
    with atomic_path(target) as tmp:
        assert Path(tmp).parent == tmp_path and Path(tmp).name.startswith(".")  # a hidden sibling
        pq.write_table(pa.table({"v": [1, 2, 3]}), tmp)
    assert pq.read_table(target).column("v").to_pylist() == [1, 2, 3]


def test_stale_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    host = atomic._host_tag()
    dead = tmp_path / f"{host}.{_dead_pid()}.0123456789ab.tmp"
    live = tmp_path / f"{host}.{os.getpid()}.0123456789ab.tmp"
    stage = tmp_path / f".{host}.{_dead_pid()}.ba9876543210.tmp"  # a staging folder of atomic_directory
    foreign_new = tmp_path / "otherhost.1.0123456789ab.tmp"
    unrelated = tmp_path / "notes.tmp"
    for path in (dead, live, foreign_new, unrelated):
        path.write_bytes(b"x")
    stage.mkdir()
    (stage / "inner.npz").write_bytes(b"x")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted([dead.name, stage.name])
    assert live.exists() and foreign_new.exists() and unrelated.exists() and not stage.exists()
    old = os.path.getmtime(foreign_new) - atomic.FOREIGN_TMP_MAX_AGE_SECONDS - 10
    os.utime(foreign_new, (old, old))
    assert remove_stale_temporaries(tmp_path) == [foreign_new.name]


def test_a_directory_is_swapped_whole_and_a_failed_one_discarded(tmp_path):
    out = tmp_path / "set"
    with atomic_directory(out) as stage:
        (stage / "a.txt").write_text("1")
    assert [p.name for p in out.iterdir()] == ["a.txt"]
    with atomic_directory(out) as stage:
        (stage / "b.txt").write_text("2")
    assert [p.name for p in out.iterdir()] == ["b.txt"]
    with pytest.raises(FileExistsError):
        with atomic_directory(out) as stage:
            (stage / "c.txt").write_text("3")
            raise FileExistsError("refused")
    assert [p.name for p in out.iterdir()] == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["set"]
