"""glibc's malloc kept from unmapping equal-size buffers: once per process, before the first read.

glibc serves an allocation of at least its mmap threshold with a fresh mapping and unmaps it when it
is freed. The threshold adapts only to sizes *above* the last one freed, so a stream of equal-size
buffers -- decoded tiles, the temporaries of one mask band after another -- is mapped and unmapped
every time, and every page is faulted in again. On the 2-core VMs we measure on a page fault costs
about 2.4 us: classifying the SCL of a Sentinel-2 scene faulted 13,000 pages (30 ms for 3 ms of
work), and remote ``create_index`` took 0.17 s instead of 0.14 s (benchmarks/bench_remote.py).

:func:`tune_malloc` sets a fixed mmap threshold of 32 MB (glibc's largest) and a trim threshold of
128 MB: buffers below 32 MB come from the heap and are reused, and at most 128 MB of freed heap is
kept for reuse before it is returned. ``STACCHIP_MALLOC_TUNING=0`` leaves malloc alone, and so does
any ``MALLOC_*`` variable of the process (the user tuned it). Nothing happens off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading

from stacchip_assets.io.settings import malloc_tuning_enabled

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 128 * 1024 * 1024

_done: int | None = None  # the pid it was decided for
_applied = False
_lock = threading.Lock()


def tune_malloc() -> bool:
    """Apply the thresholds once per process (if enabled and on glibc); True if they are in force."""
    global _done, _applied
    with _lock:
        if _done == os.getpid():
            return _applied
        _done, _applied = os.getpid(), False
        if not malloc_tuning_enabled() or any(name.startswith("MALLOC_") for name in os.environ):
            return False
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # not glibc
            return False
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
            mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
        log.debug("malloc thresholds %s", "set" if _applied else "refused by libc")
        return _applied

