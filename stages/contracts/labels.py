"""The current labels of a split at the start of an iteration (`splits.<split>.labels`).

`promote` writes the file from a ledger; `vote` reads it. A split without the file is at iteration
0: its manifest's labels are current. Columns: image_id, label (null once the image left the
split), iteration (the iteration these labels are the input of), reason (why it left).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from stages.contracts import formats

LABELS_SCHEMA = pa.schema([("image_id", pa.string()), ("label", pa.int32()),
                           ("iteration", pa.int32()), ("reason", pa.string())])
"""The current-labels file of an iteration (data contracts)."""

LABELS_COLUMNS = tuple(LABELS_SCHEMA.names)


@dataclass(frozen=True, eq=False)
class CurrentLabels:
    """A split's labels at the start of an iteration, aligned with the manifest.

    Attributes:
        label: (N,) int64 current label, -1 on inactive rows.
        active: (N,) bool rows that take part in this iteration.
        inactive_reason: (N,) object, None on active rows.
        iteration: 0 when the labels are the manifest's, else the labels file's iteration.
    """

    label: np.ndarray
    active: np.ndarray
    inactive_reason: np.ndarray
    iteration: int


def current_labels(manifest: pd.DataFrame, labels_file: str | Path | None) -> CurrentLabels:
    """The manifest's labels (iteration 0) or, when `labels_file` exists, the labels it holds.

    Raises:
        ValueError: the labels file lacks columns, does not cover the manifest's image ids, mixes
            iterations, or an active row has no label.
    """
    skip = manifest["skip_reason"].notna().to_numpy()
    reason = np.where(skip, "skip: " + manifest["skip_reason"].fillna("").astype(str), None).astype(object)
    label = manifest["label"].astype("Int64")
    iteration = 0
    if labels_file is not None and Path(labels_file).is_file():
        label, left, iteration = _read_labels_file(Path(labels_file), manifest["image_id"])
        reason = np.where(skip | left.isna().to_numpy(), reason, left.to_numpy(dtype=object))
    active = pd.isna(reason) & label.notna().to_numpy()
    missing = pd.isna(reason) & ~active
    if missing.any():
        raise ValueError(f"image {manifest['image_id'].iloc[int(np.argmax(missing))]} is usable but "
                         f"has no label ({int(missing.sum())} such rows); fix the manifest or labels")
    values = label.fillna(-1).to_numpy(dtype=np.int64)
    return CurrentLabels(np.where(active, values, -1), active, reason, iteration)


def _read_labels_file(path: Path, image_ids: pd.Series) -> tuple[pd.Series, pd.Series, int]:
    """(label Int64, reason for rows that left (None elsewhere), iteration), manifest-aligned."""
    table = formats.read_table(path, what="labels file")
    absent = [c for c in LABELS_COLUMNS if c not in table.columns]
    if absent:
        raise ValueError(f"labels file {path} lacks columns {absent}; it needs {list(LABELS_COLUMNS)}")
    if table["image_id"].duplicated().any():
        raise ValueError(f"labels file {path} repeats image_id "
                         f"{table['image_id'][table['image_id'].duplicated()].iloc[0]!r}")
    table = table.set_index("image_id")
    unknown = table.index.difference(image_ids)
    lacking = pd.Index(image_ids).difference(table.index)
    if len(unknown) or len(lacking):
        raise ValueError(f"labels file {path} does not match the manifest: {len(lacking)} manifest "
                         f"image ids missing (e.g. {list(lacking[:3])}), {len(unknown)} unknown "
                         f"(e.g. {list(unknown[:3])}); re-run promote for this manifest")
    iterations = table["iteration"].dropna().unique()
    if len(iterations) != 1:
        raise ValueError(f"labels file {path} must hold one iteration, found {sorted(int(i) for i in iterations)}")
    table = table.reindex(image_ids)
    left = table["label"].isna()
    reason = table["reason"].where(table["reason"].notna(), "left the split in an earlier iteration")
    return (table["label"].astype("Int64").reset_index(drop=True),
            reason.where(left, None).reset_index(drop=True), int(iterations[0]))
