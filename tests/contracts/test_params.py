"""stages.contracts.params: reading params.yaml, the sections stages read (with errors that say what
is missing), the models a split's votes use, and the count thresholds written as ints or fractions
of the number of models ('M', 'M/2', '2M/3')."""

from __future__ import annotations

from pathlib import Path

import pytest

from stages.contracts.errors import ConfigError, MissingInputError
from stages.contracts.params import load_params, resolve_threshold, section
from stages.contracts.splits import SplitEntry


@pytest.mark.parametrize(
    "value, n_models, count",
    [
        (1, 5, 1),
        (3, 5, 3),
        ("M", 5, 5),
        ("M/2", 5, 3),
        ("2M/3", 5, 4),
        ("M/2", 4, 2),
        ("2M/3", 3, 2),
        (" 2 M / 3 ", 5, 4),  # spaces are allowed
        ("M/10", 5, 1),  # rounded up: never below one model
    ],
)
def test_threshold_is_a_count_or_a_fraction_of_the_models_rounded_up(
    value: int | str, n_models: int, count: int
) -> None:
    assert resolve_threshold(value, n_models) == count


@pytest.mark.parametrize(
    "value, error, message",
    [
        (0, ValueError, r"decide.val.h1: a count must be >= 1, got 0"),
        (-2, ValueError, r"a count must be >= 1, got -2"),
        (True, TypeError, r"decide.val.h1: expected a count or a fraction like 'M/2', got True"),
        (
            "half",
            ValueError,
            r"decide.val.h1: expected a count \(int\) or a fraction of the number of "
            r"models such as 'M', 'M/2' or '2M/3', got 'half'",
        ),
        ("m/2", ValueError, r"got 'm/2'"),
        ("3", ValueError, r"got '3'"),
        (2.5, ValueError, r"got 2.5"),
        ("M/0", ValueError, r"decide.val.h1: expected a count .* got 'M/0'"),
        ("0M", ValueError, r"got '0M'"),
    ],
)
def test_bad_thresholds_are_refused_naming_the_key(
    value: object, error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        resolve_threshold(value, 5, name="decide.val.h1")


def test_a_threshold_needs_at_least_one_model() -> None:
    with pytest.raises(ValueError, match=r"threshold: need at least one model, got 0"):
        resolve_threshold("M/2", 0)


def split_models(params: dict, split: str) -> tuple[str, ...]:
    return SplitEntry.from_params(params, split).models(params)


def test_section_and_split_entry_return_the_mapping_or_say_what_to_add() -> None:
    params = {
        "splits": {"val": {"root": "data/val", "layout": "kaggle"}},
        "vote": {"fn": 1.0, "val": {"fn": 0.5}},
        "explain": None,
    }
    assert SplitEntry.from_params(params, "val").root == "data/val"
    assert section(params, "vote") is params["vote"]
    assert section(params, "vote", "val") == {"fn": 0.5}
    with pytest.raises(
        ConfigError,
        match=r"split 'train' is not configured; params.yaml splits: "
        r"\['val'\]",
    ):
        SplitEntry.from_params(params, "train")
    with pytest.raises(
        ConfigError,
        match=r"split 'val' is not configured; params.yaml "
        r"splits: \[\]",
    ):
        SplitEntry.from_params({}, "val")
    with pytest.raises(ConfigError, match=r"params.yaml has no `decide:` section"):
        section(params, "decide")
    with pytest.raises(ConfigError, match=r"params.yaml has no `explain:` section"):
        section(params, "explain")
    with pytest.raises(ConfigError, match=r"params.yaml has no `vote.train:` section; add one"):
        section(params, "vote", "train")
    with pytest.raises(ConfigError, match=r"no `vote.fn:` section"):  # a key, not a mapping
        section(params, "vote", "fn")


def test_split_models_prefer_the_splits_own_list_over_predict_models() -> None:
    entry = {"root": "r", "layout": "kaggle"}
    params = {
        "models": {"a": {}, "b": {}, "c": {}},
        "predict": {"models": ["a", "b"]},
        "splits": {"val": entry, "train": {**entry, "models": ["c", "a"]}},
    }
    assert split_models(params, "val") == ("a", "b")
    assert split_models(params, "train") == ("c", "a")


ENTRY = {"root": "r", "layout": "kaggle"}


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            {"splits": {"val": {**ENTRY, "models": []}}},
            r"`splits.val.models` must be a non-empty list "
            r"of model names, got \[\]",
        ),
        (
            {"splits": {"val": {**ENTRY, "models": "a"}}},
            r"`splits.val.models` must be a list of "
            r"strings or null, got 'a'",
        ),
        ({"predict": {}}, r"`predict.models` must be a non-empty list of model names, got None"),
        ({"predict": {"models": ["a", 3]}}, r"`predict.models` must be a non-empty list"),
        (
            {"predict": {"models": ["a", "b", "a"]}},
            r"`predict.models` lists a model twice: "
            r"\['a', 'b', 'a'\]",
        ),
        (
            {"predict": {"models": ["a", "z"]}},
            r"`predict.models` names \['z'\], which `models:` does "
            r"not define; add a `models.<name>.spec` entry",
        ),
        ({"splits": {"val": {**ENTRY, "models": ["y"]}}}, r"`splits.val.models` names \['y'\]"),
        ({"splits": {}}, r"split 'val' is not configured"),
    ],
)
def test_bad_split_models_are_refused_naming_the_key(edit: dict, message: str) -> None:
    params = {
        "models": {"a": {}, "b": {}},
        "predict": {"models": ["a", "b"]},
        "splits": {"val": ENTRY},
        **edit,
    }
    with pytest.raises(ConfigError, match=message):
        split_models(params, "val")


def test_project_params_give_every_split_its_models(_params: dict) -> None:
    for split in _params["splits"]:
        names = split_models(_params, split)
        assert names and set(names) <= set(_params["models"]), split


def test_load_params_names_a_missing_or_malformed_file(tmp_path: Path) -> None:
    with pytest.raises(
        MissingInputError,
        match=r"nowhere.yaml not found; run from the project "
        r"root or pass --params",
    ):
        load_params(tmp_path / "nowhere.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError, match=rf"{bad.name} must hold a mapping at the top level"):
        load_params(bad)
    bad.write_text("vote:\n  fn: 1.0\n")
    assert load_params(bad) == {"vote": {"fn": 1.0}}


def test_project_defaults_follow_the_documented_advice(_params: dict) -> None:
    """predict runs 1 torch thread (3.6x faster than torch's default on a shared CPU:
    docs/benchmarks.md) and explain draws CAM overlays, so the review page shows heatmaps."""
    assert _params["predict"]["threads"] == 1
    assert _params["explain"]["overlays"] > 0
