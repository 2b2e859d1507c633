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
    strategy: Literal["consensus", "paper"] = "consensus"



def resolve_thresholds(params: Params, split: str) -> tuple[Thresholds, SplitDecideConfig]:
    """The split's thresholds (|M| = the split's models) and its `decide.<split>` section.

    Raises:
        ConfigError: unknown/missing keys, bad thresholds, a threshold above |M| (which would
            switch its rule off silently).
    """
    own = from_section(SplitDecideConfig, section(params, "decide", split), where=f"decide.{split}")
    n_models = len(SplitEntry.from_params(params, split).models(params))
    counts = {}
    for name in ("h1", "h2", "h3"):
        where = f"decide.{split}.{name}"
        try:
            counts[name] = resolve_threshold(getattr(own, name), n_models, name=where)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"params.yaml `{where}`: {error}") from None
        if counts[name] > n_models:
            raise ConfigError(f"params.yaml `{where}` = {counts[name]} is above the number of "
                              f"models |M| = {n_models}, so its rule could never fire; use at "
                              f"most {n_models} (or a fraction such as 'M/2')")
    return Thresholds(n_models=n_models, **counts), own
