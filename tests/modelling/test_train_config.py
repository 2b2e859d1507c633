"""train_config: params.yaml `train.settings`, `train.launch`, `train.seed` and `retrain:` checked
into TrainSettings, LaunchConfig and RetrainSection, and the eval rows the retrain comparison
scores."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import merge, train_sections

from stages.contracts.errors import ConfigError
from stages.modelling.launch import LaunchConfig
from stages.modelling.train_config import (
    FoldsConfig,
    RetrainSection,
    TrainSettings,
    eval_rows,
    fold_count,
    settings_from_params,
)


@pytest.fixture
def manifest(small_manifest: pd.DataFrame) -> pd.DataFrame:
    table = small_manifest.head(8).copy()
    table.loc[2, "skip_reason"] = "empty file (0 bytes)"
    return table


def test_settings_reject_unknown_keys_and_unpaired_mixup(params: dict) -> None:
    params = merge(params, train_sections("x"))
    params["train"]["settings"]["epoch"] = 3
    with pytest.raises(ConfigError, match="unknown key 'epoch'; did you mean 'epochs'"):
        settings_from_params(params)
    with pytest.raises(ConfigError, match="batch_size.*even when mixup"):
        TrainSettings(batch_size=5, mixup=0.2)
    with pytest.raises(ConfigError, match="rdzv_endpoint"):
        LaunchConfig(nnodes=2)


def test_overrides_win_over_train_settings_and_launch_and_seed_are_read(params: dict) -> None:
    params["train"]["settings"].update({"epochs": 3, "lr": 0.05})
    params["train"]["launch"] = {"nproc_per_node": 4, "nnodes": 2, "rdzv_endpoint": "node0:29400"}
    params["train"]["seed"] = 7
    settings, launch, seed = settings_from_params(params, {"epochs": 9})
    assert settings.epochs == 9 and settings.lr == 0.05  # the override, the params value
    assert launch.world == 8 and launch.rdzv_endpoint == "node0:29400" and seed == 7
    assert params["train"]["settings"]["epochs"] == 3  # params left as they were


@pytest.mark.parametrize("seed", [-1, 1.5, True, "0"])
def test_seed_must_be_a_non_negative_int(params: dict, seed: object) -> None:
    params["train"]["seed"] = seed
    with pytest.raises(ConfigError, match="train.seed"):
        settings_from_params(params)


def test_params_without_a_train_section_are_refused(params: dict) -> None:
    del params["train"]
    with pytest.raises(ConfigError, match="no `train:` section"):
        settings_from_params(params)


def test_numeric_settings_leave_out_what_does_not_change_the_weights() -> None:
    numeric = TrainSettings().numeric()
    assert not {"workers", "checkpoint_every", "eval_batch_size", "dtype"} & set(numeric)
    assert {"epochs", "batch_size", "lr", "init", "mixup", "scale"} <= set(numeric)


def test_retrain_section_must_name_configured_splits_and_model(params: dict) -> None:
    config = RetrainSection.from_params(params)
    assert config == RetrainSection(
        split=params["retrain"]["split"],
        eval_split=params["retrain"]["eval_split"],
        model=params["retrain"]["model"],
        settings={},
    )
    params["retrain"]["model"] = "no_such_model"
    with pytest.raises(ConfigError, match="retrain.model.*no_such_model"):
        RetrainSection.from_params(params)
    params["retrain"] = {**params["retrain"], "model": config.model, "eval_split": "test"}
    with pytest.raises(ConfigError, match="split 'test' is not configured"):
        RetrainSection.from_params(params)


def test_images_of_the_train_split_are_never_scored(manifest: pd.DataFrame) -> None:
    rows, excluded = eval_rows(manifest, manifest["image_id"].iloc[[0, 2, 6]])
    assert rows.tolist() == [1, 3, 4, 5, 7] and excluded == 2  # row 2 is a skip row anyway


def _params(params: dict, split: str = "train_demo", *, folds: list | None = None) -> dict:
    params["splits"][split] = {**params["splits"]["val"], "predictions": "out-of-fold"}
    params["train"] = {"splits": [split], "models": [], "folds": folds or [0, 1, 2], "seed": 3}
    return params


def test_params_must_name_the_folds_and_mark_the_split(params: dict) -> None:
    with pytest.raises(ConfigError, match=r"train.folds.*\[0, 1, 2, 3\]"):
        fold_count(_params(params, folds=[1, 2]))
    params = _params(params)
    params["splits"]["train_demo"]["predictions"] = "pretrained"
    with pytest.raises(ConfigError, match="predictions: out-of-fold"):
        FoldsConfig.from_params(params, "train_demo")
