"""The ensemble's calibrated posterior: P(true class | image) from every model x view, the split's
label-noise rate, and P(true class | image, label) for each row.

1. Each model's views are pooled by the mean of their log-probabilities (a geometric mean).
2. Each model is calibrated by one temperature T_m, fitted by negative log-likelihood on the split's
   own labels (a seeded sample of its active rows); a wrong label only softens T_m a little, and
   the decisions below read the calibrated probabilities, not the raw ones.
3. The ensemble q = softmax(mean_m log_softmax(z_m / T_m) / T_e), with one more temperature T_e.
4. The split's label-noise rate eps = 1 - trace(cleanlab's estimated joint of labels and q),
   capped by a prior ceiling: cleanlab over-estimates noise when the models are weak (their
   confident errors count as label errors).
5. The posterior that class c is the image's true class given its label y, when an annotator errs
   with probability eps and, erring, writes a class that looks like this image (in proportion to
   q): with odds(c) = q(c) / (1 - q(c)) and D = (1 - eps) + eps * sum_{c != y} odds(c),
   pi(y) = (1 - eps) / D and pi(c) = eps * odds(c) / D.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

FloatArray = npt.NDArray[np.floating]
TINY = 1e-12
"""Probabilities are clipped to this before their logarithm (float16 predictions hold zeros)."""
LOG_T_BOUNDS = (-2.5, 2.5)
"""The temperature search range, in log T: T in [0.08, 12]."""


def view_log_mean(views: Sequence[FloatArray]) -> FloatArray:
    """(B, K) probabilities of one model's views -> (B, K) float64 mean log-probability."""
    total = np.zeros(np.shape(views[0]), dtype=np.float64)
    for probs in views:
        total += np.log(np.clip(np.asarray(probs, dtype=np.float64), TINY, None))
    return total / len(views)


def nll(log_probs: FloatArray, labels: npt.NDArray[np.integer]) -> float:
    """Mean negative log-likelihood of `labels` (B,) under (B, K) log-probabilities."""
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: FloatArray, labels: npt.NDArray[np.integer]) -> float:
    """The T minimising the NLL of softmax(logits / T) on `labels` (1.0 without rows)."""
    if not len(labels):
        return 1.0
    result = minimize_scalar(
        lambda t: nll(log_softmax(logits / math.exp(t), axis=1), labels),
        bounds=LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(round(math.exp(result.x), 4))


def ensemble_logits(
    model_logits: Sequence[FloatArray], temperatures: Sequence[float]
) -> FloatArray:
    """(B, K) per model (view-pooled log-probabilities) -> the mean tempered log-probability."""
    total = np.zeros(np.shape(model_logits[0]), dtype=np.float64)
    for logits, temperature in zip(model_logits, temperatures):
        total += log_softmax(logits / temperature, axis=1)
    return total / len(model_logits)


def calibrated(logits: FloatArray, temperature: float) -> FloatArray:
    """softmax(logits / T) as float64."""
    probs: FloatArray = np.exp(log_softmax(logits / temperature, axis=1))
    return probs


def label_posterior(
    q: FloatArray, labels: npt.NDArray[np.integer], noise: float
) -> tuple[FloatArray, npt.NDArray[np.int64], FloatArray]:
    """Per row: pi(label), the most probable other class c* and pi(c*).

    Args:
        q: (B, K) calibrated ensemble probabilities.
        labels: (B,) current labels.
        noise: the split's label-noise rate eps in [0, 1).
    """
    at = np.arange(len(labels))
    odds = q / np.clip(1.0 - q, TINY, None)
    odds[at, labels] = 0.0
    best = odds.argmax(axis=1)
    denominator = (1.0 - noise) + noise * odds.sum(axis=1)
    return (1.0 - noise) / denominator, best.astype(np.int64), noise * odds[at, best] / denominator
