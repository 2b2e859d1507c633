"""cleanlab's confident learning, exactly, over memory-mapped predictions read in chunks.

`find_label_issues_streaming` returns the same indices in the same order as
`cleanlab.filter.find_label_issues(labels, pred_probs.astype(float32),
filter_by="prune_by_noise_rate", return_indices_ranked_by="normalized_margin", frac_noise=fn)`,
but never holds more than one chunk of rows (or one class's rows) in memory. cleanlab's
in-memory call needs the (N, K) float32 array plus a per-class copy (~19 GB at ImageNet-train
size); every quantity it derives from them is per row or per class:

1. own pass: each row's probability of its given label (N floats). cleanlab's own
   `get_confident_thresholds` turns them into the per-class thresholds: it is given a zero-copy
   (N, K) broadcast view, so its means run on arrays identical to the ones it would build.
2. joint pass: the confident joint, counted chunk by chunk with the per-row rule of
   `cleanlab.count.compute_confident_joint`, then cleanlab's `calibrate_confident_joint`.
3. class pass: the rows of one given label at a time (n_k x K float32): cleanlab's prune counts and
   its per-class pruning by margin, its "label is the argmax" filter
   (`stages.adapters.cleanlab_adapter`), and `cleanlab.rank.get_normalized_margin_for_each_label`
   for the flagged rows. Classes whose prune counts are all zero are not read.
4. ranking: the flags in row order, argsorted by their scores, as
   `cleanlab.rank.order_label_issues`.

Only the counting of step 2, the chunking and the bookkeeping are written here; the tests compare
every result with cleanlab's in-memory call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from cleanlab.count import calibrate_confident_joint, get_confident_thresholds
from cleanlab.rank import get_normalized_margin_for_each_label
from tqdm import tqdm

from stages.adapters import cleanlab_adapter
from stages.contracts import formats

logger = logging.getLogger(__name__)

FLOAT_TOLERANCE = 1e-6
"""cleanlab's `pred_probs >= thresholds - 1e-6` confidence test (compute_confident_joint)."""

ChunkHook = Callable[[int, np.ndarray, np.ndarray], None]
"""Called as hook(start, labels (B,), float32 probabilities (B, K)) per chunk of the joint pass."""


def read_float32_rows(pred_probs: Any, index: np.ndarray) -> np.ndarray:
    """(B,) ascending row indices -> (B, K) float32 copy (a slice when the rows are consecutive).

    float16 is widened by torch (exact, like numpy's cast, but ~5x faster on CPU: numpy's
    float16 cast is scalar code and would dominate a pass over ImageNet-train predictions)."""
    if len(index) and index[-1] - index[0] == len(index) - 1:
        block = np.array(pred_probs[index[0] : index[-1] + 1])
    else:
        block = np.asarray(pred_probs[index])
    if block.dtype == np.float16:
        return _widen(block)
    return np.asarray(block, dtype=np.float32)


def _widen(block: np.ndarray) -> np.ndarray:
    """float16 -> float32 with one torch thread (memory-bound; more threads only contend)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.from_numpy(block).float().numpy()
    finally:
        torch.set_num_threads(previous)


def _spans(n: int, chunk_rows: int, desc: str) -> Iterator[tuple[int, int]]:
    with tqdm(total=n, desc=desc, unit="row", unit_scale=True, mininterval=2.0, leave=False) as bar:
        for start in range(0, n, chunk_rows):
            end = min(start + chunk_rows, n)
            yield start, end
            bar.update(end - start)


def own_probabilities(
    labels: np.ndarray, pred_probs: Any, rows: np.ndarray, *, chunk_rows: int, desc: str = "own"
) -> np.ndarray:
    """(A,) labels of `rows`, (N, K) predictions, (A,) ascending rows -> (A,) float32
    p[row, label]."""
    own = np.empty(len(rows), dtype=np.float32)
    for start, end in _spans(len(rows), chunk_rows, desc):
        index, lab = rows[start:end], labels[start:end]
        if index[-1] - index[0] == end - start - 1:
            own[start:end] = pred_probs[index[0] : index[-1] + 1][np.arange(end - start), lab]
        else:
            own[start:end] = pred_probs[index, lab]
    return own


def confident_thresholds(labels: np.ndarray, own: np.ndarray, n_classes: int) -> np.ndarray:
    """Cleanlab's per-class thresholds (mean probability of class k over rows labelled k) from
    the (A,) own-label probabilities alone."""
    view = np.broadcast_to(own[:, None], (len(own), n_classes))
    thresholds: np.ndarray = get_confident_thresholds(labels, view)
    return thresholds


def count_confident_joint(
    labels: np.ndarray, probs: np.ndarray, thresholds: np.ndarray
) -> np.ndarray:
    """Uncalibrated confident-joint counts of one chunk: (B,), (B, K) float32, (K,) -> (K, K) int64,
    entry (given label, confident true class); the rule of
    cleanlab.count.compute_confident_joint."""
    n_classes = probs.shape[1]
    confident = probs >= thresholds - FLOAT_TOLERANCE
    n_confident = confident.sum(axis=1)
    guess = np.where(n_confident > 1, probs.argmax(axis=1), confident.argmax(axis=1))
    counted = n_confident > 0
    pairs = labels[counted].astype(np.int64) * n_classes + guess[counted]
    return np.bincount(pairs, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def calibrated_joint(
    labels: np.ndarray,
    pred_probs: Any,
    rows: np.ndarray,
    thresholds: np.ndarray,
    *,
    chunk_rows: int,
    on_chunk: ChunkHook | None = None,
    desc: str = "joint",
) -> np.ndarray:
    """The calibrated (K, K) confident joint of cleanlab's find_label_issues, in one pass."""
    n_classes = pred_probs.shape[1]
    joint = np.zeros((n_classes, n_classes), dtype=np.int64)
    for start, end in _spans(len(rows), chunk_rows, desc):
        chunk = read_float32_rows(pred_probs, rows[start:end])
        if on_chunk is not None:
            on_chunk(start, labels[start:end], chunk)
        joint += count_confident_joint(labels[start:end], chunk, thresholds)
    np.fill_diagonal(joint, joint.diagonal().clip(min=1))
    calibrated: np.ndarray = calibrate_confident_joint(joint, labels)
    return calibrated


def _class_flags(
    k: int, probs_k: np.ndarray, prune_counts_k: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rows labelled k (n_k, K) -> (positions among them, normalized-margin scores) of the flags."""
    mask = cleanlab_adapter.prune_by_count(k, probs_k, prune_counts_k)
    where = np.flatnonzero(mask)
    if not len(where):
        return where, np.empty(0, dtype=np.float32)
    flagged = probs_k[where]
    given = np.full(len(where), k, dtype=np.int64)
    keep = ~cleanlab_adapter.reduce_issues(flagged, given)
    return where[keep], get_normalized_margin_for_each_label(given[keep], flagged[keep])


def _rank(positions: list[np.ndarray], scores: list[np.ndarray]) -> np.ndarray:
    """Flags of every class -> indices ranked as cleanlab.rank.order_label_issues ranks them."""
    if not positions:
        return np.empty(0, dtype=np.int64)
    flat, score = np.concatenate(positions), np.concatenate(scores)
    in_row_order = np.argsort(flat, kind="stable")
    flat, score = flat[in_row_order], score[in_row_order]
    return flat[np.argsort(score)].astype(np.int64)


def find_label_issues_streaming(
    labels: Sequence[int] | np.ndarray,
    pred_probs: Any,
    *,
    rows: np.ndarray | None = None,
    frac_noise: Sequence[float] = (1.0,),
    chunk_rows: int = formats.CHUNK_ROWS,
    on_chunk: ChunkHook | None = None,
    desc: str = "cl",
) -> list[np.ndarray]:
    """Cleanlab's prune_by_noise_rate flags ranked by normalized margin, streamed.

    Args:
        labels: (A,) int given labels of the rows used, in 0..K-1.
        pred_probs: (N, K) probabilities, float16/float32 ndarray or memmap, read in chunks.
        rows: (A,) ascending row indices of `pred_probs` used (default: all N rows, A = N).
        frac_noise: cleanlab frac_noise values; one result per value (the joint is computed once).
        chunk_rows: rows read (and cast to float32) at a time.
        on_chunk: optional hook that sees every chunk of the joint pass (checks, other statistics).
        desc: progress-bar prefix.

    Returns:
        per frac_noise value, (F,) int64 positions into the A rows, most likely issue first: the
        output of find_label_issues(labels, pred_probs[rows].astype(float32),
        filter_by="prune_by_noise_rate", return_indices_ranked_by="normalized_margin",
        frac_noise=fn).
    """
    cleanlab_adapter.check_version()
    labels = np.asarray(labels, dtype=np.int64)
    rows = np.arange(len(labels)) if rows is None else np.asarray(rows, dtype=np.int64)
    n_classes = pred_probs.shape[1]
    if len(rows) != len(labels) or (len(rows) > 1 and (np.diff(rows) <= 0).any()):
        raise ValueError(f"rows must be {len(labels)} ascending row indices, one per label")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(
            f"labels must be class indices in 0..{n_classes - 1}, got "
            f"{labels.min()}..{labels.max()}"
        )
    own = own_probabilities(labels, pred_probs, rows, chunk_rows=chunk_rows, desc=f"{desc} own")
    thresholds = confident_thresholds(labels, own, n_classes)
    joint = calibrated_joint(
        labels,
        pred_probs,
        rows,
        thresholds,
        chunk_rows=chunk_rows,
        on_chunk=on_chunk,
        desc=f"{desc} joint",
    )
    prune = [cleanlab_adapter.prune_count_matrix(joint, frac_noise=fn) for fn in frac_noise]
    off_diagonal = [p * (1 - np.eye(n_classes, dtype=p.dtype)) for p in prune]
    wanted = np.logical_or.reduce([(p > 0).any(axis=0) for p in off_diagonal])
    order = np.argsort(labels, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=n_classes))])
    positions: list[list[np.ndarray]] = [[] for _ in frac_noise]
    scores: list[list[np.ndarray]] = [[] for _ in frac_noise]
    too_few = int((np.diff(bounds) <= 1).sum())
    for k in tqdm(
        np.flatnonzero(wanted & (np.diff(bounds) > 1)),
        desc=f"{desc} classes",
        unit="class",
        mininterval=2.0,
        leave=False,
    ):
        members = order[bounds[k] : bounds[k + 1]]
        probs_k = read_float32_rows(pred_probs, rows[members])
        for i, counts in enumerate(prune):
            where, score = _class_flags(int(k), probs_k, counts[:, k])
            positions[i].append(members[where])
            scores[i].append(score)
    if too_few:
        logger.info(
            "cleanlab cannot flag rows of %d classes that have <= 1 active example "
            "(min_examples_per_class)",
            too_few,
        )
    return [_rank(p, s) for p, s in zip(positions, scores)]
