"""One way to build a stage's configuration: a frozen dataclass from its params.yaml section.

`from_section(Config, params["explain"], where="explain")` checks the section against the
dataclass fields: unknown keys (with close matches), missing required keys and wrong types raise
`ConfigError` naming the section and the key, so every stage fails the same way on the same mistake.
Range checks that types cannot say (positive counts, fractions) stay in each dataclass's
`__post_init__`, written with the small checkers below.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union

from stages.contracts.errors import ConfigError

T = TypeVar("T")

_MISSING = object()


def from_section(
    cls: type[T], values: Mapping[str, Any] | None, *, where: str, ignore: tuple[str, ...] = ()
) -> T:
    """Build the frozen dataclass `cls` from a params section.

    Args:
        cls: a dataclass whose fields are the section's keys (defaults = optional keys).
        values: the section as read from params.yaml (None = empty).
        where: the section's dotted name in params.yaml, used in every message.
        ignore: keys of the section that other code reads (not fields of `cls`): known keys
            (no unknown-key error) that this caller does not read, so DVC need not track them
            for its stage.

    Raises:
        ConfigError: an unknown key (with close matches), a missing required key or a value of the
            wrong type.
    """
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"params.yaml `{where}` must be a mapping of keys, got {values!r}")
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"from_section builds dataclasses, not {cls!r}")
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in values if k not in known and k not in ignore]
    if unknown:
        key = unknown[0]
        allowed = [*known, *ignore]
        close = difflib.get_close_matches(str(key), allowed, n=3)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(
            f"params.yaml `{where}` has an unknown key {key!r}{hint} "
            f"(allowed: {', '.join(allowed)})"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, field in known.items():
        has_default = (
            field.default is not dataclasses.MISSING
            or field.default_factory is not dataclasses.MISSING
        )
        if name not in values:
            if not has_default:
                raise ConfigError(
                    f"params.yaml `{where}` lacks the key {name!r}; add it "
                    f"({describe(hints[name])})"
                )
            continue
        kwargs[name] = coerce(values[name], hints[name], where=f"{where}.{name}")
    return cls(**kwargs)


def coerce(value: Any, kind: Any, *, where: str) -> Any:
    """`value` checked against the type annotation `kind` (lists become tuples).

    Raises:
        ConfigError: naming `where`, the expected type and the value.
    """
    result = _coerce(value, kind)
    if result is _MISSING:
        raise ConfigError(f"params.yaml `{where}` must be {describe(kind)}, got {value!r}")
    return result


def _coerce(value: Any, kind: Any) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return value
    if origin in (Union, types.UnionType):
        for option in args:
            result = _coerce(value, option)
            if result is not _MISSING:
                return result
        return _MISSING
    if origin is Literal:
        return value if any(value == a and type(value) is type(a) for a in args) else _MISSING
    if origin in (list, tuple, typing.Sequence) or kind in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return _MISSING
        item = args[0] if args else Any
        items = tuple(_coerce(v, item) for v in value)
        return _MISSING if any(i is _MISSING for i in items) else items
    if origin in (dict, typing.Mapping) or kind is dict:
        if not isinstance(value, Mapping):
            return _MISSING
        key_kind, value_kind = args if args else (Any, Any)
        pairs = {_coerce(k, key_kind): _coerce(v, value_kind) for k, v in value.items()}
        return _MISSING if _MISSING in pairs or _MISSING in pairs.values() else dict(pairs)
    return _scalar(value, kind)


def _scalar(value: Any, kind: Any) -> Any:
    if kind is type(None):
        return None if value is None else _MISSING
    if kind is bool:
        return value if isinstance(value, bool) else _MISSING
    if kind is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _MISSING
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return float(value) if ok else _MISSING
    if kind is str:
        return value if isinstance(value, str) else _MISSING
    return value if isinstance(value, kind) else _MISSING


def describe(kind: Any) -> str:
    """A person's name for a type annotation: 'an int or null', 'one of 'a', 'b''."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple, typing.Sequence) or kind in (list, tuple):
        return f"a list of {_plural(args[0]) if args else 'values'}"
    if origin in (dict, typing.Mapping) or kind is dict:
        return "a mapping"
    names = {
        type(None): "null",
        bool: "true or false",
        int: "an int",
        float: "a number",
        str: "a string",
    }
    return names.get(kind, getattr(kind, "__name__", str(kind)))


def _plural(kind: Any) -> str:
    """A person's name for several values of a type: 'strings', 'ints or null'."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (Union, types.UnionType):
        return " or ".join(_plural(a) for a in args)
    names = {
        type(None): "null",
        bool: "true/false values",
        int: "ints",
        float: "numbers",
        str: "strings",
    }
    return names.get(kind, describe(kind))


def require(condition: bool, where: str, expected: str, value: Any) -> None:
    """Unless `condition`, raise ConfigError "params.yaml `where` must be <expected>, got <v>"."""
    if not condition:
        raise ConfigError(f"params.yaml `{where}` must be {expected}, got {value!r}")


def positive(where: str, value: int | None, *, minimum: int = 1) -> None:
    """A count >= `minimum` (None passes: optional knobs)."""
    require(value is None or value >= minimum, where, f"an int >= {minimum}", value)


def fraction(
    where: str, value: float, *, low: float = 0.0, high: float = 1.0, low_open: bool = False
) -> None:
    """A number in [low, high] (or (low, high] with `low_open`)."""
    inside = (low < value if low_open else low <= value) and value <= high
    bracket = "(" if low_open else "["
    require(inside, where, f"a number in {bracket}{low}, {high}]", value)
