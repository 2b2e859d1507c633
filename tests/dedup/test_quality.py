"""Quality issues from fingerprint scores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stages.contracts.errors import ConfigError
from stages.dedup.quality import QualityThresholds, issues, outliers


def table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "bright_p99": [0.9, 0.3, 0.9, None],
            "sharpness": [500.0, 500.0, 20.0, None],
            "entropy": [7.0, 7.0, 3.0, None],
            "colourfulness": [20.0, 0.2, 20.0, None],
            "width": [500, 500, 40, None],
            "height": [375, 500, 400, None],
        }
    )


def test_each_check_flags_its_rows() -> None:
    found = issues(table(), QualityThresholds(), np.array([False, False, False, True]))
    assert found == [
        [],
        ["dark", "grayscale"],
        ["blurry", "low_information", "odd_size", "odd_aspect"],
        ["outlier"],
    ]


def test_outliers_take_the_lowest_share_of_valid_rows() -> None:
    sims = np.array([0.9, 0.1, 0.5, 0.05, 0.3])
    valid = np.array([True, True, True, False, True])
    assert outliers(sims, valid, 0.5).tolist() == [False, True, False, False, True]
    assert not outliers(sims, valid, 0.0).any()


def test_thresholds_are_checked() -> None:
    with pytest.raises(ConfigError, match="duplicates.quality.dark"):
        QualityThresholds(dark=2.0)
