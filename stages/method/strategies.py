"""Decision strategies: the evidence of every active row -> keep / fix / remove (+ secondary
labels).

`decide.<split>.strategy` picks one from `STRATEGIES`:

- `paper`: the rules of Kertész (2021), exactly (see `paper`).
- `consensus`: multi-label aware, from the ensemble's evidence, the CL votes, the top-5 consensus
  and the CAM veto, with thresholds on the ensemble's probabilities (see `consensus`);
- `expected_benefit` (default): acts only where the estimated probability that the action is right
  clears one precision knob, removes where removing raises the expected accuracy of the kept
  labels, and queues the rest for review (`stages.method.expected_benefit`).

A strategy sees only the pipeline's evidence, never reference labels.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from stages.contracts.actions import Action
from stages.contracts.formats import class_label
from stages.method.decisions import (
    ConsensusConfig,
    Decisions,
    Rows,
    Strategy,
    StrategyOptions,
    describe_candidates,
    predicted,
    remove_within_budget,
)
from stages.method.expected_benefit import expected_benefit
from stages.method.thresholds import Thresholds


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
    flagged = (
        f"{len(candidates)} of {t.n_models} models flagged it, candidates "
        f"{describe_candidates(counts)}"
    )
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
        why.append(f"{len(counts)} unique candidates {describe_candidates(counts)} (h2={t.h2})")
    if misses >= t.h3 and exemptions == 0:
        why.append(f"{missed}, no CAM exemption; {predicted(model_top1)}")
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


def paper(rows: Rows, *, thresholds: Thresholds, options: StrategyOptions) -> Decisions:
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


def consensus(rows: Rows, *, thresholds: Thresholds, options: StrategyOptions) -> Decisions:
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
    c = options.consensus
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
        f", candidates {describe_candidates(Counter(int(k) for k in rows.candidates[i]))}"
        if n
        else ""
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

    def why(i: int) -> str:
        return (
            f"questioned ({_why(rows, i, p_label, t, c)}), no class clearly right, label "
            f"{class_label(rows.label[i])} {p_label[i]:.2f} (< clear {c.clear}); "
            f"{predicted(rows.model_top1[i])}"
        )

    order = candidates[np.lexsort((candidates, margin[candidates]))]
    remove_within_budget(out, order, why, max_remove=c.max_remove, kept="keep")


STRATEGIES: dict[str, Strategy] = {
    "paper": paper,
    "consensus": consensus,
    "expected_benefit": expected_benefit,
}
"""`decide.<split>.strategy` -> the function that decides the active rows."""
