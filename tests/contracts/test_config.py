"""The shared params loader: unknown, missing and mistyped keys fail alike for every stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from stages.contracts.config import coerce, fraction, from_section, positive
from stages.contracts.errors import ConfigError


@dataclass(frozen=True)
class Example:
    root: str
    workers: int = 2
    heat: float = 0.75
    device: str | None = None
    mode: Literal["labels", "images"] = "labels"
    models: tuple[str, ...] = ()
    layers: dict[str, str] | None = None


def test_builds_the_dataclass_with_defaults_and_tuples() -> None:
    config = from_section(Example, {"root": "data", "heat": 1, "models": ["a", "b"]}, where="demo")
    assert config == Example(root="data", heat=1.0, models=("a", "b"))
    assert isinstance(config.heat, float)


def test_unknown_key_names_the_section_and_close_matches() -> None:
    with pytest.raises(
        ConfigError,
        match=r"`ingest` has an unknown key 'workrs'; did you mean "
        r"'workers'\?",
    ):
        from_section(Example, {"root": "x", "workrs": 1}, where="ingest")


def test_missing_required_key_names_it() -> None:
    with pytest.raises(
        ConfigError, match=r"`splits.val` lacks the key 'root'; add it \(a string\)"
    ):
        from_section(Example, {}, where="splits.val")


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("workers", "2", "an int"),
        ("workers", True, "an int"),
        ("heat", "hot", "a number"),
        ("device", 3, "a string or null"),
        ("mode", "pixels", "one of 'labels', 'images'"),
        ("models", "a", "a list of strings"),
        ("layers", ["x"], "a mapping or null"),
    ],
)
def test_wrong_type_names_key_expected_type_and_value(
    key: str, value: object, expected: str
) -> None:
    with pytest.raises(ConfigError, match=rf"`demo.{key}` must be {expected}, got"):
        from_section(Example, {"root": "x", key: value}, where="demo")


def test_ignored_keys_are_left_to_other_readers() -> None:
    assert (
        from_section(Example, {"root": "x", "splits": []}, where="d", ignore=("splits",)).root
        == "x"
    )


def test_config_errors_are_value_errors_for_existing_callers() -> None:
    with pytest.raises(ValueError):
        coerce("x", int, where="a.b")


def test_range_checkers() -> None:
    positive("a.n", 1)
    positive("a.n", None)
    with pytest.raises(ConfigError, match=r"`a.n` must be an int >= 1, got 0"):
        positive("a.n", 0)
    fraction("a.f", 1.0, low_open=True)
    with pytest.raises(ConfigError, match=r"`a.f` must be a number in \(0.0, 1.0\], got 0"):
        fraction("a.f", 0, low_open=True)


def test_ignored_keys_are_known_but_not_read() -> None:
    class Seen(dict):
        def __init__(self, data: dict) -> None:
            super().__init__(data)
            self.read: list[str] = []

        def __getitem__(self, key: str) -> object:
            self.read.append(key)
            return super().__getitem__(key)

    values = Seen({"root": "x", "workers": 4, "colour": "red"})
    config = from_section(Example, values, where="demo", ignore=("colour",))
    assert (config.root, config.workers, config.heat) == ("x", 4, 0.75)
    assert values.read == ["root", "workers"]
    with pytest.raises(
        ConfigError,
        match=r"unknown key 'colr'; did you mean 'colour'\?.*allowed: "
        r"root, .*, colour\)",
    ):
        from_section(Example, {"root": "x", "colr": 1}, where="demo", ignore=("colour",))
