"""stages.method.thresholds: moved from test_decide.py."""

from __future__ import annotations

from test_ledger import MODELS

from stages.method.ledger import DecideConfig
from stages.method.thresholds import Thresholds


def test_config_resolves_fractions_against_the_split_models(params: dict) -> None:
    params["models"].update({m: {"spec": f"local-dir:{m}"} for m in MODELS})
    params["predict"]["models"] = MODELS
    params["decide"]["val"] = {"h1": "M/2", "h2": 3, "h3": "2M/3"}
    config = DecideConfig.from_params(params, "val")
    assert config.thresholds == Thresholds(h1=3, h2=3, h3=4, n_models=5)
    assert config.strategy == "expected_benefit" and config.overrides == "data/overrides/val.csv"
    params["decide"]["val"]["h3"] = "M"
    assert DecideConfig.from_params(params, "val").thresholds.h3 == 5
