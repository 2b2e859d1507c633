"""How strong a split's evidence is and what the decisions are worth, without any reference: the
`evidence` block of `metrics/<split>.json` and of the dataset card.

From the votes (the ensemble's agreement with the labels, the noise rate eps, the posterior
pi(label) of every active row) and the ledger (each decision's `confidence`, the estimated
probability that it is right): the expected accuracy of the labels before and after, and per action
type (fix, remove, secondary label, review) how many rows it took, their mean estimated precision,
the best estimate any row offered, and, where the `expected_benefit` strategy took none, the gate
that held it back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from stages.contracts.actions import KEPT, Action
from stages.contracts.config import from_section
from stages.contracts.params import section
from stages.contracts.splits import Params
from stages.method.decisions import ExpectedBenefitConfig, StrategyOptions
from stages.method.thresholds import SplitDecideConfig

DIGITS = 4


@dataclass(frozen=True)
class StrengthConfig:
    """What the `evidence` block reads of the decide params: the split's strategy
    (`decide.<split>.strategy`) and the expected-benefit knobs that name its gates."""

    strategy: str = "expected_benefit"
    knobs: ExpectedBenefitConfig = field(default_factory=ExpectedBenefitConfig)

    @classmethod
    def from_params(cls, params: Params, split: str) -> StrengthConfig:
        """Raises ConfigError for a bad `decide.<split>` or `decide.expected_benefit`."""
        own = from_section(
            SplitDecideConfig,
            section(params, "decide", split),
            where=f"decide.{split}",
            ignore=("duplicates",),
        )
        return cls(own.strategy, StrategyOptions.from_params(params).expected_benefit)


def _mean(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return round(float(values.mean()), DIGITS) if len(values) else None


def _max(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return round(float(values.max()), DIGITS) if len(values) else None


def _floats(frame: pd.DataFrame, column: str) -> np.ndarray:
    values: np.ndarray = frame[column].to_numpy(dtype=np.float64, na_value=np.nan)
    return values


def evidence_strength(
    ledger: pd.DataFrame, votes: pd.DataFrame, *, config: StrengthConfig = StrengthConfig()
) -> dict[str, Any]:
    """The `evidence` block (see the module docstring).

    Args:
        ledger: the split's ledger (columns of LEDGER_FULL_SCHEMA), votes order.
        votes: the split's votes table (its evidence columns).
        config: the strategy that decided and its knobs (gates only for `expected_benefit`).
    """
    active = votes["label"].notna().to_numpy()
    label = votes["label"].to_numpy(dtype=np.float64, na_value=np.nan)
    top1 = np.array([v[0] if v is not None and len(v) else -1 for v in votes["ensemble_top"]])
    own = _floats(votes, "label_posterior")
    right = _floats(ledger, "confidence")
    action = ledger["action"].astype(str).to_numpy()
    kept = np.isin(action, [str(a) for a in KEPT]) & active
    noise = _floats(votes, "noise_rate")[active]
    block: dict[str, Any] = {
        "strategy": config.strategy,
        "active_rows": int(active.sum()),
        "noise": _max(noise) if len(noise) else None,
        "ensemble_agrees_with_label": _mean((top1 == label)[active].astype(np.float64)),
        "expected_label_accuracy_before": _mean(own[active]),
        "expected_label_accuracy_after": _mean(right[kept]),
        "actions": _actions(ledger, votes, action, right, active),
    }
    if config.strategy == "expected_benefit":
        _add_gates(block["actions"], config.knobs, int(active.sum()))
    return block


def _actions(
    ledger: pd.DataFrame,
    votes: pd.DataFrame,
    action: np.ndarray,
    right: np.ndarray,
    active: np.ndarray,
) -> dict[str, dict[str, Any]]:
    """Per action type: rows taken, their mean estimated precision, the best estimate offered."""
    decided = active & ~ledger["override"].to_numpy(bool)
    own = _floats(votes, "label_posterior")
    other = _floats(votes, "best_other_posterior")
    both = np.fmin(own, other)  # a secondary label's estimated precision (expected_benefit)
    secondary = ledger["secondary_labels"].map(len).to_numpy() > 0
    out = {}
    for name, taken, offered in (
        ("fix", action == Action.FIX, other),
        ("remove", action == Action.REMOVE, 1.0 - own),
        ("secondary", secondary, both),
    ):
        rows = taken & decided
        out[name] = {
            "count": int(rows.sum()),
            "estimated_precision": _mean((right if name != "secondary" else both)[rows]),
            "best_available": _max(offered[decided]),
        }
    out["review"] = {"count": int((ledger["review"].to_numpy(bool) & decided).sum())}
    return out


def _add_gates(actions: dict[str, dict[str, Any]], knobs: ExpectedBenefitConfig, n: int) -> None:
    """Why the expected-benefit strategy took no row of an action type (None where it took some)."""
    fix, remove, secondary = actions["fix"], actions["remove"], actions["secondary"]
    fix["gate"] = (
        None
        if fix["count"]
        else f"no row's best other class reaches precision {knobs.precision} "
        f"(the best is {fix['best_available']})"
    )
    budget = math.floor(knobs.max_remove * n + 1e-9)
    remove["budget"] = budget
    remove["gate"] = (
        None
        if remove["count"]
        else "max_remove gives a budget of 0 rows"
        if budget == 0
        else f"no label is at least {knobs.removal_margin} x as likely wrong as the split's "
        f"average label (the best P(wrong) is {remove['best_available']}), or the CAMs vetoed "
        "every one"
    )
    secondary["gate"] = (
        None
        if secondary["count"]
        else "expected_benefit publishes none: a secondary label is right only if the image "
        "shows both classes, and a single-label posterior gives the two at most 1 together "
        f"(the best min(P(label), P(other)) is {secondary['best_available']}); candidates are "
        "reviewed"
    )
