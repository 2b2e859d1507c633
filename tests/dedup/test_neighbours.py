"""Neighbour search with faiss (exact and IVF) and hash pairs."""

from __future__ import annotations

import numpy as np

from stages.dedup import neighbours as nb


def clustered(n: int = 3000, d: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[1::2] = x[0::2] + 0.05 * rng.standard_normal((n // 2, d)).astype(np.float32)
    return nb.normalised(x)


def test_flat_finds_every_planted_pair() -> None:
    x = clustered()
    sims, ids = nb.knn(x, nb.IndexOptions(index="flat", neighbours=4))
    i, j, v = nb.pairs_above(sims, ids, 0.95)
    assert set(zip(i.tolist(), j.tolist())) == {(k, k + 1) for k in range(0, 3000, 2)}
    assert (v >= 0.95).all()


def test_ivf_recall_against_exact() -> None:
    x = clustered()
    options = nb.IndexOptions(index="ivf", neighbours=4, ivf_lists=16, nprobe=4)
    sims, ids = nb.knn(x, options)
    i, j, _ = nb.pairs_above(sims, ids, 0.95)
    found = set(zip(i.tolist(), j.tolist()))
    assert len(found & {(k, k + 1) for k in range(0, 3000, 2)}) / 1500 >= 0.95


def test_normalised_handles_zero_and_nan_rows() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0], [np.nan, np.nan]], dtype=np.float16)
    assert nb.normalised(x).tolist() == [[0.6000000238418579, 0.800000011920929], [0, 0], [0, 0]]


def test_equal_pairs_chain_each_key() -> None:
    keys = np.array(["a", "b", "a", "c", "a", "b"])
    valid = np.array([True, True, True, True, False, True])
    i, j = nb.equal_pairs(keys, valid)
    assert sorted(zip(i.tolist(), j.tolist())) == [(0, 2), (1, 5)]


def test_phash_pairs_use_the_distance() -> None:
    hashes = np.array([0, 1, 0xFF], dtype=np.uint64)
    valid = np.array([True, True, True])
    mask = nb.phash_pairs(hashes, valid, np.array([0, 0]), np.array([1, 2]), 6)
    assert mask.tolist() == [True, False]
