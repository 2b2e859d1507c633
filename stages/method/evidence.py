"""The ensemble's evidence per row: what all models together say, for decisions and for people.

The ensemble is the mean of the split's models' softmax probabilities. Per row it gives the five
most probable classes with their mean probabilities, the mean probability of the current label, and
each model's own top-1 class. Rows are streamed in chunks across every model's memory-mapped
predictions (each file is mapped only while its chunk is read), so memory stays at a few chunks of
(rows x classes) whatever the split's size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from stages.contracts import formats
from stages.method.confident_streaming import read_float32_rows

TOP = 5


@dataclass(frozen=True, eq=False)
class Evidence:
    """The ensemble's evidence over N rows.

    Attributes:
        top: (N, 5) int32 most probable classes of the ensemble mean, best first (ties: smaller
            class index first).
        probs: (N, 5) float32 their mean probabilities.
        label_prob: (N,) float32 mean probability of the row's label (NaN on inactive rows).
        model_top1: (N, M) int32 each model's top-1 class, models in the given order.
        nan_rows: (N,) bool rows some model has no predictions for (NaN): manifest skip rows and
            images predict could not decode (counted as `n_unreadable` in its sidecar).
    """

    top: np.ndarray
    probs: np.ndarray
    label_prob: np.ndarray
    model_top1: np.ndarray
    nan_rows: np.ndarray

    def columns(self, active: np.ndarray) -> pa.Table:
        """The votes table's evidence columns (contracts: formats.VOTES_SCHEMA); inactive rows get
        empty lists and a null label probability."""
        n, m = len(self.top), self.model_top1.shape[1]
        counts = np.where(active, TOP, 0)
        offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
        model_offsets = pa.array(
            np.concatenate([[0], np.cumsum(np.where(active, m, 0))]).astype(np.int32)
        )
        return (
            pa.table(
                {
                    "ensemble_top": pa.ListArray.from_arrays(
                        offsets, pa.array(self.top[active].ravel(), pa.int32())
                    ),
                    "ensemble_probs": pa.ListArray.from_arrays(
                        offsets, pa.array(self.probs[active].ravel(), pa.float32())
                    ),
                    "label_prob": pa.array(self.label_prob, pa.float32(), mask=~active),
                    "model_top1": pa.ListArray.from_arrays(
                        model_offsets, pa.array(self.model_top1[active].ravel(), pa.int32())
                    ),
                }
            )
            if n
            else pa.table(
                {
                    "ensemble_top": pa.array([], pa.list_(pa.int32())),
                    "ensemble_probs": pa.array([], pa.list_(pa.float32())),
                    "label_prob": pa.array([], pa.float32()),
                    "model_top1": pa.array([], pa.list_(pa.int32())),
                }
            )
        )


def _read_rows(path: Path, start: int, stop: int) -> np.ndarray:
    """Rows start..stop of a predictions file as float32; the mapping is dropped right after."""
    mapped = np.load(path, mmap_mode="r")
    try:
        return read_float32_rows(mapped, np.arange(start, stop))
    finally:
        del mapped


def _top(mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, K) -> the TOP most probable classes per row, best first (ties: smaller index first),
    and their probabilities; a partition first, so only rows with a tie at the TOP-th value are
    sorted whole (a partition alone would pick any of the tied classes)."""
    cutoff = -np.partition(-mean, TOP - 1, axis=1)[:, TOP - 1 : TOP]
    above = mean >= cutoff
    tied = above.sum(axis=1) > TOP
    part = np.empty((len(mean), TOP), dtype=np.int64)
    part[~tied] = np.nonzero(above[~tied])[1].reshape(-1, TOP)
    part[tied] = np.argsort(-mean[tied], axis=1, kind="stable")[:, :TOP]
    values = np.take_along_axis(mean, part, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    return (
        np.take_along_axis(part, order, axis=1).astype(np.int32),
        np.take_along_axis(values, order, axis=1),
    )


def _mean_rows(
    paths: Sequence[Path], start: int, stop: int, nan_rows: np.ndarray, model_top1: np.ndarray
) -> np.ndarray:
    """The models' mean probabilities over rows start..stop (NaN rows as zeros), filling the
    views `nan_rows` (rows any model left NaN) and `model_top1` (each model's top-1) on the way."""
    total: np.ndarray | None = None
    for m, path in enumerate(paths):
        chunk = _read_rows(path, start, stop)
        nan_rows |= np.isnan(chunk[:, 0])
        chunk = np.nan_to_num(chunk, nan=0.0, copy=False)
        model_top1[:, m] = chunk.argmax(axis=1)
        total = chunk if total is None else total + chunk
    if total is None:
        raise ValueError("the ensemble's evidence needs the predictions of at least one model")
    total /= len(paths)
    return total


def ensemble_evidence(
    labels: np.ndarray,
    predictions: Mapping[str, Path],
    *,
    active: np.ndarray | None = None,
    chunk_rows: int = formats.CHUNK_ROWS,
) -> Evidence:
    """The ensemble's evidence for every row.

    Args:
        labels: (N,) int current labels (any value on inactive rows).
        predictions: model name -> (N, K) `.npy` probabilities file, in model order (shapes are
            checked by the caller).
        active: (N,) bool rows with a label and predictions (default: all); other rows' fields
            are zero / NaN.
        chunk_rows: rows read from every model at a time.

    Returns:
        Evidence over the N rows.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    active = np.ones(n, dtype=bool) if active is None else np.asarray(active, dtype=bool)
    paths = list(predictions.values())
    top = np.zeros((n, TOP), dtype=np.int32)
    probs = np.zeros((n, TOP), dtype=np.float32)
    label_prob = np.full(n, np.nan, dtype=np.float32)
    model_top1 = np.zeros((n, len(paths)), dtype=np.int32)
    nan_rows = np.zeros(n, dtype=bool)
    with tqdm(
        total=n, desc="ensemble evidence", unit="row", unit_scale=True, mininterval=2.0, leave=False
    ) as bar:
        for start in range(0, n, chunk_rows):
            stop = min(n, start + chunk_rows)
            mean = _mean_rows(paths, start, stop, nan_rows[start:stop], model_top1[start:stop])
            top[start:stop], probs[start:stop] = _top(mean)
            rows = np.flatnonzero(active[start:stop])
            label_prob[start + rows] = mean[rows, labels[start + rows]]
            bar.update(stop - start)
    return Evidence(top, probs, label_prob, model_top1, nan_rows)
