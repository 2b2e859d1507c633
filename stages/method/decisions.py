"""What decision strategies read and return: the evidence of the active rows (`Rows`), their
decisions (`Decisions`), the strategies' options, and the estimated probability that a decision
is right (`confidence`), the same for every strategy.

A strategy sees only the pipeline's evidence, never reference labels.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from stages.contracts.actions import Action
from stages.contracts.config import fraction, from_section
from stages.contracts.formats import class_label
from stages.contracts.params import section
from stages.contracts.splits import Params
from stages.method.thresholds import Thresholds


@dataclass(frozen=True)
class ConsensusConfig:
    """params.yaml `decide.consensus` (one setting for every split).

    Attributes:
        clear: a class is clearly right when the ensemble's mean probability for it is >= clear.
        support: the ensemble does not support the label when its mean probability is < support.
        secondary: the label and another class both at >= secondary: the image shows both; the
            other class becomes a secondary label.
        max_remove: at most this fraction of a split's active rows is removed per iteration, the
            weakest labels first (the ensemble's margin, label minus best other class).
    """

    clear: float = 0.5
    support: float = 0.15
    secondary: float = 0.3
    max_remove: float = 0.04

    def __post_init__(self) -> None:
        for name in ("clear", "support", "secondary", "max_remove"):
            fraction(f"decide.consensus.{name}", getattr(self, name))


@dataclass(frozen=True, eq=False)
class Rows:
    """The evidence of the A active rows a strategy decides (arrays aligned, ledger order).

    Attributes:
        label: (A,) int current labels.
        candidates: (A,) object, each an int array: the CL candidates L' (one per flagging model).
        misses: (A,) int top-5 misses C_s.
        exemptions: (A,) int number of models whose CAMs exempt the row.
        ensemble_top: (A, 5) int the ensemble's most probable classes, best first.
        ensemble_probs: (A, 5) float their mean probabilities.
        label_prob: (A,) float the ensemble's probability of the label.
        model_top1: (A,) object, each an int array: every model's top-1 class.
        label_posterior: (A,) float the posterior that the label is right (NaN: no evidence).
        best_other: (A,) int the most probable other class (-1: no evidence).
        best_other_posterior: (A,) float its posterior.
        noise: (A,) float the split's label-noise rate the posterior assumes.
    """

    label: np.ndarray
    candidates: np.ndarray
    misses: np.ndarray
    exemptions: np.ndarray
    ensemble_top: np.ndarray
    ensemble_probs: np.ndarray
    label_prob: np.ndarray
    model_top1: np.ndarray
    label_posterior: np.ndarray
    best_other: np.ndarray
    best_other_posterior: np.ndarray
    noise: np.ndarray


@dataclass(frozen=True, eq=False)
class Decisions:
    """What a strategy decided for the A active rows: action (keep/fix/remove), new_label (-1 for
    remove), exempted (saved from removal by the CAMs), reason, secondary labels, and the rows it
    queues for review (kept as they are, for a person to look at first)."""

    action: np.ndarray
    new_label: np.ndarray
    exempted: np.ndarray
    reason: np.ndarray
    secondary: list[list[int]]
    review: np.ndarray

    @classmethod
    def keep_all(cls, rows: Rows) -> Decisions:
        """Every row kept with its current label (no secondary labels)."""
        n = len(rows.label)
        return cls(
            np.full(n, Action.KEEP.value, dtype=object),
            rows.label.astype(np.int64).copy(),
            np.zeros(n, dtype=bool),
            np.full(n, "keep", dtype=object),
            [[] for _ in range(n)],
            np.zeros(n, dtype=bool),
        )


def remove_within_budget(
    out: Decisions,
    order: np.ndarray,
    why: Callable[[int], str],
    *,
    max_remove: float,
    kept: str,
) -> None:
    """Remove the removal candidates in `order` (first = removed first) up to the budget,
    floor(max_remove x the A active rows); the others stay, flagged for review, their reason
    `<kept>: <why>; beyond the removal budget (...)`.

    order: (C,) row positions; why: row -> the evidence text of its reason.
    """
    n = len(out.action)
    budget = math.floor(max_remove * n + 1e-9)
    for rank, i in enumerate(order):
        reason = why(int(i))
        if rank < budget:
            out.action[i], out.new_label[i] = Action.REMOVE.value, -1
            out.reason[i] = f"remove: {reason}"
        else:
            out.review[i] = True
            out.reason[i] = (
                f"{kept}: {reason}; beyond the removal budget (max_remove {max_remove}: "
                f"{budget} of {n} active rows)"
            )


def describe_candidates(counts: Counter[int]) -> str:
    """`{12 (name): 3, 7 (name): 1}`: candidates by frequency, then class index."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return "{" + ", ".join(f"{class_label(c)}: {n}" for c, n in items) + "}"


def predicted(model_top1: Sequence[int]) -> str:
    """`models predicted 509 (confectionery) x3, 860 (tobacco shop) x1` (most frequent first)."""
    counts = Counter(int(c) for c in model_top1)
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return "models predicted " + ", ".join(f"{class_label(c)} x{n}" for c, n in items)


class Strategy(Protocol):
    """A decision strategy: the evidence of the active rows -> their decisions. It reads only the
    pipeline's evidence, never reference labels."""

    def __call__(
        self, rows: Rows, *, thresholds: Thresholds, options: StrategyOptions
    ) -> Decisions:
        """Decide every active row from its evidence."""
        ...


@dataclass(frozen=True)
class ExpectedBenefitConfig:
    """params.yaml `decide.expected_benefit` (one setting for every split).

    Attributes:
        precision: act (fix; publish a secondary label) only where the estimated probability
            that the action is right is >= precision.
        max_remove: at most this fraction of a split's active rows is removed per iteration.
        removal_margin: remove only a label at least this many times as likely wrong as the
            split's average label (P(wrong) >= removal_margin x eps): the posterior is an
            estimate, and with uninformative models every label sits at eps.
        review: queue a kept row for review when an action would be right with probability >=
            review (but below what acting needs).
        cam_veto: a removal candidate whose label some model's CAMs find inside its boxes is kept.
    """

    precision: float = 0.8
    max_remove: float = 0.04
    removal_margin: float = 2.0
    review: float = 0.5
    cam_veto: bool = True

    def __post_init__(self) -> None:
        for name in ("precision", "max_remove", "review"):
            fraction(f"decide.expected_benefit.{name}", getattr(self, name))
        fraction("decide.expected_benefit.removal_margin", self.removal_margin, low=1.0, high=10)


@dataclass(frozen=True)
class StrategyOptions:
    """The knobs of every strategy (`decide.consensus`, `decide.expected_benefit`)."""

    consensus: ConsensusConfig = field(default_factory=ConsensusConfig)
    expected_benefit: ExpectedBenefitConfig = field(default_factory=ExpectedBenefitConfig)

    @classmethod
    def from_params(cls, params: Params) -> StrategyOptions:
        """From `decide.consensus` and `decide.expected_benefit` (defaults where absent).

        Raises:
            ConfigError: an unknown key or a knob outside [0, 1].
        """
        shared = section(params, "decide")
        return cls(
            from_section(ConsensusConfig, shared.get("consensus"), where="decide.consensus"),
            from_section(
                ExpectedBenefitConfig,
                shared.get("expected_benefit"),
                where="decide.expected_benefit",
            ),
        )


def posterior_of(rows: Rows, classes: np.ndarray) -> np.ndarray:
    """(A,) the posterior that `classes` (one per row) is the image's true class.

    pi(y) is the evidence's; pi(c) for another class c follows from the same closed form,
    pi(c) = eps * odds(c) * pi(y) / (1 - eps) with odds(c) = q(c) / (1 - q(c)), q(c) read from
    the ensemble's top five (a class outside them has q below the fifth and counts as 0).
    """
    own = rows.label_posterior.astype(np.float64)
    is_label = classes == rows.label
    hit = rows.ensemble_top == classes[:, None]
    q = np.where(hit.any(axis=1), (rows.ensemble_probs * hit).sum(axis=1), 0.0)
    odds = q / np.clip(1.0 - q, 1e-12, None)
    noise = rows.noise.astype(np.float64)
    other = noise * odds * own / np.clip(1.0 - noise, 1e-12, None)
    return np.where(is_label, own, other)


def confidence(rows: Rows, decided: Decisions) -> np.ndarray:
    """(A,) float32 the estimated probability that each decision is right: keep, the label is
    right; fix, the new label is; remove, the label is wrong (NaN without posterior evidence)."""
    action = decided.action.astype(str)
    own = rows.label_posterior.astype(np.float64)
    fixed = posterior_of(rows, np.where(decided.new_label < 0, rows.label, decided.new_label))
    out = np.where(action == Action.REMOVE, 1.0 - own, np.where(action == Action.FIX, fixed, own))
    return out.astype(np.float32)
