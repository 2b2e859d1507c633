"""stages.contracts.splits: every key of a split entry typed, read only when a stage asks for it."""

from __future__ import annotations

from typing import Any

import pytest

from stages.contracts.errors import ConfigError
from stages.contracts.splits import SplitEntry

ENTRY = {"root": "data/val", "layout": "kaggle"}


class Reads(dict):
    """A split entry that records which keys were read (as DVC's params tracking needs)."""

    def __init__(self, data: dict[str, Any]) -> None:
        super().__init__(data)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)


def test_each_value_is_read_only_when_a_stage_asks_for_it() -> None:
    raw = Reads({**ENTRY, "labels": "iterations/val.parquet", "overrides": "o.csv"})
    entry = SplitEntry.from_params({"splits": {"val": raw}}, "val")
    assert raw.read == set()  # names and required keys are checked without reading values
    assert entry.labels == "iterations/val.parquet"
    assert raw.read == {"labels"}


def test_defaults_of_keys_left_out() -> None:
    entry = SplitEntry.from_params({"splits": {"val": ENTRY}}, "val")
    assert (entry.subset, entry.limit, entry.labels, entry.overrides) == (None, None, None, None)
    assert entry.predictions == "pretrained" and not entry.out_of_fold
    assert entry.labels_file == "iterations/val.parquet"


@pytest.mark.parametrize(
    "key, value, message",
    [
        (
            "predictions",
            "oof",
            r"`splits.val.predictions` must be one of 'pretrained', 'out-of-fold', "
            r"got 'oof'",
        ),
        ("limit", "10", r"`splits.val.limit` must be an int or null, got '10'"),
        ("labels", 3, r"`splits.val.labels` must be a string or null, got 3"),
        ("layout", "zip", r"`splits.val.layout` must be one of 'kaggle', 'devkit'"),
    ],
)
def test_a_mistyped_value_names_the_key_the_type_and_the_value(
    key: str, value: Any, message: str
) -> None:
    entry = SplitEntry.from_params({"splits": {"val": {**ENTRY, key: value}}}, "val")
    with pytest.raises(ConfigError, match=message):
        getattr(entry, key)


def test_unknown_and_missing_keys_and_splits_are_refused_when_the_entry_is_made() -> None:
    with pytest.raises(
        ConfigError,
        match=r"`splits.val` has an unknown key 'label'; did you mean "
        r"'labels'",
    ):
        SplitEntry.from_params({"splits": {"val": {**ENTRY, "label": "x"}}}, "val")
    with pytest.raises(ConfigError, match=r"`splits.val` lacks the key 'layout'; add it"):
        SplitEntry.from_params({"splits": {"val": {"root": "r"}}}, "val")
    with pytest.raises(
        ConfigError,
        match=r"split 'v2' is not configured; params.yaml splits: "
        r"\['val'\]",
    ):
        SplitEntry.from_params({"splits": {"val": ENTRY}}, "v2")
    with pytest.raises(ConfigError, match=r"`splits.val` must be a mapping"):
        SplitEntry.from_params({"splits": {"val": "data/val"}}, "val")


def test_out_of_fold_is_required_where_folds_are_trained() -> None:
    entry = SplitEntry.from_params({"splits": {"t": {**ENTRY, "predictions": "out-of-fold"}}}, "t")
    entry.require_out_of_fold()
    with pytest.raises(ConfigError, match=r"set `splits.val.predictions: out-of-fold`"):
        SplitEntry.from_params({"splits": {"val": ENTRY}}, "val").require_out_of_fold()
