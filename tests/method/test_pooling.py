"""Pooling every model x view from memory-mapped files: a model's views (geometric mean), the
seeded calibration sample, the fitted temperatures, and the arithmetic mean of the first
evidence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.special import softmax

from stages.method.pooling import (
    ViewPooled,
    calibration_sample,
    fit_calibration,
    mean_pool,
    model_log_probs,
)


def save(path: Path, rows: np.ndarray) -> Path:
    np.save(path, rows.astype(np.float32))
    return path


def test_one_view_reads_as_it_is_and_two_views_pool_by_the_geometric_mean(tmp_path: Path) -> None:
    a = np.array([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]])
    b = np.array([[0.125, 0.5, 0.375], [0.2, 0.2, 0.6]])
    one = ViewPooled([save(tmp_path / "a.npy", a)])
    np.testing.assert_array_equal(one[np.array([1])], a[[1]].astype(np.float32))
    two = ViewPooled([tmp_path / "a.npy", save(tmp_path / "b.npy", b)])
    geometric = np.sqrt(a * b) / np.sqrt(a * b).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(two[np.arange(2)], geometric, rtol=1e-6)
    assert len(two) == 2 and two.shape == (2, 3) and two.dtype == np.float32
    np.testing.assert_allclose(two[np.array([0, 1]), np.array([2, 0])], geometric[[0, 1], [2, 0]])
    with pytest.raises(ValueError, match="at least one view"):
        ViewPooled([])


def test_the_calibration_sample_is_seeded_ascending_and_active_only() -> None:
    active = np.arange(100) % 3 != 0
    sample = calibration_sample(active, rows=10, seed=0)
    assert len(sample) == 10 and active[sample].all() and (np.diff(sample) > 0).all()
    assert sample.tolist() == calibration_sample(active, rows=10, seed=0).tolist()
    assert sample.tolist() != calibration_sample(active, rows=10, seed=1).tolist()
    assert calibration_sample(active, rows=1000, seed=0).tolist() == np.flatnonzero(active).tolist()


def test_an_overconfident_model_gets_a_temperature_above_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, size=(3000, 10))
    labels = np.array([rng.choice(10, p=p) for p in softmax(logits, axis=1)])
    files = {
        "calibrated": {"full": save(tmp_path / "c.npy", softmax(logits, axis=1))},
        "overconfident": {"full": save(tmp_path / "o.npy", softmax(logits * 3, axis=1))},
    }
    calibration = fit_calibration(labels, files, np.arange(3000))
    assert calibration.models["calibrated"] == pytest.approx(1.0, abs=0.15)
    assert calibration.models["overconfident"] == pytest.approx(3.0, rel=0.15)
    assert calibration.rows == 3000
    rows = np.arange(5)
    q = calibration.pool([model_log_probs([p["full"]], rows) for p in files.values()])
    np.testing.assert_allclose(q.sum(axis=1), 1.0)


def test_mean_pool_is_the_mean_of_the_models_probabilities() -> None:
    a = np.log(np.array([[0.5, 0.5], [0.25, 0.75]]))
    b = np.log(np.array([[1.0, 1e-12], [0.75, 0.25]]))
    np.testing.assert_allclose(mean_pool([a, b]), [[0.75, 0.25], [0.5, 0.5]], atol=1e-9)
