"""K-fold assignment of a train split and the files of out-of-fold training.

`assign_folds` spreads each class's images over the folds in turn (seeded), so every fold holds
every class as evenly as possible; `fold_table` writes it per manifest row (`data/folds/<split>`),
`read_folds` reads it back checked against the manifest. A fold folder
`data/oof/<split>/<model>/fold-<k>/` holds a fold model's held-out probabilities (`probs.npy`), the
rows its training loop fed it (`seen.npy`, packed bits), its `log.json` and its weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from stages.contracts import formats
from stages.contracts.errors import InputError

FOLDS_SCHEMA = pa.schema([("image_id", pa.string()), ("fold", pa.int32())])
"""`data/folds/<split>.parquet`: one row per manifest row, manifest order; fold null = skip row."""


OOF_ROOT = Path("data/oof")


def folds_path(split: str) -> Path:
    """Where the `folds` stage writes a split's fold table."""
    return Path("data/folds") / f"{split}.parquet"


def fold_dir(split: str, model: str, fold: int) -> Path:
    """The `train@<split>-<model>-<fold>` output folder (probs.npy, seen.npy, log.json,
    model.safetensors)."""
    return OOF_ROOT / split / model / f"fold-{fold}"


def read_seen(path: str | Path, n_rows: int) -> np.ndarray:
    """A `seen.npy` (np.packbits of the rows a training loop fed its model) -> (n_rows,) bool."""
    return np.unpackbits(np.load(path), count=n_rows).astype(bool)


def read_fold_log(folder: str | Path) -> dict[str, Any]:
    """A fold folder's `log.json`."""
    path = Path(folder) / "log.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run the train stage that writes it")
    return json.loads(path.read_text())


def assign_folds(labels: np.ndarray, usable: np.ndarray, *, k: int, seed: int) -> np.ndarray:
    """Stratified K-fold assignment.

    Args:
        labels: (N,) int class of each row (any value on unusable rows; -1 for unknown).
        usable: (N,) bool rows to assign.
        k: number of folds (>= 2).
        seed: the shuffle within each class.

    Returns:
        (N,) int32 fold 0..k-1, -1 on unusable rows.
    """
    labels, usable = np.asarray(labels), np.asarray(usable, dtype=bool)
    if labels.shape != usable.shape or labels.ndim != 1:
        raise ValueError(
            f"labels {labels.shape} and usable {usable.shape} must be equal 1-d shapes"
        )
    if k < 2:
        raise ValueError(f"k-fold needs k >= 2, got {k}")
    rows = np.flatnonzero(usable)
    if len(rows) < k:
        raise ValueError(f"{len(rows)} usable rows cannot fill {k} folds")
    rng = np.random.default_rng(seed)
    classes, code = np.unique(labels[rows], return_inverse=True)
    order = rng.permutation(len(classes))[code]  # classes in a seeded order, not index order
    shuffled = rng.permutation(len(rows))
    by_class = rows[shuffled[np.argsort(order[shuffled], kind="stable")]]
    fold = np.full(len(labels), -1, dtype=np.int32)
    fold[by_class] = np.arange(len(by_class)) % k
    return fold


def fold_table(manifest: pd.DataFrame, *, k: int, seed: int) -> pa.Table:
    """The fold table of a manifest (its formats.MANIFEST_SCHEMA columns image_id, label and
    skip_reason)."""
    usable = manifest["skip_reason"].isna().to_numpy()
    labels = pd.to_numeric(manifest["label"], errors="coerce").fillna(-1).to_numpy(np.int64)
    try:
        fold = assign_folds(labels, usable, k=k, seed=seed)
    except ValueError as error:
        raise InputError(f"cannot assign folds: {error}") from error
    return pa.table(
        {
            "image_id": pa.array(manifest["image_id"].astype(str).tolist(), pa.string()),
            "fold": pa.array(fold, pa.int32(), mask=fold < 0),
        },
        schema=FOLDS_SCHEMA,
    )


def read_folds(split: str, manifest: pd.DataFrame, *, path: str | Path | None = None) -> np.ndarray:
    """A split's fold table, checked against its manifest -> (N,) int32 fold (-1 = none).

    Raises:
        InputError: the table's rows are not the manifest's (same image_id order).
    """
    path = Path(path or folds_path(split))
    table = formats.read_table(path, what=f"fold table of split {split!r}")
    if len(table) != len(manifest) or not np.array_equal(
        table["image_id"].to_numpy(dtype=str), manifest["image_id"].to_numpy(dtype=str)
    ):
        raise InputError(
            f"fold table {path} ({len(table)} rows) does not match the manifest of "
            f"split {split!r} ({len(manifest)} rows, same image_id order); re-run "
            f"`dvc repro folds@{split}`"
        )
    return table["fold"].fillna(-1).to_numpy(dtype=np.int32)
