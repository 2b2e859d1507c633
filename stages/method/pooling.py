"""Pooling the predictions of every model x view, read in row chunks from memory-mapped files.

A model's views are pooled by the mean of their log-probabilities (a geometric mean, renormalised):
`ViewPooled` is an array-like over the views' files that the confident-learning code reads like
one (N, K) predictions array. The ensemble over models is either `mean` (the arithmetic mean of the
models' pooled probabilities, the pipeline's first evidence) or `calibrated` (each model tempered by
its own temperature, then the mean log-probability, tempered once more: `stages.method.posterior`),
with the temperatures fitted on a seeded sample of the split's own active rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.special import log_softmax

from stages.method import posterior
from stages.method.confident_streaming import read_float32_rows

FloatArray = npt.NDArray[np.floating[Any]]
Files = Mapping[str, Mapping[str, Path]]
"""model -> view -> `.npy` predictions file (model order and view order matter)."""


class ViewPooled:
    """The (N, K) probabilities of one model pooled over its views, read row by row on demand.

    With one view it reads that file as it is; with several, each row is the softmax of the mean
    of the views' log-probabilities (float32). NaN rows stay NaN.
    """

    def __init__(self, paths: Sequence[Path]) -> None:
        if not paths:
            raise ValueError("a model needs the predictions of at least one view")
        self.paths = tuple(paths)
        self.views = [np.load(path, mmap_mode="r") for path in self.paths]
        self.shape: tuple[int, ...] = tuple(self.views[0].shape)
        self.dtype = self.views[0].dtype if len(self.views) == 1 else np.dtype(np.float32)

    def __len__(self) -> int:
        return int(self.shape[0])

    def rows(self, index: np.ndarray | slice) -> FloatArray:
        """(B,) row indices or a slice -> (B, K) pooled probabilities."""
        blocks = [np.asarray(view[index]) for view in self.views]
        if len(blocks) == 1:
            single: FloatArray = blocks[0]
            return single
        pooled: FloatArray = np.exp(log_softmax(posterior.view_log_mean(blocks), axis=1))
        return pooled.astype(np.float32)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, tuple):
            rows, columns = key
            pooled = self.rows(np.asarray(rows))
            return pooled[np.arange(len(pooled)), columns]
        return self.rows(key)


def model_log_probs(paths: Sequence[Path], rows: np.ndarray) -> FloatArray:
    """(R,) ascending rows of one model's views -> (R, K) float64 mean log-probability."""
    return posterior.view_log_mean(
        [read_float32_rows(np.load(path, mmap_mode="r"), rows) for path in paths]
    )


@dataclass(frozen=True)
class Calibration:
    """The temperatures of the calibrated ensemble: one per model, then one for the ensemble."""

    models: Mapping[str, float]
    ensemble: float
    rows: int

    def pool(self, logits: Sequence[FloatArray]) -> FloatArray:
        """(B, K) per model (view-pooled log-probabilities, model order) -> q (B, K) float64."""
        mean = posterior.ensemble_logits(logits, list(self.models.values()))
        return posterior.calibrated(mean, self.ensemble)


def calibration_sample(active: np.ndarray, *, rows: int, seed: int) -> npt.NDArray[np.int64]:
    """Up to `rows` active rows, seeded, ascending (all active rows when there are fewer)."""
    candidates = np.flatnonzero(active)
    if len(candidates) <= rows:
        return candidates
    chosen = np.random.default_rng(seed).choice(candidates, size=rows, replace=False)
    return np.sort(chosen)


def fit_calibration(labels: np.ndarray, files: Files, sample: np.ndarray) -> Calibration:
    """Fit every model's temperature, then the ensemble's, by NLL on the sample's own labels (rows
    any model left NaN are left out)."""
    logits = {
        model: model_log_probs(list(views.values()), sample) for model, views in files.items()
    }
    usable = np.ones(len(sample), dtype=bool)
    for values in logits.values():
        usable &= np.isfinite(values).all(axis=1)
    own = labels[sample][usable]
    temperatures = {m: posterior.fit_temperature(v[usable], own) for m, v in logits.items()}
    tempered = posterior.ensemble_logits(
        [v[usable] for v in logits.values()], list(temperatures.values())
    )
    return Calibration(temperatures, posterior.fit_temperature(tempered, own), int(usable.sum()))


def mean_pool(logits: Sequence[FloatArray]) -> FloatArray:
    """(B, K) per model (view-pooled log-probabilities) -> the mean of their probabilities."""
    total = np.zeros(np.shape(logits[0]), dtype=np.float64)
    for values in logits:
        total += np.exp(log_softmax(values, axis=1))
    return total / len(logits)
