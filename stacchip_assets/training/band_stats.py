"""Per-band statistics of a chip selection, for input normalization: one streaming pass.

    from stacchip_assets.training.band_stats import band_statistics, write_band_statistics_json
    records = band_statistics(selection, config)              # or client=dask_client
    write_band_statistics_json(records, "band_statistics.json")

One record per (collection, channel), channels as in the training set (``config.bands``, multi-band
assets expanded): ``count``, ``mean``, ``std`` (population, ddof=0, as stacchip's ``stats``),
``min``, ``max``, ``masked`` (pixels left out as nodata) and percentiles ``p1 p2 p5 p25 p50 p75
p95 p98 p99``.

How
---
- Pixels come from the same whole-item extraction as the training shards (chips grouped by item,
  read in grid order, each block decoded once); values are the assets' native values (a float32
  shard holds exactly these numbers for integer assets up to 24 bits).
- Nodata: a pixel is left out of a channel when it equals the asset's nodata value as declared in
  the COG of *that item* (``dataset.nodata``; stacchip hard-coded 0, -32768, -28672 per sensor),
  or is NaN/inf. Assets without a nodata value (NAIP) keep every pixel. The item's mask asset
  (SCL, QA) is *not* applied: clouds are part of the data distribution a model sees.
- Integer channels of at most 16 bits (uint8, uint16, int8, int16: every optical band) keep an
  exact histogram (one ``np.bincount`` per batch; the nodata bin is dropped). Count, mean, std,
  min, max and percentiles are computed from it at the end: exact, and merging partial results is
  integer addition, so the result does not depend on how the work was split.
  Percentiles use the inverted-CDF definition (``np.percentile(..., method="inverted_cdf")``:
  the smallest value whose cumulative count reaches q% of the pixels).
- Other channels (float32 radar, 32-bit integers) keep ``(n, mean, M2, min, max)`` in float64
  per batch (a band of chip rows of one item), merged in order with Chan et al.'s parallel
  formula (numerically stable, no sum-of-squares cancellation); no percentiles (``None``).
- Partial results of Dask tasks are merged on the driver in task order and batches never span
  items, so the single-process and distributed paths, and any ``chips_per_task``, give the same
  numbers to the last bit.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stacchip_assets.io.atomic import atomic_path, atomic_write_bytes
from stacchip_assets.io.local_files import HrefPolicy
from stacchip_assets.training.config import TrainingSetConfig
from stacchip_assets.training.distributed import run_tasks
from stacchip_assets.training.extract import collection_layouts, iter_task_pixels
from stacchip_assets.training.layout import CollectionLayout
from stacchip_assets.training.plan import ChipTask, make_tasks, plan_training_set
from stacchip_assets.training.tables import as_table

__all__ = [
    "PERCENTILES", "ChannelAccumulator", "CollectionAccumulator", "band_statistics", "band_statistics_markdown",
    "read_band_statistics_json", "write_band_statistics_json", "write_band_statistics_parquet",
]

PERCENTILES = (1, 2, 5, 25, 50, 75, 95, 98, 99)
#: dtype -> (histogram size, offset added to a value to get its bin)
_HIST_DTYPES = {"uint8": (256, 0), "int8": (256, 128), "uint16": (65536, 0), "int16": (65536, 32768)}


@dataclass
class ChannelAccumulator:
    """Streaming statistics of one channel (see the module docstring for the two modes)."""

    dtype: str
    hist: np.ndarray | None = None
    #: float mode: one (n, mean, M2, min, max) per batch, merged in order when the result is asked
    parts: list[tuple[int, float, float, float, float]] = field(default_factory=list)
    masked: int = 0

    def __post_init__(self) -> None:
        if self.hist is None and self.dtype in _HIST_DTYPES:
            self.hist = np.zeros(_HIST_DTYPES[self.dtype][0], dtype=np.int64)

    @property
    def exact(self) -> bool:
        return self.hist is not None

    def update(self, values: np.ndarray, nodata: float | None) -> None:
        """Add the pixels of ``values`` (any shape, native dtype), leaving out ``nodata`` and NaN."""
        values = np.asarray(values)
        if self.hist is not None:
            size, offset = _HIST_DTYPES[self.dtype]
            if values.dtype.name != self.dtype:
                raise TypeError(f"channel of {self.dtype} got {values.dtype} pixels")
            flat = values.reshape(-1)
            if offset:  # order-preserving map of signed ints onto 0..size-1
                unsigned = np.uint8 if size == 256 else np.uint16
                flat = np.bitwise_xor(flat.view(unsigned), unsigned(offset))
            counts = np.bincount(flat, minlength=size)
            if nodata is not None and float(nodata).is_integer() and 0 <= int(nodata) + offset < size:
                bin_ = int(nodata) + offset
                self.masked += int(counts[bin_])
                counts[bin_] = 0
            self.hist += counts
            return
        v = values.reshape(-1).astype(np.float64)
        keep = np.isfinite(v)
        if nodata is not None:
            keep &= v != float(nodata)
        self.masked += int(v.size - np.count_nonzero(keep))
        v = v[keep]
        if v.size == 0:
            return
        mean_b = float(v.mean())
        d = v - mean_b
        # (d * d).sum(), not np.dot: BLAS reductions depend on the thread count (Dask workers run 1)
        self.parts.append((int(v.size), mean_b, float((d * d).sum()), float(v.min()), float(v.max())))

    def merge(self, other: ChannelAccumulator) -> None:
        """Append ``other``'s pixels (which come after this one's in the global order)."""
        if other.dtype != self.dtype:
            raise ValueError(f"cannot merge {other.dtype} statistics into {self.dtype}")
        self.masked += other.masked
        if self.hist is not None:
            self.hist += other.hist
        else:
            self.parts.extend(other.parts)

    def moments(self) -> tuple[int, float, float, float, float]:
        """(n, mean, M2, min, max) of the float mode: the batch parts merged pairwise in order with
        Chan, Golub & LeVeque's update. The parts are per batch of whole items, so the result does
        not depend on how items were grouped into tasks."""
        n, mean, m2, lo, hi = 0, 0.0, 0.0, math.inf, -math.inf
        for n_b, mean_b, m2_b, lo_b, hi_b in self.parts:
            total = n + n_b
            delta = mean_b - mean
            mean += delta * n_b / total
            m2 += m2_b + delta * delta * n * n_b / total
            n, lo, hi = total, min(lo, lo_b), max(hi, hi_b)
        return n, mean, m2, lo, hi

    def result(self) -> dict[str, Any]:
        """count, mean, std, min, max, masked, exact, p1..p99 (None when not available)."""
        out: dict[str, Any] = {"masked": int(self.masked), "exact": self.exact}
        pct: dict[str, float | None] = {f"p{q}": None for q in PERCENTILES}
        if self.hist is not None:
            size, offset = _HIST_DTYPES[self.dtype]
            n = int(self.hist.sum())
            if n:
                values = np.arange(size, dtype=np.float64) - offset
                nz = np.flatnonzero(self.hist)
                h = self.hist[nz].astype(np.float64)  # exact: counts < 2**53
                mean = float((h * values[nz]).sum()) / n
                d = values[nz] - mean
                var = float((h * d * d).sum()) / n
                cum = np.cumsum(self.hist)
                ranks = np.maximum(np.ceil(n * (np.asarray(PERCENTILES, dtype=np.float64) / 100.0)), 1)
                bins = np.searchsorted(cum, ranks, side="left")
                pct = {f"p{q}": float(values[b]) for q, b in zip(PERCENTILES, bins)}
                out.update(count=n, mean=mean, std=math.sqrt(var), min=float(values[nz[0]]), max=float(values[nz[-1]]))
            else:
                out.update(count=0, mean=None, std=None, min=None, max=None)
        elif self.parts:
            n, mean, m2, lo, hi = self.moments()
            out.update(count=int(n), mean=float(mean), std=math.sqrt(m2 / n), min=float(lo), max=float(hi))
        else:
            out.update(count=0, mean=None, std=None, min=None, max=None)
        out.update(pct)
        return out


@dataclass
class CollectionAccumulator:
    """The channel accumulators of one collection (a training-set layout)."""

    layout: CollectionLayout
    channels: list[ChannelAccumulator] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.channels:
            self.channels = [ChannelAccumulator(c.dtype) for c in self.layout.channels]

    def update(self, pixels: Mapping[str, np.ndarray], chipper: Any = None) -> None:
        """Add a batch ``{asset: (k, bands, H, W)}``; nodata from ``chipper``'s open datasets (the
        item's own declared value), else from the layout."""
        for acc, spec in zip(self.channels, self.layout.channels):
            nodata = spec.nodata
            if chipper is not None:
                nodata = chipper.reader(spec.asset).dataset.nodata
            acc.update(pixels[spec.asset][:, spec.band - 1], nodata)

    def merge(self, other: CollectionAccumulator) -> None:
        for a, b in zip(self.channels, other.channels):
            a.merge(b)

    def records(self) -> list[dict[str, Any]]:
        out = []
        for acc, spec in zip(self.channels, self.layout.channels):
            out.append({"collection": self.layout.collection, "band": spec.name, "asset": spec.asset,
                        "band_index": spec.band, "dtype": spec.dtype, "nodata": spec.nodata, **acc.result()})
        return out


def _stats_task(task: ChipTask, *, layout: CollectionLayout, mountpath: str | None = None,
                href_policy: HrefPolicy | None = None) -> CollectionAccumulator:
    acc = CollectionAccumulator(layout)
    for _, pixels, chipper in iter_task_pixels(task, layout, mountpath=mountpath, href_policy=href_policy):
        acc.update(pixels, chipper)
    return acc


def merge_results(partials: Sequence[CollectionAccumulator | None], layouts: Mapping[str, CollectionLayout]) -> list[dict[str, Any]]:
    """Merge per-task accumulators in the given order into records, collections in layout order."""
    merged = {c: CollectionAccumulator(layout) for c, layout in layouts.items()}
    for part in partials:
        if part is not None:
            merged[part.layout.collection].merge(part)
    return [record for acc in merged.values() for record in acc.records()]


def band_statistics(
    selection: Any,
    config: TrainingSetConfig,
    client: Any = None,
    *,
    chips_per_task: int = 2048,
    mountpath: str | None = None,
    href_policy: HrefPolicy | None = None,
) -> list[dict[str, Any]]:
    """Per collection and channel statistics of the chips of ``selection`` (one record each).

    ``selection`` is typically ``select_chips(index, config)``. With ``client`` (a
    ``distributed.Client``) groups of whole items run on Dask workers; the result is the same.
    ``href_policy``: what the stored items' asset hrefs may point at (default
    :func:`stacchip_assets.core.hrefs.default_read_policy`), as in ``write_training_set``.
    """
    plan = plan_training_set(as_table(selection), config)
    if plan.num_rows == 0:
        return []
    layouts = collection_layouts(plan, config, mountpath=mountpath, href_policy=href_policy)
    tasks = make_tasks(plan, config, chips_per_task=chips_per_task, whole_shards=False)
    groups = [([t for t in tasks if t.collection == c], dict(layout=layout, mountpath=mountpath, href_policy=href_policy))
              for c, layout in layouts.items()]
    return merge_results(run_tasks(_stats_task, groups, client=client), layouts)


# =================================================================================================
# Writers
# =================================================================================================
def _summary(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in records:
        c = out.setdefault(r["collection"], {"bands": [], "mean": {}, "std": {}})
        c["bands"].append(r["band"])
        c["mean"][r["band"]] = r["mean"]
        c["std"][r["band"]] = r["std"]
    return out


def write_band_statistics_json(records: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """``{"records": [...], "collections": {collection: {"bands", "mean", "std"}}}``, atomically."""
    path = Path(path)
    atomic_write_bytes(path, (json.dumps({"records": list(records), "collections": _summary(records)}, indent=2) + "\n").encode())
    return path


def read_band_statistics_json(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    return json.loads(Path(path).read_text())["records"]


STATS_SCHEMA = pa.schema(
    [("collection", pa.string()), ("band", pa.string()), ("asset", pa.string()), ("band_index", pa.int32()),
     ("dtype", pa.string()), ("nodata", pa.float64()), ("count", pa.int64()), ("masked", pa.int64()),
     ("exact", pa.bool_()), ("mean", pa.float64()), ("std", pa.float64()), ("min", pa.float64()), ("max", pa.float64())]
    + [(f"p{q}", pa.float64()) for q in PERCENTILES]
)


def band_statistics_table(records: Sequence[Mapping[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist([{k: r.get(k) for k in STATS_SCHEMA.names} for r in records], schema=STATS_SCHEMA)


def write_band_statistics_parquet(records: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """One row per (collection, band), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(band_statistics_table(records), tmp)
    return path


def band_statistics_markdown(records: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of the records (for a Dagster materialization's metadata)."""
    def fmt(v: Any) -> str:
        return "" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))

    cols = ["collection", "band", "count", "mean", "std", "min", "p2", "p50", "p98", "max"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in records]
    return "\n".join(lines)
