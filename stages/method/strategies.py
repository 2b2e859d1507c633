"""Decision strategies: the evidence of every active row -> keep / fix / remove (+ secondary
labels).

`decide.<split>.strategy` picks one from `STRATEGIES`:

- `paper`: the rules of Kertész (2021), exactly (see `paper`).
- `consensus` (default): multi-label aware, from the ensemble's evidence (mean of the split's
  models' probabilities), the CL votes, the top-5 consensus and the CAM veto (see `consensus`).

A strategy sees only the pipeline's evidence, never reference labels.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from stages.contracts.actions import Action
from stages.contracts.config import fraction
from stages.contracts.formats import class_label
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
        label_prob: (A,) float the ensemble's mean probability of the label.
        model_top1: (A,) object, each an int array: every model's top-1 class.
    """

    label: np.ndarray
    candidates: np.ndarray
    misses: np.ndarray
    exemptions: np.ndarray
    ensemble_top: np.ndarray
    ensemble_probs: np.ndarray
    label_prob: np.ndarray
    model_top1: np.ndarray


@dataclass(frozen=True, eq=False)
class Decisions:
    """What a strategy decided for the A active rows: action (keep/fix/remove), new_label (-1 for
    remove), exempted (saved from removal by the CAMs), reason, secondary labels."""

    action: np.ndarray
    new_label: np.ndarray
    exempted: np.ndarray
    reason: np.ndarray
    secondary: list[list[int]]

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
        )


def _describe(counts: Counter[int]) -> str:
    """`{12 (name): 3, 7 (name): 1}`: candidates by frequency, then class index."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return "{" + ", ".join(f"{class_label(c)}: {n}" for c, n in items) + "}"


def _predicted(model_top1: Sequence[int]) -> str:
    """`models predicted 509 (confectionery) x3, 860 (tobacco shop) x1` (most frequent first)."""
    counts = Counter(int(c) for c in model_top1)
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return "models predicted " + ", ".join(f"{class_label(c)} x{n}" for c, n in items)


def _paper_verdict(
    label: int,
    candidates: Sequence[int],
    misses: int,
    exemptions: int,
    model_top1: Sequence[int],
    t: Thresholds,
) -> tuple[Action, int, bool, str]:
    """One active row under the paper's rules -> (action, new_label or -1, exempted, reason)."""
    counts = Counter(int(c) for c in candidates)
    flagged = f"{len(candidates)} of {t.n_models} models flagged it, candidates {_describe(counts)}"
    if len(candidates) >= t.h1 and len(counts) < 3:
        best = min(counts, key=lambda c: (-counts[c], c))
        if best != label:
            return Action.FIX, best, False, f"fix: {flagged} (h1={t.h1}) -> {class_label(best)}"
        return (
            Action.KEEP,
            label,
            False,
            f"keep: {flagged} (h1={t.h1}); the winner is the current label",
        )
    missed = f"top-5 missed by {misses} of {t.n_models} models (h3={t.h3})"
    why = []
    if len(counts) >= t.h2:
        why.append(f"{len(counts)} unique candidates {_describe(counts)} (h2={t.h2})")
    if misses >= t.h3 and exemptions == 0:
        why.append(f"{missed}, no CAM exemption; {_predicted(model_top1)}")
    if why:
        return Action.REMOVE, -1, False, "remove: " + "; ".join(why)
    if misses >= t.h3:
        return (
            Action.KEEP,
            label,
            True,
            f"keep: {missed}, exempted by the CAMs of {exemptions} model(s)",
        )
    if counts:
        return Action.KEEP, label, False, f"keep: {flagged}; below h1={t.h1} and < h2={t.h2} unique"
    return Action.KEEP, label, False, "keep"


def paper(rows: Rows, *, thresholds: Thresholds, consensus: ConsensusConfig) -> Decisions:
    """Kertész (2021), per row with candidates L' and top-5 misses C_s: **fix** when |L'| >= h1 and
    |unique(L')| < 3 (to the most frequent candidate, ties to the smaller index); **remove** when
    |unique(L')| >= h2, or when C_s >= h3 and no model's CAMs exempt it; a fix is never removed.
    Single-label: no secondary labels."""
    out = Decisions.keep_all(rows)
    busy = np.flatnonzero(
        (np.fromiter(map(len, rows.candidates), np.int64, len(rows.label)) > 0)
        | (rows.misses >= thresholds.h3)
    )
    for i in busy:
        action, out.new_label[i], out.exempted[i], out.reason[i] = _paper_verdict(
            int(rows.label[i]),
            rows.candidates[i],
            int(rows.misses[i]),
            int(rows.exemptions[i]),
            rows.model_top1[i],
            thresholds,
        )
        out.action[i] = action.value
    return out


def _best_other(rows: Rows) -> tuple[np.ndarray, np.ndarray]:
    """The ensemble's most probable class other than the label, and its mean probability."""
    other = rows.ensemble_top != rows.label[:, None]
    first = other.argmax(axis=1)
    at = np.arange(len(rows.label))
    return rows.ensemble_top[at, first], np.where(
        other.any(axis=1), rows.ensemble_probs[at, first], 0.0
    )


def consensus(rows: Rows, *, thresholds: Thresholds, consensus: ConsensusConfig) -> Decisions:
    """Multi-label aware decisions from the ensemble's evidence, per row with label y, the
    ensemble's mean probability p, and c its most probable other class:

    1. **fix** to c when the ensemble clearly names c (p[c] >= clear) and does not support y
       (p[y] < support): the label is wrong and one class is clearly right;
    2. **secondary label**: every class other than y with p >= secondary while p[y] >= secondary
       too: the image shows both; the label stays, never removed;
    3. **removal candidate** when y is not clearly right (p[y] < clear) and is questioned, by a
       majority of the CL votes (|L'| >= h1) or by the top-5 consensus (C_s >= h3) while the
       ensemble does not support it; the CAM veto keeps a candidate whose label the CAMs of a
       model find in the boxes (exempted);
    4. at most `max_remove` of the active rows are removed, the lowest ensemble margins p[y] - p[c]
       first; the other candidates stay, with the reason saying so.
    """
    c = consensus
    out = Decisions.keep_all(rows)
    other, other_prob = _best_other(rows)
    p_label = np.nan_to_num(rows.label_prob.astype(np.float64), nan=0.0)
    votes = np.fromiter(map(len, rows.candidates), np.int64, len(rows.label))
    fix = (other_prob >= c.clear) & (p_label < c.support)
    shared = ~fix & (p_label >= c.secondary) & (other_prob >= c.secondary)
    questioned = (votes >= thresholds.h1) | ((rows.misses >= thresholds.h3) & (p_label < c.support))
    candidate = ~fix & ~shared & questioned & (p_label < c.clear)
    vetoed = candidate & (rows.exemptions > 0)
    candidate &= ~vetoed
    for i in np.flatnonzero(fix):
        out.action[i], out.new_label[i] = Action.FIX.value, int(other[i])
        out.reason[i] = (
            f"fix: to {class_label(other[i])}, which the ensemble gives {other_prob[i]:.2f} "
            f"(>= clear {c.clear}), while the label {class_label(rows.label[i])} gets "
            f"{p_label[i]:.2f} (< support {c.support}); {_votes(rows, i, thresholds)}"
        )
    for i in np.flatnonzero(shared):
        top, probs = rows.ensemble_top[i], rows.ensemble_probs[i]
        out.secondary[i] = [
            int(k) for k, p in zip(top, probs) if k != rows.label[i] and p >= c.secondary
        ]
        shown = ", ".join(
            f"{class_label(k)} {p:.2f}"
            for k, p in zip(top, probs)
            if k != rows.label[i] and p >= c.secondary
        )
        out.reason[i] = (
            f"keep + secondary: the image shows both: the label "
            f"{class_label(rows.label[i])} {p_label[i]:.2f} and {shown} "
            f"(each >= secondary {c.secondary})"
        )
    for i in np.flatnonzero(vetoed):
        out.exempted[i] = True
        out.reason[i] = (
            f"keep: questioned ({_why(rows, i, p_label, thresholds, c)}) but "
            f"exempted by the CAMs of {int(rows.exemptions[i])} model(s)"
        )
    _remove_within_budget(
        rows, out, np.flatnonzero(candidate), p_label - other_prob, p_label, thresholds, c
    )
    return out


def _votes(rows: Rows, i: int | np.intp, t: Thresholds) -> str:
    n = len(rows.candidates[i])
    return f"CL: {n} of {t.n_models} models flag the label" + (
        f", candidates {_describe(Counter(int(k) for k in rows.candidates[i]))}" if n else ""
    )


def _why(
    rows: Rows, i: int | np.intp, p_label: np.ndarray, t: Thresholds, c: ConsensusConfig
) -> str:
    parts = []
    if len(rows.candidates[i]) >= t.h1:
        parts.append(f"{_votes(rows, i, t)} (h1={t.h1})")
    if rows.misses[i] >= t.h3 and p_label[i] < c.support:
        parts.append(f"top-5 missed by {int(rows.misses[i])} of {t.n_models} models (h3={t.h3})")
    return "; ".join(parts)


def _remove_within_budget(
    rows: Rows,
    out: Decisions,
    candidates: np.ndarray,
    margin: np.ndarray,
    p_label: np.ndarray,
    t: Thresholds,
    c: ConsensusConfig,
) -> None:
    """Remove the weakest candidates (lowest margin, then row order) up to the budget."""
    budget = math.floor(c.max_remove * len(rows.label) + 1e-9)
    order = candidates[np.lexsort((candidates, margin[candidates]))]
    for rank, i in enumerate(order):
        why = (
            f"questioned ({_why(rows, i, p_label, t, c)}), no class clearly right, label "
            f"{class_label(rows.label[i])} {p_label[i]:.2f} (< clear {c.clear}); "
            f"{_predicted(rows.model_top1[i])}"
        )
        if rank < budget:
            out.action[i], out.new_label[i] = Action.REMOVE.value, -1
            out.reason[i] = f"remove: {why}"
        else:
            out.reason[i] = (
                f"keep: {why}; beyond the removal budget (max_remove {c.max_remove}: "
                f"{budget} of {len(rows.label)} active rows)"
            )


class Strategy(Protocol):
    """A decision strategy: the evidence of the active rows -> their decisions. It reads only the
    pipeline's evidence, never reference labels."""

    def __call__(
        self, rows: Rows, *, thresholds: Thresholds, consensus: ConsensusConfig
    ) -> Decisions:
        """Decide every active row from its evidence."""
        ...


STRATEGIES: dict[str, Strategy] = {"paper": paper, "consensus": consensus}
"""`decide.<split>.strategy` -> the function that decides the active rows."""
