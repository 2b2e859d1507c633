"""stages.method.retrain_scoring: moved from test_retrain_report.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stages.contracts.errors import InputError
from stages.method.retrain_scoring import eval_labels, reference_top1, score
from stages.method.scoring import scan_model


def test_scores_count_only_scored_rows() -> None:
    probs = np.full((3, 1000), 1e-4, dtype=np.float32)
    probs[[0, 1, 2], [5, 6, 7]] = 0.9
    probs[1, 1] = 0.0  # below 999 classes: a miss
    top1, top5 = scan_model(probs)
    assert score(top1, top5, np.array([5.0, 1.0, np.nan])) == {"top1": 50.0, "top5": 50.0, "n": 2}
    reference = {"a": frozenset({5, 8}), "b": frozenset(), "c": frozenset({1})}
    assert reference_top1(top1, ["a", "b", "c"], reference) == {"top1": 50.0, "n": 2}


def test_eval_labels_are_the_original_and_the_kept_or_fixed_ones(project: pd.DataFrame) -> None:
    labels = eval_labels("val", project, np.array([2, 3, 4, 5]))
    original = project["label"].to_numpy(np.float64)
    assert labels["original"].tolist() == original[[2, 3, 4, 5]].tolist()
    cleaned = labels["cleaned"]
    assert cleaned[[0, 3]].tolist() == original[[2, 5]].tolist()  # kept
    assert cleaned[1] == (original[3] + 1) % 1000 and np.isnan(cleaned[2])  # fixed, removed
    with pytest.raises(InputError, match="ledger of 'val' does not match its manifest"):
        eval_labels("val", project.iloc[::-1].reset_index(drop=True), np.array([0]))
