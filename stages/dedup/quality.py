"""Image-quality issues from the fingerprints' raw scores (`stages.dedup.fingerprints`): dark,
blurry, low_information, grayscale, odd_size, odd_aspect, and outlier (far from every other image
in embedding space). They are evidence shown in the review page and counted in the metrics; by
default they change no decision.

The checks are a dict of functions (`CHECKS`), each from the fingerprint table and the thresholds
to a boolean mask, so a new check is one entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from stages.contracts.config import fraction, positive


@dataclass(frozen=True)
class QualityThresholds:
    """params.yaml `duplicates.quality`.

    Attributes:
        dark: dark when the 99th percentile of luminance (0..1) is below this.
        blurry: blurry when the variance of the Laplacian (grayscale, longest side 256) is below.
        low_information: low information when the grayscale entropy (bits) is below this.
        grayscale: grayscale when the mean channel difference (0..255) is below this (catches
            grayscale pictures stored as RGB).
        min_side: odd size when the shorter side (pixels) is below this.
        max_aspect: odd aspect when the longer side / shorter side is above this.
        outlier_fraction: this fraction of the group's images with the lowest cosine to their
            nearest other image is flagged `outlier`.
    """

    dark: float = 0.5
    blurry: float = 100.0
    low_information: float = 5.0
    grayscale: float = 1.0
    min_side: int = 64
    max_aspect: float = 3.0
    outlier_fraction: float = 0.005

    def __post_init__(self) -> None:
        fraction("duplicates.quality.dark", self.dark)
        fraction("duplicates.quality.outlier_fraction", self.outlier_fraction)
        positive("duplicates.quality.min_side", self.min_side, minimum=0)


Check = Callable[[pd.DataFrame, QualityThresholds], np.ndarray]


def _num(table: pd.DataFrame, column: str) -> np.ndarray:
    return table[column].to_numpy(dtype=np.float64, na_value=np.nan)


def _aspect(table: pd.DataFrame) -> np.ndarray:
    w, h = _num(table, "width"), _num(table, "height")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.maximum(w, h) / np.minimum(w, h)


CHECKS: dict[str, Check] = {
    "dark": lambda t, q: _num(t, "bright_p99") < q.dark,
    "blurry": lambda t, q: _num(t, "sharpness") < q.blurry,
    "low_information": lambda t, q: _num(t, "entropy") < q.low_information,
    "grayscale": lambda t, q: _num(t, "colourfulness") < q.grayscale,
    "odd_size": lambda t, q: np.minimum(_num(t, "width"), _num(t, "height")) < q.min_side,
    "odd_aspect": lambda t, q: _aspect(t) > q.max_aspect,
}
"""Issue name -> mask of the fingerprint rows that have it (NaN scores never match)."""


def outliers(similarity: np.ndarray, valid: np.ndarray, share: float) -> np.ndarray:
    """The `share` of valid rows with the lowest nearest-neighbour similarity (ties: lower row)."""
    out = np.zeros(len(valid), dtype=bool)
    rows = np.flatnonzero(valid)
    count = int(np.floor(share * len(rows)))
    if count:
        order = np.lexsort((rows, similarity[rows]))
        out[rows[order[:count]]] = True
    return out


def issues(
    fingerprints: pd.DataFrame, thresholds: QualityThresholds, outlier: np.ndarray | None = None
) -> list[list[str]]:
    """Per row, the names of its issues (CHECKS order, then `outlier`); [] for most rows."""
    masks = {name: check(fingerprints, thresholds) for name, check in CHECKS.items()}
    if outlier is not None:
        masks["outlier"] = outlier
    found: list[list[str]] = [[] for _ in range(len(fingerprints))]
    for name, mask in masks.items():
        for row in np.flatnonzero(mask):
            found[row].append(name)
    return found
