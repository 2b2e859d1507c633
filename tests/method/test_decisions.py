"""What strategies share: the posterior of any class from a row's evidence (the same closed form
as the votes' columns), the confidence of each decision, and the knobs' validation."""

from __future__ import annotations

import numpy as np
import pytest
from evidence_inputs import rows

from stages.contracts.errors import ConfigError
from stages.method.decisions import (
    ConsensusConfig,
    Decisions,
    ExpectedBenefitConfig,
    confidence,
    posterior_of,
)

SPECS = (
    {"label": 10, "ensemble": {20: 0.99, 10: 0.001}},
    {"label": 10, "ensemble": {20: 0.5, 30: 0.3, 10: 0.05}},
    {"label": 10, "ensemble": {10: 0.95, 11: 0.02}},
)


def test_posterior_of_the_label_and_the_best_other_class_match_the_votes_columns() -> None:
    evidence = rows(*SPECS)
    np.testing.assert_allclose(posterior_of(evidence, evidence.label), evidence.label_posterior)
    np.testing.assert_allclose(
        posterior_of(evidence, evidence.best_other), evidence.best_other_posterior, rtol=1e-9
    )
    outside = np.array([999, 999, 999])  # not among any row's top five: no support
    assert (posterior_of(evidence, outside) == 0).all()


def test_confidence_is_the_probability_that_each_decision_is_right() -> None:
    evidence = rows(*SPECS)
    decided = Decisions.keep_all(evidence)
    decided.action[:] = ["fix", "remove", "keep"]
    decided.new_label[:] = [20, -1, 10]
    right = confidence(evidence, decided)
    assert right.dtype == np.float32
    np.testing.assert_allclose(
        right,
        [
            evidence.best_other_posterior[0],
            1 - evidence.label_posterior[1],
            evidence.label_posterior[2],
        ],
        rtol=1e-6,
    )


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ExpectedBenefitConfig(precision=1.5), r"`decide.expected_benefit.precision`"),
        (lambda: ExpectedBenefitConfig(max_remove=-0.1), r"`decide.expected_benefit.max_remove`"),
        (lambda: ConsensusConfig(clear=2), r"`decide.consensus.clear` must be a number in"),
    ],
)
def test_knobs_outside_0_1_are_refused_naming_the_key(make, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make()
