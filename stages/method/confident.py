"""Confident-learning strategies over memory-mapped predictions: which rows one model flags.

`exact` is cleanlab's `find_label_issues(filter_by="prune_by_noise_rate",
return_indices_ranked_by="normalized_margin", frac_noise=fn)` on the active rows held as float32
(~15 bytes per row and class at peak); `streaming` gives the same flags in the same order from
chunks of the memory-mapped predictions (`stages.method.confident_streaming`; a few hundred MB at
ImageNet-train size); `batched` is cleanlab's low-memory `LabelInspector` (two passes over chunks;
it approximates `filter_by="low_normalized_margin"`, so its flags differ from the other two). `auto`
runs `exact` up to `exact_max_rows` active rows and `streaming` above. Each returns, per active row,
the model's most likely class other than the label (the candidate) and whether its top-5 holds the
label.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from cleanlab.count import compute_confident_joint
from cleanlab.experimental.label_issues_batched import LabelInspector
from cleanlab.filter import find_label_issues
from cleanlab.rank import find_top_issues
from tqdm import tqdm

from stages.adapters import cleanlab_adapter
from stages.contracts import formats
from stages.contracts.config import from_section
from stages.contracts.errors import ConfigError
from stages.contracts.params import section
from stages.contracts.probabilities import check_probabilities
from stages.method.confident_streaming import find_label_issues_streaming, read_float32_rows

logger = logging.getLogger(__name__)

FILTER_BY = "prune_by_noise_rate"
RANK_BY = "normalized_margin"
TOP_K = 5


@dataclass(frozen=True)
class ConfidentConfig:
    """Options of the vote stage (params `vote.<split>` over `vote.exact_max_rows`).

    Attributes:
        fn: cleanlab `frac_noise` in (0, 1].
        fn_mode: how fn < 1 is applied by the exact strategies: `cleanlab` passes it to cleanlab
            (as the paper did; cleanlab truncates each class-pair prune count, so with 1000 classes
            it keeps far fewer than fn of the flags, and a warning gives the figures); `ranked`
            keeps the top ceil(fn * flags at fn=1) by normalized margin.
        strategy: `auto` (exact up to `exact_max_rows` active rows, else streaming), `exact`,
            `streaming` (the same flags as exact from chunks), `batched` (cleanlab's
            LabelInspector: other flags, see docs/vote.md).
        exact_max_rows: the auto strategy's size limit for the in-memory exact path
            (`vote.exact_max_rows`; a split may override it).
        chunk_rows: rows read, cast to float32 and checked at a time.
        n_jobs: cleanlab worker processes for `exact` (1 = in-process; results do not depend on it).
    """

    fn: float = 1.0
    fn_mode: Literal["cleanlab", "ranked"] = "cleanlab"
    strategy: Literal["auto", "exact", "streaming", "batched"] = "auto"
    exact_max_rows: int = 200_000
    chunk_rows: int = formats.CHUNK_ROWS
    n_jobs: int = 1

    def __post_init__(self) -> None:
        if (
            isinstance(self.fn, bool)
            or not isinstance(self.fn, (int, float))
            or not 0 < self.fn <= 1
        ):
            raise ConfigError(
                f"vote fn (cleanlab frac_noise) must be a number in (0, 1], got {self.fn!r}"
            )
        if self.fn_mode not in FN_MODES:
            raise ConfigError(
                f"vote fn_mode must be one of {sorted(FN_MODES)}, got {self.fn_mode!r}"
            )
        if self.strategy != "auto" and self.strategy not in CL_STRATEGIES:
            raise ConfigError(
                f"vote strategy must be 'auto' or one of {sorted(CL_STRATEGIES)}, "
                f"got {self.strategy!r}"
            )
        for name in ("exact_max_rows", "chunk_rows", "n_jobs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"vote {name} must be a positive int, got {value!r}")

    @classmethod
    def from_params(cls, params: Mapping[str, Any], split: str) -> ConfidentConfig:
        """The vote options of one split: params `vote.<split>` (any field above), with
        `vote.exact_max_rows` as the default of `exact_max_rows`.

        Raises:
            ConfigError: no `vote.<split>` section, or an unknown, mistyped or out-of-range key
                (named with its section, e.g. `vote.val.fn_mode`).
        """
        top = section(params, "vote")
        splits = tuple(
            k for k, v in top.items() if isinstance(v, Mapping) or k in (params.get("splits") or {})
        )
        shared = from_section(_ConfidentShared, top, where="vote", ignore=splits)
        own = section(params, "vote", split)
        return from_section(
            cls, {"exact_max_rows": shared.exact_max_rows, **own}, where=f"vote.{split}"
        )

    def resolve_strategy(self, n_active: int) -> str:
        """The strategy used for `n_active` rows."""
        if self.strategy != "auto":
            return self.strategy
        return "exact" if n_active <= self.exact_max_rows else "streaming"


@dataclass(frozen=True)
class _ConfidentShared:
    """The keys of params `vote:` that are not split sections."""

    exact_max_rows: int = ConfidentConfig.exact_max_rows


@dataclass(frozen=True, eq=False)
class _Flags:
    ranked: np.ndarray  # (F,) positions into the active rows, most severe first
    candidates: np.ndarray  # (A,) int32 top other class of every active row
    top5_hit: np.ndarray  # (A,) bool
    flagged_at_fn_1: int | None = None


def _chunks(
    pred_probs: Any, rows: np.ndarray, labels: np.ndarray, chunk_rows: int, model: str, desc: str
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield (start, labels, float32 probabilities) for consecutive chunks of the active `rows`."""
    with tqdm(
        total=len(rows), desc=f"vote {model} {desc}", unit="row", mininterval=2.0, leave=False
    ) as bar:
        for start in range(0, len(rows), chunk_rows):
            index = rows[start : start + chunk_rows]
            chunk = read_float32_rows(pred_probs, index)
            _check_chunk(chunk, index, model, pred_probs.dtype)
            bar.update(len(index))
            yield start, labels[start : start + chunk_rows], chunk


def _check_chunk(chunk: np.ndarray, index: np.ndarray, model: str, dtype: np.dtype) -> None:
    """Active rows must be probabilities (only manifest skip rows may be NaN)."""
    check_probabilities(
        chunk, rows=index, where=f"predictions of {model} (active rows)", dtype=dtype
    )


def _chunk_stats(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B,) labels, (B, K) probs -> candidate (most likely class other than the label), top-5 hit.

    A hit means fewer than 5 classes are strictly more probable than the label (ties count as hits).
    """
    at = np.arange(len(labels))
    own = probs[at, labels]
    hit = (probs > own[:, None]).sum(axis=1) < TOP_K
    others = probs.copy()
    others[at, labels] = -np.inf
    return others.argmax(axis=1).astype(np.int32), hit


def _cleanlab_issues(
    labels: np.ndarray,
    probs: np.ndarray,
    fn: float,
    n_jobs: int,
    confident_joint: np.ndarray | None = None,
) -> np.ndarray:
    """Cleanlab's find_label_issues as the paper calls it; per-class warnings summarised once."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ranked = find_label_issues(
                labels,
                probs,
                filter_by=FILTER_BY,
                return_indices_ranked_by=RANK_BY,
                frac_noise=fn,
                confident_joint=confident_joint,
                n_jobs=n_jobs,
            )
        finally:  # cleanlab keeps a per-class copy of pred_probs in module globals: drop it
            cleanlab_adapter.release_globals()
    few = [w for w in caught if "too few examples" in str(w.message)]
    if few:
        logger.info(
            "cleanlab cannot flag rows of %d classes that have <= 1 active example "
            "(min_examples_per_class)",
            len(few),
        )
    for other in (w for w in caught if w not in few):
        logger.warning("cleanlab: %s", other.message)
    return np.asarray(ranked, dtype=np.int64)


Finder = Callable[[Sequence[float]], list[np.ndarray]]
"""find(frac_noise values) -> each value's ranked flags (positions into the active rows)."""


def _fn_cleanlab(
    find: Finder, config: ConfidentConfig, model: str
) -> tuple[np.ndarray, int | None]:
    if config.fn == 1:
        return find([1.0])[0], None
    ranked, full = find([config.fn, 1.0])
    kept = len(ranked) / max(len(full), 1)
    logger.log(
        logging.WARNING if kept < 0.9 * config.fn else logging.INFO,
        "%s: cleanlab frac_noise=%s kept %d of the %d flags at frac_noise=1 (%.1f %%): cleanlab "
        "truncates each class-pair prune count, so pairs seen once or twice lose all their "
        "flags; vote fn_mode: ranked keeps the top fn fraction instead",
        model,
        config.fn,
        len(ranked),
        len(full),
        100 * kept,
    )
    return ranked, len(full)


def _fn_ranked(find: Finder, config: ConfidentConfig, model: str) -> tuple[np.ndarray, int | None]:
    ranked = find([1.0])[0]
    if config.fn == 1:
        return ranked, None
    return ranked[: math.ceil(config.fn * len(ranked))], len(ranked)


FN_MODES: dict[str, Callable[[Finder, ConfidentConfig, str], tuple[np.ndarray, int | None]]] = {
    "cleanlab": _fn_cleanlab,
    "ranked": _fn_ranked,
}


def _exact(
    labels: np.ndarray, pred_probs: Any, rows: np.ndarray, config: ConfidentConfig, model: str
) -> _Flags:
    """cleanlab.filter.find_label_issues on the active rows held in memory as float32."""
    probs = np.empty((len(rows), pred_probs.shape[1]), dtype=np.float32)
    candidates = np.empty(len(rows), dtype=np.int32)
    hit = np.empty(len(rows), dtype=bool)
    for start, chunk_labels, chunk in _chunks(
        pred_probs, rows, labels, config.chunk_rows, model, "read"
    ):
        end = start + len(chunk)
        probs[start:end] = chunk
        candidates[start:end], hit[start:end] = _chunk_stats(chunk_labels, chunk)

    def find(fractions: Sequence[float]) -> list[np.ndarray]:
        joint = compute_confident_joint(labels, probs) if len(fractions) > 1 else None
        return [_cleanlab_issues(labels, probs, fn, config.n_jobs, joint) for fn in fractions]

    ranked, full = FN_MODES[config.fn_mode](find, config, model)
    return _Flags(ranked, candidates, hit, full)


def _streaming(
    labels: np.ndarray, pred_probs: Any, rows: np.ndarray, config: ConfidentConfig, model: str
) -> _Flags:
    """The flags of `exact`, streamed (stages.method.confident_streaming): chunks, one class at a
    time."""
    candidates = np.empty(len(rows), dtype=np.int32)
    hit = np.empty(len(rows), dtype=bool)

    def stats(start: int, chunk_labels: np.ndarray, chunk: np.ndarray) -> None:
        _check_chunk(chunk, rows[start : start + len(chunk)], model, pred_probs.dtype)
        candidates[start : start + len(chunk)], hit[start : start + len(chunk)] = _chunk_stats(
            chunk_labels, chunk
        )

    def find(fractions: Sequence[float]) -> list[np.ndarray]:
        return find_label_issues_streaming(
            labels,
            pred_probs,
            rows=rows,
            frac_noise=fractions,
            chunk_rows=config.chunk_rows,
            on_chunk=stats,
            desc=f"vote {model}",
        )

    ranked, full = FN_MODES[config.fn_mode](find, config, model)
    return _Flags(ranked, candidates, hit, full)


def _batched(
    labels: np.ndarray, pred_probs: Any, rows: np.ndarray, config: ConfidentConfig, model: str
) -> _Flags:
    """Cleanlab's LabelInspector: thresholds pass, then scores pass; never more than a chunk."""
    inspector = LabelInspector(
        num_class=pred_probs.shape[1],
        verbose=False,
        n_jobs=1,
        quality_score_kwargs={"method": RANK_BY},
    )
    for _, chunk_labels, chunk in _chunks(
        pred_probs, rows, labels, config.chunk_rows, model, "thresholds"
    ):
        inspector.update_confident_thresholds(chunk_labels, chunk)
    candidates = np.empty(len(rows), dtype=np.int32)
    hit = np.empty(len(rows), dtype=bool)
    correct = np.empty(len(rows), dtype=bool)
    for start, chunk_labels, chunk in _chunks(
        pred_probs, rows, labels, config.chunk_rows, model, "scores"
    ):
        end = start + len(chunk)
        inspector.score_label_quality(chunk_labels, chunk)
        correct[start:end] = cleanlab_adapter.reduce_issues(chunk, chunk_labels)
        candidates[start:end], hit[start:end] = _chunk_stats(chunk_labels, chunk)
    n_issues = int(inspector.get_num_issues(silent=True))
    top = n_issues if config.fn == 1 else math.ceil(config.fn * n_issues)
    ranked = find_top_issues(inspector.get_quality_scores(), top=top).astype(np.int64)
    ranked = ranked[~correct[ranked]]
    if config.fn != 1:
        logger.info(
            "%s: batched path applies fn=%s as the top fn fraction of %d estimated issues",
            model,
            config.fn,
            n_issues,
        )
    return _Flags(ranked, candidates, hit, n_issues if config.fn != 1 else None)


CL_STRATEGIES: dict[str, Callable[[np.ndarray, Any, np.ndarray, ConfidentConfig, str], _Flags]] = {
    "exact": _exact,
    "streaming": _streaming,
    "batched": _batched,
}
