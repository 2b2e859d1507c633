"""The ensemble's evidence per row, from every model x view: what the models together say, how
strong that is, and the probability that each row's label is right.

Computed in vote (`vote.evidence`), streamed in row chunks over the memory-mapped predictions:

1. the ensemble's probabilities q: `calibrated` (default; per-model and ensemble temperatures fitted
   on a seeded sample of the split's own labels, `stages.method.pooling`) or `mean` (the arithmetic
   mean of the models' probabilities); each model's views are pooled first;
2. the split's label-noise rate eps: 1 - trace of cleanlab's estimated joint of labels and q
   (computed streaming, `stages.method.confident_streaming`), smoothed by one pseudo-count each
   way and capped by `noise_ceiling`;
3. per row, the posterior pi that the label (or the best other class) is the image's true class
   (`stages.method.posterior`).

Per row the votes table keeps q's five most probable classes with their probabilities, q of the
label, each model's top-1, pi of the label, the best other class and its pi, and eps. q is written
once to a temporary file beside the output and read back for the noise and posterior passes, so
memory stays at a few chunks of (rows x classes) whatever the split's size.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from stages.contracts import formats
from stages.contracts.config import fraction, positive
from stages.method import confident_streaming, posterior
from stages.method.pooling import (
    Calibration,
    Files,
    calibration_sample,
    fit_calibration,
    mean_pool,
    model_log_probs,
)

logger = logging.getLogger(__name__)

TOP = 5


@dataclass(frozen=True)
class EvidenceConfig:
    """params.yaml `vote.evidence`: how the ensemble's evidence is computed (every split).

    Attributes:
        pooling: `calibrated` (temperatures fitted on the split's own labels) or `mean`.
        noise_ceiling: the most label noise the posterior assumes (a prior: ImageNet's published
            label-error rates are 5-10 %); cleanlab's estimate is used below it.
        calibration_rows: active rows sampled (seeded) to fit the temperatures.
        seed: the seed of that sample.
    """

    pooling: Literal["calibrated", "mean"] = "calibrated"
    noise_ceiling: float = 0.10
    calibration_rows: int = 20_000
    seed: int = 0

    def __post_init__(self) -> None:
        fraction("vote.evidence.noise_ceiling", self.noise_ceiling, high=0.5)
        positive("vote.evidence.calibration_rows", self.calibration_rows, minimum=2)
        positive("vote.evidence.seed", self.seed, minimum=0)


@dataclass(frozen=True, eq=False)
class Evidence:
    """The ensemble's evidence over N rows (models and views in the given order).

    Attributes:
        top: (N, 5) int32 q's most probable classes, best first (ties: smaller index first).
        probs: (N, 5) float32 their probabilities.
        label_prob: (N,) float32 q of the row's label (NaN on inactive rows).
        model_top1: (N, M) int32 each model's top-1 class (its views pooled).
        nan_rows: (N,) bool rows some model or view has no predictions for (NaN): manifest skip
            rows and images predict could not decode.
        label_posterior: (N,) float32 pi(label) (NaN on inactive rows).
        best_other: (N,) int32 the most probable class other than the label (-1 inactive).
        best_other_posterior: (N,) float32 pi(best other class).
        noise: the label-noise rate eps used.
        summary: figures for metrics/vote/<split>.json (temperatures, noise estimates, strength).
    """

    top: np.ndarray
    probs: np.ndarray
    label_prob: np.ndarray
    model_top1: np.ndarray
    nan_rows: np.ndarray
    label_posterior: np.ndarray
    best_other: np.ndarray
    best_other_posterior: np.ndarray
    noise: float
    summary: dict[str, Any] = field(default_factory=dict)

    def columns(self, active: np.ndarray) -> pa.Table:
        """The votes table's evidence columns (formats.VOTES_SCHEMA); inactive rows get empty
        lists and nulls."""
        m = self.model_top1.shape[1]
        offsets = pa.array(np.concatenate([[0], np.cumsum(np.where(active, TOP, 0))]), pa.int32())
        model_offsets = pa.array(
            np.concatenate([[0], np.cumsum(np.where(active, m, 0))]), pa.int32()
        )

        def lists(offs: pa.Array, values: np.ndarray, kind: pa.DataType) -> pa.Array:
            return pa.ListArray.from_arrays(offs, pa.array(values[active].ravel(), kind))

        return pa.table(
            {
                "ensemble_top": lists(offsets, self.top, pa.int32()),
                "ensemble_probs": lists(offsets, self.probs, pa.float32()),
                "label_prob": pa.array(self.label_prob, pa.float32(), mask=~active),
                "model_top1": lists(model_offsets, self.model_top1, pa.int32()),
                "label_posterior": pa.array(self.label_posterior, pa.float32(), mask=~active),
                "best_other": pa.array(self.best_other, pa.int32(), mask=~active),
                "best_other_posterior": pa.array(
                    self.best_other_posterior, pa.float32(), mask=~active
                ),
                "noise_rate": pa.array(
                    np.full(len(active), self.noise, np.float32), pa.float32(), mask=~active
                ),
            }
        )


def top_classes(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, K) -> the TOP most probable classes per row, best first (ties: smaller index first),
    and their probabilities; a partition first, so only rows with a tie at the TOP-th value are
    sorted whole (a partition alone would pick any of the tied classes)."""
    cutoff = -np.partition(-q, TOP - 1, axis=1)[:, TOP - 1 : TOP]
    above = q >= cutoff
    tied = above.sum(axis=1) > TOP
    part = np.empty((len(q), TOP), dtype=np.int64)
    part[~tied] = np.nonzero(above[~tied])[1].reshape(-1, TOP)
    part[tied] = np.argsort(-q[tied], axis=1, kind="stable")[:, :TOP]
    values = np.take_along_axis(q, part, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    return (
        np.take_along_axis(part, order, axis=1).astype(np.int32),
        np.take_along_axis(values, order, axis=1),
    )


@contextlib.contextmanager
def scratch_file(near: Path | None) -> Iterator[Path]:
    """A temporary file path in a fresh folder beside `near` (or the system's), removed after."""
    folder = near if near is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".evidence-", dir=folder) as tmp:
        yield Path(tmp) / "q.npy"


def _chunk_q(
    files: Files, start: int, stop: int, calibration: Calibration | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows start..stop -> (q (B, K) float32, each model's top-1 (B, M), NaN rows (B,))."""
    rows = np.arange(start, stop)
    logits = [model_log_probs(list(views.values()), rows) for views in files.values()]
    nan = np.zeros(stop - start, dtype=bool)
    for values in logits:
        nan |= ~np.isfinite(values).all(axis=1)
    logits = [np.where(nan[:, None], 0.0, values) for values in logits]
    top1 = np.stack([values.argmax(axis=1) for values in logits], axis=1).astype(np.int32)
    q = calibration.pool(logits) if calibration is not None else mean_pool(logits)
    return q.astype(np.float32), top1, nan


@dataclass
class _Rows:
    """The per-row arrays the first pass fills."""

    top: np.ndarray
    probs: np.ndarray
    label_prob: np.ndarray
    model_top1: np.ndarray
    nan_rows: np.ndarray

    @classmethod
    def empty(cls, n: int, m: int) -> _Rows:
        return cls(
            np.zeros((n, TOP), np.int32),
            np.zeros((n, TOP), np.float32),
            np.full(n, np.nan, np.float32),
            np.zeros((n, m), np.int32),
            np.zeros(n, bool),
        )


def _first_pass(
    labels: np.ndarray,
    files: Files,
    active: np.ndarray,
    calibration: Calibration | None,
    q_file: np.ndarray,
    chunk_rows: int,
) -> _Rows:
    """Stream every model x view once: write q, fill the per-row arrays."""
    n = len(labels)
    out = _Rows.empty(n, len(files))
    with tqdm(
        total=n, desc="ensemble evidence", unit="row", unit_scale=True, mininterval=2.0, leave=False
    ) as bar:
        for start in range(0, n, chunk_rows):
            stop = min(n, start + chunk_rows)
            q, out.model_top1[start:stop], out.nan_rows[start:stop] = _chunk_q(
                files, start, stop, calibration
            )
            q_file[start:stop] = q
            out.top[start:stop], out.probs[start:stop] = top_classes(q)
            rows = np.flatnonzero(active[start:stop])
            out.label_prob[start + rows] = q[rows, labels[start + rows]]
            bar.update(stop - start)
    return out


def estimated_noise(
    labels: np.ndarray, q: np.ndarray, usable: np.ndarray, chunk_rows: int
) -> float:
    """1 - trace of cleanlab's estimated joint of labels and q over the usable rows (streamed:
    the calibrated confident joint of `stages.method.confident_streaming`)."""
    rows = np.flatnonzero(usable)
    if len(rows) < 2:
        return 0.0
    own_labels = labels[rows]
    own = confident_streaming.own_probabilities(
        own_labels, q, rows, chunk_rows=chunk_rows, desc="noise own"
    )
    thresholds = confident_streaming.confident_thresholds(own_labels, own, q.shape[1])
    joint = confident_streaming.calibrated_joint(
        own_labels, q, rows, thresholds, chunk_rows=chunk_rows, desc="noise joint"
    )
    return float(1.0 - np.trace(joint) / max(float(joint.sum()), 1.0))


def smoothed(rate: float, rows: int) -> float:
    """A rate estimated on `rows` rows with one pseudo-count each way, (k + 1) / (rows + 2): a
    small split never claims perfectly clean labels (at ImageNet scale the change is < 1e-4)."""
    return (rate * rows + 1.0) / (rows + 2.0)


def _posterior_pass(
    labels: np.ndarray, q: np.ndarray, usable: np.ndarray, noise: float, chunk_rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pi(label), the best other class and its pi for every usable row (NaN / -1 elsewhere)."""
    n = len(labels)
    label_post = np.full(n, np.nan, np.float32)
    best = np.full(n, -1, np.int32)
    best_post = np.full(n, np.nan, np.float32)
    for start in range(0, n, chunk_rows):
        rows = start + np.flatnonzero(usable[start : start + chunk_rows])
        if not len(rows):
            continue
        block = np.asarray(q[rows], dtype=np.float64)
        own, other, own_other = posterior.label_posterior(block, labels[rows], noise)
        label_post[rows], best[rows], best_post[rows] = own, other, own_other
    return label_post, best, best_post


def ensemble_evidence(
    labels: np.ndarray,
    files: Files,
    *,
    active: np.ndarray | None = None,
    config: EvidenceConfig = EvidenceConfig(),
    scratch: Path | None = None,
    chunk_rows: int = formats.CHUNK_ROWS,
) -> Evidence:
    """The ensemble's evidence for every row.

    Args:
        labels: (N,) int current labels (any value on inactive rows).
        files: model -> view -> (N, K) `.npy` probabilities file (shapes checked by the caller).
        active: (N,) bool rows with a label (default: all); rows some file leaves NaN are left out
            of the calibration, the noise estimate and the posterior.
        config: `vote.evidence`.
        scratch: where q's temporary file goes (default: the system's temporary folder).
        chunk_rows: rows read at a time.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    active = np.ones(n, dtype=bool) if active is None else np.asarray(active, dtype=bool)
    if not files:
        raise ValueError("the ensemble's evidence needs the predictions of at least one model")
    calibration = None
    if config.pooling == "calibrated" and active.any():
        sample = calibration_sample(active, rows=config.calibration_rows, seed=config.seed)
        calibration = fit_calibration(labels, files, sample)
    first = next(iter(next(iter(files.values())).values()))
    k = int(np.load(first, mmap_mode="r").shape[1])
    with scratch_file(scratch) as path:
        q = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, k))
        rows = _first_pass(labels, files, active, calibration, q, chunk_rows)
        usable = active & ~rows.nan_rows
        estimate = estimated_noise(labels, q, usable, chunk_rows)
        noise = min(smoothed(estimate, int(usable.sum())), config.noise_ceiling)
        label_post, best, best_post = _posterior_pass(labels, q, usable, noise, chunk_rows)
        del q
    summary = _summary(config, calibration, estimate, noise, rows, label_post, usable, labels)
    return Evidence(
        rows.top,
        rows.probs,
        rows.label_prob,
        rows.model_top1,
        rows.nan_rows,
        label_post,
        best,
        best_post,
        noise,
        summary,
    )


def _summary(
    config: EvidenceConfig,
    calibration: Calibration | None,
    estimate: float,
    noise: float,
    rows: _Rows,
    label_post: np.ndarray,
    usable: np.ndarray,
    labels: np.ndarray,
) -> dict[str, Any]:
    """How strong the evidence is, without any reference (metrics/vote/<split>.json)."""
    used = np.flatnonzero(usable)

    def share(values: np.ndarray) -> float | None:
        return None if not len(used) else round(float(np.mean(values)), 4)

    return {
        "pooling": config.pooling,
        "temperatures": dict(calibration.models) if calibration else None,
        "ensemble_temperature": calibration.ensemble if calibration else None,
        "calibration_rows": calibration.rows if calibration else 0,
        "noise_cleanlab": round(estimate, 4),
        "noise_ceiling": config.noise_ceiling,
        "noise": round(noise, 4),
        "rows": len(used),
        "ensemble_agrees_with_label": share(rows.top[used, 0] == labels[used]),
        "mean_top_probability": share(rows.probs[used, 0]),
        "expected_label_accuracy": share(label_post[used]),
    }
