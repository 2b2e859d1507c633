"""Reading params.yaml and resolving its per-split thresholds."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from stages.contracts.errors import ConfigError, MissingInputError

DEFAULT_PARAMS = Path("params.yaml")

_FRACTION = re.compile(r"^\s*(\d*)\s*M\s*(?:/\s*(\d+))?\s*$")


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """Load params.yaml as a dict, with an error that names the file when it is missing or bad."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path} not found; run from the project root or pass --params")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    return data


def section(params: Mapping[str, Any], stage: str, split: str | None = None) -> dict[str, Any]:
    """`params[stage]` or, with a split, `params[stage][split]`, with a clear error when absent."""
    value = params.get(stage)
    if not isinstance(value, dict):
        raise ConfigError(f"params.yaml has no `{stage}:` section")
    if split is None:
        return value
    inner = value.get(split)
    if not isinstance(inner, dict):
        raise ConfigError(f"params.yaml has no `{stage}.{split}:` section; add one (see docs/)")
    return inner


def resolve_threshold(value: int | str, n_models: int, *, name: str = "threshold") -> int:
    """A count threshold from params: an int is a count; `M`, `M/2`, `2M/3` are fractions of |M|
    rounded up (5 models: M/2 -> 3, 2M/3 -> 4).

    Raises:
        ValueError: when `value` is neither a positive int nor such a fraction.
    """
    if n_models < 1:
        raise ValueError(f"{name}: need at least one model, got {n_models}")
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected a count or a fraction like 'M/2', got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"{name}: a count must be >= 1, got {value}")
        return value
    if isinstance(value, str):
        match = _FRACTION.match(value)
        if match:
            numerator = int(match.group(1) or 1)
            denominator = int(match.group(2) or 1)
            if numerator and denominator:
                return max(1, math.ceil(Fraction(numerator * n_models, denominator)))
    raise ValueError(
        f"{name}: expected a count (int) or a fraction of the number of models such "
        f"as 'M', 'M/2' or '2M/3', got {value!r}"
    )
