"""Running tasks in this process or on Dask workers, with the same results either way.

Work is split into tasks of whole consecutive shards of one collection (about ``chips_per_task``
chips, so one item or a group of items); each task opens its own datasets and writes its shards under
their final, deterministic names. With a ``distributed.Client`` the tasks run on Dask workers, without
one they run in this process: the files are byte-identical either way. Workers must see ``out_dir``
(a local folder on a ``LocalCluster``, a shared file system otherwise).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

__all__ = ["dask_client", "run_tasks"]


def run_tasks(fn: Callable[..., Any], groups: Sequence[tuple[Sequence[Any], Mapping[str, Any]]], *,
              client: Any = None) -> list[Any]:
    """``fn(task, **kwargs)`` for every task of every ``(tasks, kwargs)`` group, in this process or
    on Dask workers (all groups submitted at once); results in group and task order either way."""
    if client is None:
        return [fn(task, **kwargs) for tasks, kwargs in groups for task in tasks]
    # retries: a task only writes its own shards under deterministic names (temp + rename), so
    # running it again after a lost worker gives the same files.
    futures = [f for tasks, kwargs in groups if tasks
               for f in client.map(fn, list(tasks), pure=False, retries=2, **kwargs)]
    try:
        return client.gather(futures)
    finally:
        for future in futures:
            future.release()


@contextlib.contextmanager
def dask_client(address: str | None = None, *, n_workers: int | None = None, threads_per_worker: int = 1,
                **cluster_options: Any) -> Iterator[Any]:
    """A ``distributed.Client``: connected to the scheduler at ``address``, or to a new
    ``LocalCluster`` of worker processes (``n_workers`` default: one per CPU, one thread each, as
    each task already reads assets in parallel threads). Closed (and the cluster stopped) on exit."""
    import distributed

    if address:
        with distributed.Client(address) as client:
            yield client
        return
    options = {"processes": True, "dashboard_address": None, **cluster_options}
    with distributed.LocalCluster(n_workers=n_workers or (os.cpu_count() or 1), threads_per_worker=threads_per_worker,
                                  **options) as cluster, distributed.Client(cluster) as client:
        yield client
