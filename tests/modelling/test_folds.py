"""stages.modelling.folds: moved from test_folds.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stages.modelling.folds import assign_folds, fold_table


def _labels(sizes: list[int]) -> np.ndarray:
    """Class c repeated sizes[c] times, then shuffled (manifest order is not class order)."""
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return labels[np.random.default_rng(1).permutation(len(labels))]


def test_every_class_is_spread_evenly_and_folds_are_balanced() -> None:
    labels = _labels([1, 2, 3, 4, 5, 7, 9, 13, 1, 1, 2, 50])
    usable = np.ones(len(labels), dtype=bool)
    usable[::17] = False
    fold = assign_folds(labels, usable, k=4, seed=0)
    assert (fold[~usable] == -1).all() and set(fold[usable]) == {0, 1, 2, 3}
    sizes = np.bincount(fold[usable], minlength=4)
    assert sizes.max() - sizes.min() <= 1
    for c in np.unique(labels):
        counts = np.bincount(fold[usable & (labels == c)], minlength=4)
        assert counts.max() - counts.min() <= 1, (c, counts)


def test_the_seed_fixes_the_assignment() -> None:
    labels, usable = _labels([6] * 30), np.ones(180, dtype=bool)
    first = assign_folds(labels, usable, k=3, seed=7)
    assert np.array_equal(first, assign_folds(labels, usable, k=3, seed=7))
    assert not np.array_equal(first, assign_folds(labels, usable, k=3, seed=8))


def test_too_few_rows_or_folds_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot fill 4 folds"):
        assign_folds(np.zeros(5), np.array([True] * 3 + [False] * 2), k=4, seed=0)
    with pytest.raises(ValueError, match="k >= 2"):
        assign_folds(np.zeros(5), np.ones(5, dtype=bool), k=1, seed=0)


def test_the_table_has_manifest_order_and_no_fold_for_skip_rows(
    small_manifest: pd.DataFrame,
) -> None:
    manifest = small_manifest.copy()
    manifest.loc[3, "skip_reason"] = "empty file (0 bytes)"
    table = fold_table(manifest, k=2, seed=0).to_pandas()
    assert table["image_id"].tolist() == manifest["image_id"].tolist()
    assert pd.isna(table.loc[3, "fold"]) and table["fold"].notna().sum() == len(manifest) - 1
