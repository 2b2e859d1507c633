"""stages.method.confident: the vote options (`ConfidentConfig` from params, with errors naming the
key), the strategy `auto` picks and the check that active rows hold probabilities.

The flags of the streaming strategy are tested against cleanlab in test_confident_streaming.py,
whose synthetic noisy splits and memory-map helper these tests reuse.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_confident_streaming import noisy_split

from stages.method.confident import CL_STRATEGIES, ConfidentConfig
from stages.method.votes import model_votes


def test_auto_picks_streaming_above_exact_max_rows() -> None:
    config = ConfidentConfig(exact_max_rows=1000)
    assert config.resolve_strategy(1000) == "exact"
    assert config.resolve_strategy(1001) == "streaming"
    assert {"exact", "streaming", "batched"} <= set(CL_STRATEGIES)


def test_non_probabilities_on_active_rows_name_the_row(tmp_path: Path) -> None:
    labels, probs, active = noisy_split(3000, 10, seed=5)
    probs[17] = np.nan
    active[17] = True
    labels[17] = 3
    with pytest.raises(ValueError, match=r"\(active rows\): row 17 has NaN or infinite values"):
        model_votes(labels, probs, active=active, config=ConfidentConfig(strategy="streaming"))


def test_config_from_params_reads_the_split_over_the_shared_default() -> None:
    params = {
        "splits": {"val": {}, "train": {}},
        "vote": {
            "exact_max_rows": 1000,
            "val": {"fn": 0.9, "fn_mode": "ranked"},
            "train": {"strategy": "streaming", "exact_max_rows": 5},
        },
    }
    val = ConfidentConfig.from_params(params, "val")
    assert (val.fn, val.fn_mode, val.strategy, val.exact_max_rows) == (0.9, "ranked", "auto", 1000)
    assert ConfidentConfig.from_params(params, "train").exact_max_rows == 5


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            {"val": {"fn_mod": "ranked"}},
            r"`vote.val` has an unknown key 'fn_mod'; did you mean 'fn_mode'",
        ),
        (
            {"val": {"strategy": "fast"}},
            r"`vote.val.strategy` must be one of 'auto', 'exact', "
            r"'streaming', 'batched', got 'fast'",
        ),
        ({"val": {"fn": "1"}}, r"`vote.val.fn` must be a number, got '1'"),
        ({"val": {"fn": 1.5}}, r"fn \(cleanlab frac_noise\) must be a number in \(0, 1\], got 1.5"),
        (
            {"exact_max_row": 3},
            r"`vote` has an unknown key 'exact_max_row'; did you mean 'exact_max_rows'",
        ),
        ({"exact_max_rows": "many"}, r"`vote.exact_max_rows` must be an int, got 'many'"),
        ({"val": None}, r"no `vote.val:` section"),
    ],
)
def test_config_errors_name_the_key(edit: dict, message: str) -> None:
    from stages.contracts.errors import ConfigError

    params = {"splits": {"val": {}}, "vote": {"exact_max_rows": 10, "val": {"fn": 1.0}, **edit}}
    with pytest.raises(ConfigError, match=message):
        ConfidentConfig.from_params(params, "val")
