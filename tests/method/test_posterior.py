"""The calibrated posterior's parts: the geometric mean of a model's views, the temperature fit,
the tempered ensemble, and the label posterior's closed form."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import log_softmax, softmax

from stages.method import posterior


def test_view_log_mean_is_the_mean_log_probability() -> None:
    a = np.array([[0.5, 0.25, 0.25]])
    b = np.array([[0.125, 0.5, 0.375]])
    np.testing.assert_allclose(
        posterior.view_log_mean([a, b]), (np.log(a) + np.log(b)) / 2, rtol=1e-12
    )
    zeros = posterior.view_log_mean([np.array([[1.0, 0.0]])])  # float16 files hold zeros
    assert np.isfinite(zeros).all()


def test_fit_temperature_recovers_the_temperature_that_made_the_labels() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(4000, 10))
    labels = np.array([rng.choice(10, p=p) for p in softmax(logits / 2.0, axis=1)])
    assert posterior.fit_temperature(logits, labels) == pytest.approx(2.0, rel=0.1)
    assert posterior.fit_temperature(logits[:0], labels[:0]) == 1.0


def test_the_ensemble_of_tempered_models_is_a_distribution() -> None:
    rng = np.random.default_rng(1)
    models = [log_softmax(rng.normal(size=(5, 7)), axis=1) for _ in range(3)]
    q = posterior.calibrated(posterior.ensemble_logits(models, [1.0, 0.5, 2.0]), 1.3)
    np.testing.assert_allclose(q.sum(axis=1), 1.0)
    same = posterior.ensemble_logits([models[0]] * 2, [1.0, 1.0])
    np.testing.assert_allclose(same, models[0])


def test_label_posterior_closed_form() -> None:
    q = np.array([[0.6, 0.3, 0.1], [0.1, 0.8, 0.1]])
    labels = np.array([0, 0])
    own, best, best_post = posterior.label_posterior(q, labels, 0.1)
    odds = q / (1 - q)
    for row in range(2):
        others = odds[row, 1:].sum()
        denominator = 0.9 + 0.1 * others
        assert own[row] == pytest.approx(0.9 / denominator)
        assert best[row] == 1 and best_post[row] == pytest.approx(0.1 * odds[row, 1] / denominator)
        every = [own[row]] + [0.1 * odds[row, c] / denominator for c in (1, 2)]
        assert sum(every) == pytest.approx(1.0)
    clean, _, _ = posterior.label_posterior(q, labels, 0.0)
    assert clean.tolist() == [1.0, 1.0]  # without label noise the label is always right
