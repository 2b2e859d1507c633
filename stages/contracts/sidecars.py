"""Predictions sidecars (`<model>.json` beside `<model>.npy`): the keys every sidecar has,
whoever made the predictions (predict, out-of-fold training, import-predictions), the top-k
scoring they report, and the placeholder of a predict stage's features output. Torch-free, so
importing predictions made elsewhere starts in seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.contracts import formats
from stages.contracts.formats import NUM_CLASSES

SIDECAR_SOURCES = ("predict", "out-of-fold", "imported")
"""The `source` of a predictions sidecar: the predict stage (pretrained models), out-of-fold
training (train splits), or `imagenet-clean import-predictions` (made elsewhere)."""


def topk_hits(probs: np.ndarray, labels: np.ndarray, usable: np.ndarray) -> tuple[np.ndarray, int]:
    """Top-1/top-5 hits over the usable, decoded rows with a known label.

    probs: (R, 1000), NaN rows for images that could not be decoded; labels: (R,) float
    (NaN = unknown); usable: (R,) bool.
    A row hits top-k when fewer than k classes score strictly higher than its label.

    Returns:
        ([top-1 hits, top-5 hits], rows scored).
    """
    known = usable & ~np.isnan(labels) & (labels >= 0) & (labels < NUM_CLASSES)
    known &= ~np.isnan(probs[:, 0])  # unreadable images: NaN rows are not scored
    rows = np.flatnonzero(known)
    if not len(rows):
        return np.zeros(2, dtype=np.int64), 0
    scores = probs[rows]
    own = scores[np.arange(len(rows)), labels[rows].astype(np.int64)][:, None]
    above = (scores > own).sum(axis=1)
    return np.array([(above < 1).sum(), (above < 5).sum()], dtype=np.int64), len(rows)


def predictions_sidecar(
    manifest: pd.DataFrame,
    *,
    model: str,
    split: str,
    source: str,
    dtype: str,
    spec: str | None,
    top1: float | None,
    top5: float | None,
    architecture: str | None = None,
    weights_sha256: str | None = None,
    preprocessing: Any = None,
    **extra: Any,
) -> dict[str, Any]:
    """The keys every predictions sidecar has whatever made it (vote, evaluate and DVC read them),
    for the manifest's rows, plus `extra` keys of its source.

    Raises:
        ValueError: `source` is not one of SIDECAR_SOURCES.
    """
    if source not in SIDECAR_SOURCES:
        raise ValueError(f"sidecar source {source!r} is not one of {SIDECAR_SOURCES}")
    return {
        "model": model,
        "spec": spec,
        "architecture": architecture,
        "weights_sha256": weights_sha256,
        "preprocessing": preprocessing,
        "dtype": dtype,
        "n": len(manifest),
        "n_skipped": int(manifest["skip_reason"].notna().sum()),
        "top1": top1,
        "top5": top5,
        "split": split,
        "source": source,
        "image_ids_sha256": formats.image_ids_sha256(manifest["image_id"]),
        **extra,
    }


def features_sidecar(
    manifest: pd.DataFrame,
    *,
    split: str,
    model: str,
    view: str,
    source: str,
    dim: int,
    n_without: int | None,
    **identity: Any,
) -> dict[str, Any]:
    """The JSON sidecar of a predict stage's features output (`<model>.<view>.json`): float16
    (N, dim), `enabled` when dim > 0; `identity` adds what made them (spec, weights, ...)."""
    return {
        "source": source,
        "enabled": dim > 0,
        "split": split,
        "model": model,
        "view": view,
        **identity,
        "n": len(manifest),
        "dim": dim,
        "dtype": "float16",
        "n_skipped": int(manifest["skip_reason"].notna().sum()),
        "n_without_features": n_without,
        "image_ids_sha256": formats.image_ids_sha256(manifest["image_id"]),
    }


def write_features_placeholder(
    out: str | Path, manifest: pd.DataFrame, *, split: str, model: str, view: str, source: str
) -> dict[str, Any]:
    """The (N, 0) float16 features file and its sidecar (`"enabled": false`) that a predict
    stage's features output holds when no features were computed: `predict.embeddings` off, or
    predictions imported (`source`). A DVC stage must always produce its declared outputs.

    Returns:
        the sidecar written beside `out` as `<stem>.json`.
    """
    out = Path(out)
    formats.write_npy(np.zeros((len(manifest), 0), np.float16), out)
    sidecar = features_sidecar(
        manifest, split=split, model=model, view=view, source=source, dim=0, n_without=None
    )
    formats.write_json(sidecar, out.with_suffix(".json"))
    return sidecar
