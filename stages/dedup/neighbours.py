"""Nearest-neighbour candidate pairs: cosine similarity of L2-normalised embeddings with faiss
(an exact `IndexFlatIP` up to `flat_max_rows` rows, an `IndexIVFFlat` above, GPU when one is
there), and pixel / pHash matches by sorting hashes (no index at all).

Every function returns pairs (i, j) with i < j as int64 arrays over the rows of its input, so the
caller joins them with any other candidate source.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import faiss
import numpy as np
from tqdm import tqdm

from stages.contracts.config import positive
from stages.dedup.fingerprints import hamming

logger = logging.getLogger(__name__)

SEARCH_ROWS = 16_384
"""Query rows searched at a time (memory: SEARCH_ROWS x k results)."""


@dataclass(frozen=True)
class IndexOptions:
    """How embeddings are searched.

    Attributes:
        index: flat (exact inner product) | ivf (inverted lists, approximate) | auto (flat up to
            `flat_max_rows` rows, ivf above).
        neighbours: nearest neighbours examined per image (itself included).
        flat_max_rows: the largest table `auto` searches exactly.
        ivf_lists: IVF cells (k-means centroids); nprobe: cells visited per query.
        seed: k-means seed (IVF training on a sample of `ivf_lists` x 64 rows).
    """

    index: Literal["auto", "flat", "ivf"] = "auto"
    neighbours: int = 16
    flat_max_rows: int = 200_000
    ivf_lists: int = 4096
    nprobe: int = 48
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("neighbours", "flat_max_rows", "ivf_lists", "nprobe"):
            positive(f"duplicates.{key}", getattr(self, key))


def normalised(embeddings: np.ndarray) -> np.ndarray:
    """(N, D) float16/32 -> float32 rows of unit length (zero rows stay zero; NaN rows -> zero)."""
    x = np.nan_to_num(np.asarray(embeddings, dtype=np.float32), nan=0.0)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def build_index(x: np.ndarray, options: IndexOptions) -> faiss.Index:
    """An inner-product index over the normalised rows `x` (N, D) float32."""
    n, d = x.shape
    kind = options.index
    if kind == "auto":
        kind = "flat" if n <= options.flat_max_rows else "ivf"
    index: Any
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    else:
        lists = max(1, min(options.ivf_lists, n // 39))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, lists, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(options.seed)
        sample = x[np.sort(rng.choice(n, size=min(n, lists * 64), replace=False))]
        index.train(sample)
        index.nprobe = min(options.nprobe, lists)
    if faiss.get_num_gpus() > 0:  # pragma: no cover - only on a machine with CUDA faiss
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(x)
    return index


def knn(x: np.ndarray, options: IndexOptions) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, neighbours), each (N, k): every row's k nearest rows by cosine (-1 pads)."""
    index = build_index(x, options)
    k = min(options.neighbours, len(x))
    sims = np.empty((len(x), k), dtype=np.float32)
    ids = np.empty((len(x), k), dtype=np.int64)
    for start in tqdm(range(0, len(x), SEARCH_ROWS), desc="neighbours", unit="chunk", leave=False):
        end = min(start + SEARCH_ROWS, len(x))
        sims[start:end], ids[start:end] = index.search(x[start:end], k)
    return sims, ids


def pairs_above(
    sims: np.ndarray, ids: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (i, j, cosine) pairs i < j with cosine >= threshold among kNN results, each once."""
    rows = np.repeat(np.arange(len(ids)), ids.shape[1])
    cols, vals = ids.ravel(), sims.ravel()
    keep = (cols >= 0) & (cols != rows) & (vals >= threshold)
    i, j, v = np.minimum(rows, cols)[keep], np.maximum(rows, cols)[keep], vals[keep]
    order = np.lexsort((-v, j, i))
    i, j, v = i[order], j[order], v[order]
    first = np.ones(len(i), dtype=bool)
    first[1:] = (i[1:] != i[:-1]) | (j[1:] != j[:-1])
    return i[first], j[first], v[first]


def equal_pairs(keys: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) pairs i < j of valid rows with the same key, as a chain per key (i = the previous row
    with that key): enough to connect every group, with one pair per extra member."""
    rows = np.flatnonzero(valid)
    order = rows[np.argsort(keys[rows], kind="stable")]
    same = keys[order][1:] == keys[order][:-1]
    return order[:-1][same], order[1:][same]


def phash_pairs(
    hashes: np.ndarray, valid: np.ndarray, i: np.ndarray, j: np.ndarray, max_distance: int
) -> np.ndarray:
    """Mask of the candidate pairs (i, j) whose pHashes (uint64) are within `max_distance` bits
    (both rows valid)."""
    if not len(i):
        return np.zeros(0, dtype=bool)
    close = hamming(hashes[i], hashes[j]) <= max_distance
    return close & valid[i] & valid[j]
