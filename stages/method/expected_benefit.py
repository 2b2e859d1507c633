"""The `expected_benefit` strategy: act only where the action is likely right, remove where removing
helps in expectation, and queue the rest for a person.

Per active row with label y, from the ensemble's evidence over every model x view
(`stages.method.evidence`): pi(y), the posterior that the label is the image's true class; c*, the
most probable other class, and pi(c*); eps, the split's label-noise rate. Decisions compare values
rounded to `PRECISION_DIGITS` decimals (so they never flip on the last bits of CPU arithmetic) and
break ties by row order.

1. **fix** y -> c* where pi(c*) >= `precision` (the one precision knob): the estimated probability
   that the fix is right clears it;
2. **removal candidate** where 1 - pi(y) >= `removal_margin` x eps (default 2): the label is
   clearly more likely wrong than the split's labels are on average, so removing the row raises the
   expected accuracy of the labels kept (a removal is the only action whose benefit does not need
   the models to name the right class). By the posterior's closed form this holds when the other
   classes' odds q / (1 - q) sum to at least m (1 - eps) / (1 - m eps) (about 2.25 at m = 2,
   eps = 0.1); uninformative models put every label at 1 - pi(y) = eps, so they remove nothing;
   with `cam_veto`, a candidate whose label some model's CAMs find inside its boxes is kept;
3. at most `max_remove` of the active rows are removed, the least likely labels first; the other
   candidates are kept and queued for review;
4. **secondary labels** are never published by this strategy, only queued for review (q(c) >=
   `review`). A secondary label is right only if the image shows both classes, so its precision
   is at most min(pi(y), pi(c*)); the posterior is single-label (pi(y) + pi(c*) <= 1), and
   wherever that minimum clears `precision` so does pi(c*), which makes the row a fix. The
   ensemble's q(c) alone overstates it (q(c) >= 0.8 with pi(y) >= 0.8 means the models contradict
   the prior; such secondary labels were wrong on held-out dev images). Evidence that sees several
   objects (a multi-label model) would be needed; `consensus` publishes them on its own rule;
5. **review queue**: kept rows where a fix, a removal or a secondary label would be right with
   probability >= `review`, and removal candidates beyond the budget.

`confidence` (the ledger column) is the estimated probability that the decision taken is right:
pi(y) for a keep, pi(c*) for a fix, 1 - pi(y) for a removal.
"""

from __future__ import annotations

import numpy as np

from stages.contracts.actions import Action
from stages.contracts.formats import class_label
from stages.method.decisions import (
    Decisions,
    ExpectedBenefitConfig,
    Rows,
    StrategyOptions,
    remove_within_budget,
)
from stages.method.thresholds import Thresholds

PRECISION_DIGITS = 4
"""Posteriors are compared at this many decimals (a documented precision, issue 21)."""


def _rounded(values: np.ndarray) -> np.ndarray:
    return np.round(np.nan_to_num(values.astype(np.float64), nan=0.0), PRECISION_DIGITS)


def _best_secondary(rows: Rows) -> tuple[np.ndarray, np.ndarray]:
    """Each row's most probable class other than its label by q, and q of it."""
    other = rows.ensemble_top != rows.label[:, None]
    first = other.argmax(axis=1)
    at = np.arange(len(rows.label))
    has = other.any(axis=1)
    return np.where(has, rows.ensemble_top[at, first], -1), np.where(
        has, rows.ensemble_probs[at, first], 0.0
    )


def expected_benefit(rows: Rows, *, thresholds: Thresholds, options: StrategyOptions) -> Decisions:
    """Decisions by expected benefit (see the module docstring)."""
    knobs = options.expected_benefit
    out = Decisions.keep_all(rows)
    own, other = _rounded(rows.label_posterior), _rounded(rows.best_other_posterior)
    wrong = np.round(1.0 - own, PRECISION_DIGITS)
    noise = _rounded(rows.noise)
    known = ~np.isnan(rows.label_posterior.astype(np.float64)) & (rows.best_other >= 0)
    fix = known & (other >= knobs.precision)
    margin = np.round(knobs.removal_margin * noise, PRECISION_DIGITS)
    candidate = known & ~fix & (wrong >= margin) & (wrong > noise)
    vetoed = candidate & knobs.cam_veto & (rows.exemptions > 0)
    candidate &= ~vetoed
    for i in np.flatnonzero(fix):
        out.action[i], out.new_label[i] = Action.FIX.value, int(rows.best_other[i])
        out.reason[i] = (
            f"fix: P({class_label(rows.best_other[i])} is right) = {other[i]:.2f} >= precision "
            f"{knobs.precision}; P(label {class_label(rows.label[i])} is right) = {own[i]:.2f}"
        )
    for i in np.flatnonzero(vetoed):
        out.exempted[i] = True
        out.reason[i] = (
            f"keep: P(label {class_label(rows.label[i])} is wrong) = {wrong[i]:.2f} >= "
            f"{knobs.removal_margin} x noise {noise[i]:.2f}, but the CAMs of "
            f"{int(rows.exemptions[i])} model(s) find it in its boxes"
        )
    _remove_within_budget(rows, out, np.flatnonzero(candidate), own, wrong, noise, knobs)
    _review_queue(rows, out, own, other, wrong, knobs)
    return out


def _remove_within_budget(
    rows: Rows,
    out: Decisions,
    candidates: np.ndarray,
    own: np.ndarray,
    wrong: np.ndarray,
    noise: np.ndarray,
    knobs: ExpectedBenefitConfig,
) -> None:
    """Remove the candidates whose label is least likely right, up to the budget (ties: row
    order); the others stay, queued for review."""

    def why(i: int) -> str:
        return (
            f"P(label {class_label(rows.label[i])} is wrong) = {wrong[i]:.2f} >= "
            f"{knobs.removal_margin} x noise {noise[i]:.2f} (removing it raises the expected "
            "accuracy of the kept labels); the "
            f"ensemble's best other class {class_label(rows.best_other[i])} has P = "
            f"{rows.best_other_posterior[i]:.2f}"
        )

    order = candidates[np.lexsort((candidates, own[candidates]))]
    remove_within_budget(out, order, why, max_remove=knobs.max_remove, kept="keep, review")


def _review_queue(
    rows: Rows,
    out: Decisions,
    own: np.ndarray,
    other: np.ndarray,
    wrong: np.ndarray,
    knobs: ExpectedBenefitConfig,
) -> None:
    """The review queue (with the second class a row may also show; none is published)."""
    known = ~np.isnan(rows.label_posterior.astype(np.float64))
    kept = (out.action.astype(str) == Action.KEEP) & known
    extra, q_extra = _best_secondary(rows)
    q_extra = np.round(q_extra.astype(np.float64), 4)
    queued = (
        kept
        & ~out.review
        & (
            (other >= knobs.review)
            | (wrong >= knobs.review)
            | ((extra >= 0) & (q_extra >= knobs.review))
        )
    )
    for i in np.flatnonzero(queued):
        out.review[i] = True
        hints = []
        if other[i] >= knobs.review:
            hints.append(f"maybe {class_label(rows.best_other[i])} (P = {other[i]:.2f})")
        if wrong[i] >= knobs.review:
            hints.append(f"P(label wrong) = {wrong[i]:.2f}")
        if extra[i] >= 0 and q_extra[i] >= knobs.review:
            hints.append(f"may also show {class_label(extra[i])} (q = {q_extra[i]:.2f})")
        out.reason[i] += "; review: " + ", ".join(hints)
