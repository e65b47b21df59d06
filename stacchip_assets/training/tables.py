"""Small helpers for the Arrow tables the training layer reads (indexes, selections, plans)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from stacchip_assets.errors import StacchipError

__all__ = ["as_table", "require_columns", "string_column"]


def as_table(index: Any) -> pa.Table:
    """A pyarrow Table from a Table, a RecordBatch or a ``pyarrow.dataset.Dataset``."""
    if isinstance(index, pa.Table):
        return index
    if isinstance(index, pa.RecordBatch):
        return pa.Table.from_batches([index])
    if hasattr(index, "to_table"):  # pyarrow.dataset.Dataset
        return index.to_table()
    raise TypeError(f"expected a pyarrow Table or Dataset, got {type(index).__name__}")


def string_column(table: pa.Table, name: str) -> np.ndarray:
    """A string column as an object array (for vectorized comparisons with numpy)."""
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=object)


def require_columns(table: pa.Table, columns: Sequence[str], what: str) -> None:
    """StacchipError naming the columns of ``columns`` that ``table`` lacks (``what``: "the index", ...)."""
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise StacchipError(f"{what} lacks the columns {missing}")
