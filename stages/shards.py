"""Parquet shards as `datasets` and the Hub read them: size planning and `datasets`' own writer."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
from datasets import Dataset, DatasetInfo, Features
from datasets.table import InMemoryTable, table_cast
from datasets.utils.tqdm import (are_progress_bars_disabled, disable_progress_bars,
                                  enable_progress_bars)


def plan_shards(row_bytes: np.ndarray, max_shard_bytes: int) -> list[tuple[int, int]]:
    """Contiguous row ranges [start, stop) whose estimated bytes stay within `max_shard_bytes`
    (a row larger than the limit gets a shard of its own); always at least one range.

    row_bytes: (N,) estimated bytes per row.
    """
    ranges, start, total = [], 0, 0.0
    for index, size in enumerate(np.asarray(row_bytes, dtype=np.float64).tolist()):
        if index > start and total + size > max_shard_bytes:
            ranges.append((start, index))
            start, total = index, 0.0
        total += size
    ranges.append((start, len(row_bytes)))
    return ranges


def write_shard(table: pa.Table, features: Features, target: Path | io.BytesIO) -> int:
    """Write one parquet shard with `datasets`' own writer (HF features in the schema metadata,
    the Hub's row-group and page settings) -> the shard's in-memory (Arrow) bytes."""
    if isinstance(target, Path):
        target.parent.mkdir(parents=True, exist_ok=True)
    table = table_cast(table, features.arrow_schema)
    dataset = Dataset(InMemoryTable(table), info=DatasetInfo(features=features),
                      fingerprint="publish")  # never transformed: skip hashing the table
    dataset.to_parquet(target if isinstance(target, io.BytesIO) else str(target))
    return int(table.nbytes)


def shard_overhead(features: Features) -> int:
    """Bytes every shard file takes besides its rows: its footer, whose schema holds the
    features (1000 class names per ClassLabel column), measured on an empty shard."""
    buffer = io.BytesIO()
    write_shard(features.arrow_schema.empty_table(), features, buffer)
    return len(buffer.getvalue())


@contextlib.contextmanager
def datasets_bars_off() -> Iterator[None]:
    """`datasets` draws a bar per parquet file; the stage draws its own per split."""
    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()
