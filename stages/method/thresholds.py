"""The paper's vote-count thresholds of a split (params.yaml `decide.<split>`), resolved against the
number of models |M|: fix at >= h1 candidates, remove at >= h2 unique candidates or at >= h3 top-5
misses. A threshold is a count or a fraction of |M| such as 'M/2' (rounded up). Read by decide and
by explain (which examines the rows that reach h3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from stages.contracts.config import from_section
from stages.contracts.errors import ConfigError
from stages.contracts.params import resolve_threshold, section
from stages.contracts.splits import Params, SplitEntry


@dataclass(frozen=True)
class Thresholds:
    """Resolved vote counts: fix at >= h1 candidates, remove at >= h2 unique candidates or at
    >= h3 top-5 misses; n_models = |M|."""

    h1: int
    h2: int
    h3: int
    n_models: int


@dataclass(frozen=True)
class SplitDecideConfig:
    """params.yaml `decide.<split>`: the strategy and the paper's vote counts (a count, or a
    fraction of |M| such as 'M/2', rounded up)."""

    h1: int | str
    h2: int | str
    h3: int | str
    strategy: Literal["expected_benefit", "consensus", "paper"] = "expected_benefit"


def count_threshold(value: int | str, n_models: int, *, where: str) -> int:
    """One threshold of `decide.<split>` as a count of models (ConfigError naming `where`).

    Raises:
        ConfigError: not a count or a fraction of |M|, or above |M| (its rule could never fire).
    """
    try:
        count = resolve_threshold(value, n_models, name=where)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"params.yaml `{where}`: {error}") from None
    if count > n_models:
        raise ConfigError(
            f"params.yaml `{where}` = {count} is above the number of models |M| = {n_models}, "
            f"so its rule could never fire; use at most {n_models} (or a fraction such as 'M/2')"
        )
    return count


def resolve_thresholds(params: Params, split: str) -> tuple[Thresholds, SplitDecideConfig]:
    """The split's thresholds (|M| = the split's models) and its `decide.<split>` section.

    Raises:
        ConfigError: unknown/missing keys, bad thresholds, a threshold above |M| (which would
            switch its rule off silently).
    """
    own = from_section(
        SplitDecideConfig,
        section(params, "decide", split),
        where=f"decide.{split}",
        ignore=("duplicates",),  # stages.method.duplicates.DuplicatePolicy
    )
    n_models = len(SplitEntry.from_params(params, split).models(params))
    counts = {
        name: count_threshold(getattr(own, name), n_models, where=f"decide.{split}.{name}")
        for name in ("h1", "h2", "h3")
    }
    return Thresholds(n_models=n_models, **counts), own


def consensus_threshold(params: Params, split: str) -> int:
    """Only h3 (`decide.<split>.h3`, the top-5 misses at which the consensus removes a row), for
    explain, which reads no other key of the section (DVC re-runs it only when h3 changes).

    Raises:
        ConfigError: no such key, or a bad h3.
    """
    value = section(params, "decide", split).get("h3")
    if value is None:
        raise ConfigError(f"params.yaml has no decide.{split}.h3 (the top-5 consensus threshold)")
    n_models = len(SplitEntry.from_params(params, split).models(params))
    return count_threshold(value, n_models, where=f"decide.{split}.h3")
