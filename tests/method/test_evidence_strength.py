"""The `evidence` block on a constructed four-row split: expected accuracy before and after, per
action type rows taken, estimated precision and best estimate, and the gates that held back an
action type of the expected-benefit strategy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stages.method.decisions import ExpectedBenefitConfig
from stages.method.evidence_strength import StrengthConfig, evidence_strength


def tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    votes = pd.DataFrame(
        {
            "label": pd.array([1, 2, 3, None, 5], dtype="Int32"),
            "ensemble_top": [[1, 9], [7, 2], [8, 3], [], [5, 6]],
            "ensemble_probs": [[0.9, 0.05], [0.95, 0.01], [0.6, 0.3], [], [0.5, 0.45]],
            "label_posterior": [0.99, 0.1, 0.7, None, 0.95],
            "best_other_posterior": [0.001, 0.9, 0.2, None, 0.04],
            "noise_rate": [0.08, 0.08, 0.08, None, 0.08],
        }
    )
    ledger = pd.DataFrame(
        {
            "action": ["keep", "fix", "remove", "skip", "keep"],
            "confidence": [0.99, 0.9, 0.3, np.nan, 0.95],
            "secondary_labels": [[], [], [], [], []],
            "review": [False, False, False, False, True],
            "override": [False, False, False, False, False],
        }
    )
    return ledger, votes


def test_expected_accuracy_and_each_action_types_estimates() -> None:
    ledger, votes = tables()
    block = evidence_strength(ledger, votes)
    assert block["active_rows"] == 4 and block["noise"] == pytest.approx(0.08)
    assert block["ensemble_agrees_with_label"] == 0.5  # rows 0 and 4
    assert block["expected_label_accuracy_before"] == round((0.99 + 0.1 + 0.7 + 0.95) / 4, 4)
    assert block["expected_label_accuracy_after"] == round((0.99 + 0.9 + 0.95) / 3, 4)
    actions = block["actions"]
    assert actions["fix"] == {
        "count": 1,
        "estimated_precision": 0.9,
        "best_available": 0.9,
        "gate": None,
    }
    assert actions["remove"]["count"] == 1 and actions["remove"]["best_available"] == 0.9
    assert actions["review"] == {"count": 1}


def test_the_gates_say_why_an_action_type_was_not_taken() -> None:
    ledger, votes = tables()
    ledger["action"] = ["keep", "keep", "keep", "skip", "keep"]
    config = StrengthConfig("expected_benefit", ExpectedBenefitConfig(max_remove=0.1))
    actions = evidence_strength(ledger, votes, config=config)["actions"]
    assert actions["fix"]["gate"] == (
        "no row's best other class reaches precision 0.8 (the best is 0.9)"
    )
    assert actions["remove"]["budget"] == 0
    assert actions["remove"]["gate"] == "max_remove gives a budget of 0 rows"
    assert actions["secondary"]["gate"].startswith(
        "expected_benefit publishes none: a secondary label is right only if"
    )
    paper = evidence_strength(ledger, votes, config=StrengthConfig("paper"))["actions"]
    assert "gate" not in paper["fix"]


def test_the_config_reads_the_splits_strategy_and_the_knobs() -> None:
    params = {
        "decide": {
            "val": {"h1": 1, "h2": 1, "h3": 1, "strategy": "paper"},
            "expected_benefit": {"precision": 0.9},
        }
    }
    config = StrengthConfig.from_params(params, "val")
    assert config.strategy == "paper" and config.knobs.precision == 0.9
