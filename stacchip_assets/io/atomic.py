"""The one atomic-write helper: readers see the old file or the new one, never half of one.

Local files are written to a temporary in a folder on the target's filesystem and renamed over the
target (``os.replace``, atomic on POSIX). The temporary is named ``{host}.{pid}.{random}.tmp`` so that a
writer killed mid-write can be recognised later: :func:`remove_stale_temporaries` deletes the
temporaries whose writer process is dead (same host) or that are older than a day (another host).
A storage base keeps its temporaries in ``{base}/.tmp/`` (see :mod:`stacchip_assets.io.storage`,
which also does the S3 side: one PUT per object, visible only once complete); a path outside any base
uses a hidden sibling ``.{host}.{pid}.{random}.tmp`` of the target. Readers skip every hidden path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

#: Hidden folder that holds the temporaries of writes in progress (``{base}/.tmp`` of a storage base).
TMP_DIR = ".tmp"
#: Temporaries of another host whose liveness cannot be checked are removed after this long.
FOREIGN_TMP_MAX_AGE_SECONDS = 24 * 3600
_TMP_NAME = re.compile(r"^\.?(?P<host>[A-Za-z0-9-]{1,64})\.(?P<pid>\d+)\.[0-9a-f]{12}\.tmp$")


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname() or "host")[:64] or "host"


def _process_alive(pid: int) -> bool:
    """Whether process `pid` of this host is running (a zombie, killed but not yet reaped, is dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def temp_name() -> str:
    """Name of a temporary file of this process: ``{host}.{pid}.{random}.tmp``."""
    return f"{_host_tag()}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp"


def _is_stale(entry: os.DirEntry, host: str, now: float) -> bool:
    match = _TMP_NAME.match(entry.name)
    if match is None or entry.is_symlink():
        return False
    if match["host"] == host:
        return not _process_alive(int(match["pid"]))
    try:
        return now - entry.stat(follow_symlinks=False).st_mtime > FOREIGN_TMP_MAX_AGE_SECONDS
    except FileNotFoundError:
        return False


def remove_stale_temporaries(folder: str | os.PathLike) -> list[str]:
    """Delete the temporaries (files, or staging folders of :func:`atomic_directory`) named
    ``[.]{host}.{pid}.{random}.tmp`` in `folder` whose writer is dead: same host and no such process, or
    another host and older than FOREIGN_TMP_MAX_AGE_SECONDS. Returns the names removed."""
    removed: list[str] = []
    try:
        entries = list(os.scandir(os.fspath(folder)))
    except FileNotFoundError:
        return removed
    host, now = _host_tag(), time.time()
    for entry in entries:
        if _is_stale(entry, host, now):
            with contextlib.suppress(FileNotFoundError):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed.append(entry.name)
    if removed:
        log.info("removed %d temporaries of killed writers from %s", len(removed), folder)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, tmp_dir: str | os.PathLike | None = None) -> Iterator[str]:
    """A temporary path for the local file `path`: write the file there inside the block; on a clean
    exit it is renamed over `path` (atomic), on an error it is removed.

    `tmp_dir` must be on the target's filesystem (a storage base passes its ``{base}/.tmp``); without it
    the temporary is a hidden sibling ``.{host}.{pid}.{random}.tmp`` of the target. For writers that want
    a path (pyarrow, zipfile, numpy); :func:`atomic_write_bytes` uses it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if tmp_dir is not None:
        Path(tmp_dir).mkdir(parents=True, exist_ok=True)
        tmp = Path(tmp_dir) / temp_name()
    else:
        tmp = target.parent / f".{temp_name()}"
    try:
        yield str(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, tmp_dir: str | os.PathLike | None = None) -> str:
    """Write `data` to the local file `path` atomically (see :func:`atomic_path`); returns the path.
    (S3 objects need no temporary: ``Storage.write_bytes`` sends them in one PUT.)"""
    with atomic_path(path, tmp_dir) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
    return str(path)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """A staging folder for the folder `path`: fill it inside the block; on a clean exit it takes the
    place of `path`, on an error it is removed. The staging folder is a hidden sibling
    ``.{host}.{pid}.{random}.tmp`` (same filesystem); a previous `path` is renamed aside and deleted
    after the swap, so readers see the old folder or the new one (for a moment, none). Checks such as
    "refuse to replace a foreign folder" belong inside the block, where raising discards the stage."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = target.parent / f".{temp_name()}"
    stage.mkdir()
    try:
        yield stage
        old = None
        if target.exists() or target.is_symlink():
            old = target.parent / f".{temp_name()}"
            os.replace(target, old)
        os.replace(stage, target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


__all__ = [
    "FOREIGN_TMP_MAX_AGE_SECONDS", "TMP_DIR", "atomic_directory", "atomic_path", "atomic_write_bytes", "remove_stale_temporaries",
    "temp_name",
]
