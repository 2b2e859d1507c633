"""The duplicates policy of decide (params.yaml `decide.<split>.duplicates`): what happens to a
split's images that the duplicates stage put in a group (`stages.dedup.groups`).

For each duplicate group holding images of this split (kinds in `kinds`, exact and near by
default; `similar` pairs are only ever shown for review), the first rule that applies:

1. **leak**: the group also holds an image of a split in `leak_from` (an evaluation image that is
   in the training data) -> `leak` (default remove);
2. **conflict**: two or more of this split's images with different current labels -> `conflict`
   (default review: the decision stays, the reason says so and the review page lists the group);
3. **repeat**: two or more of this split's images with the same label -> `repeat` (default keep).

Outcomes are a dict of functions (`OUTCOMES`): remove, keep_one (the first image in manifest order
stays, the others are removed), review and keep. Only kept or fixed rows change; every group
member gets `duplicate_group` and a reason that names what it duplicates. Human overrides, applied
after, still win. `issues` (image-quality findings of the group's issues table) are copied as
evidence: they change no decision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from stages.contracts import formats
from stages.contracts.actions import KEPT, Action
from stages.contracts.config import from_section
from stages.contracts.errors import ConfigError, InputError
from stages.contracts.splits import Params

Outcome = Literal["remove", "keep_one", "review", "keep"]


@dataclass(frozen=True)
class DuplicatePolicy:
    """`decide.<split>.duplicates`.

    Attributes:
        group: the `duplicates.groups` entry whose table decide reads (null: none).
        leak_from: splits whose copies make this split's images leaks (e.g. [train]).
        leak, conflict, repeat: the outcome of each rule (see the module docstring).
        kinds: the kinds of group membership acted on (exact, near).
    """

    group: str | None = None
    leak_from: tuple[str, ...] = ()
    leak: Outcome = "remove"
    conflict: Outcome = "review"
    repeat: Outcome = "keep"
    kinds: tuple[str, ...] = ("exact", "near")

    @classmethod
    def from_params(cls, params: Params, split: str) -> DuplicatePolicy:
        """From `decide.<split>.duplicates` (absent: no duplicates policy)."""
        raw = ((params.get("decide") or {}).get(split) or {}).get("duplicates")
        policy = from_section(cls, raw, where=f"decide.{split}.duplicates")
        groups = ((params.get("duplicates") or {}).get("groups")) or {}
        if policy.group is not None and policy.group not in groups:
            raise ConfigError(
                f"params.yaml `decide.{split}.duplicates.group` is {policy.group!r}, not a key "
                f"of `duplicates.groups` ({sorted(groups)})"
            )
        bad = [k for k in policy.kinds if k not in ("exact", "near", "similar")]
        if bad:
            raise ConfigError(
                f"params.yaml `decide.{split}.duplicates.kinds` has {bad}; use exact, near, similar"
            )
        return policy


@dataclass(frozen=True)
class DuplicateEvidence:
    """What decide reads for one split: the group's members table, its issues table, the policy."""

    table: pd.DataFrame
    issues: pd.DataFrame
    policy: DuplicatePolicy


@dataclass
class _Edit:
    """The ledger columns the outcomes change (numpy arrays over ledger rows)."""

    action: np.ndarray
    new_label: np.ndarray
    reason: np.ndarray
    secondary: list[list[int]]


def _remove(edit: _Edit, rows: np.ndarray, why: str) -> None:
    for r in rows:
        edit.action[r], edit.new_label[r], edit.secondary[r] = Action.REMOVE.value, np.nan, []
        edit.reason[r] = f"remove: {why}"


def _keep_one(edit: _Edit, rows: np.ndarray, why: str) -> None:
    _note(edit, rows[:1], f"{why}; this one kept")
    _remove(edit, rows[1:], f"{why}; one copy kept")


def _note(edit: _Edit, rows: np.ndarray, why: str) -> None:
    for r in rows:
        edit.reason[r] = f"{edit.reason[r]}; {why}"


OUTCOMES: dict[str, Callable[[_Edit, np.ndarray, str], None]] = {
    "remove": _remove,
    "keep_one": _keep_one,
    "review": lambda edit, rows, why: _note(edit, rows, f"review: {why}"),
    "keep": _note,
}


def _names(labels: list[int]) -> str:
    return ", ".join(formats.class_label(c) for c in labels)


def _positions(ledger: pd.DataFrame, mine: pd.DataFrame) -> np.ndarray:
    """Ledger positions of this split's table rows, checked by image_id."""
    rows = mine["row"].to_numpy(dtype=np.int64)
    ids = ledger["image_id"].to_numpy()
    if len(rows) and (rows.max() >= len(ids) or (ids[rows] != mine["image_id"].to_numpy()).any()):
        raise InputError(
            "the duplicates table does not match this split's manifest rows; re-run "
            "`dvc repro duplicates` (it is older than the manifest)"
        )
    return rows


def _rule(
    policy: DuplicatePolicy, members: pd.DataFrame, own: pd.DataFrame, labels: list[int]
) -> tuple[str, str] | None:
    """(outcome, why) of the first rule that applies to a group, or None."""
    leaks = members[members["split"].isin(policy.leak_from)]
    first = own.iloc[0]
    if len(leaks):
        other = leaks.iloc[0]
        return policy.leak, (
            f"duplicate leak: {first['kind']} copy of {other['split']} image "
            f"{other['image_id']} labelled {formats.class_label(int(other['label']))} "
            f"(group {int(first['group'])})"
            if pd.notna(other["label"])
            else f"duplicate leak: copy of {other['split']} image {other['image_id']}"
        )
    if len(own) < 2:
        return None
    what = f"duplicate group {int(first['group'])} ({', '.join(own['image_id'].head(5))})"
    if len(labels) > 1:
        return policy.conflict, f"{what} with conflicting labels {_names(labels)}"
    return policy.repeat, f"{what}, same label"


def apply_duplicates(
    ledger: pd.DataFrame, evidence: DuplicateEvidence | None, *, split: str
) -> pd.DataFrame:
    """The ledger with `duplicate_group` and `issues` filled and the policy applied (module
    docstring); without evidence both columns are added empty."""
    ledger = ledger.copy()
    ledger["duplicate_group"] = pd.array([pd.NA] * len(ledger), dtype="Int32")
    ledger["issues"] = [[] for _ in range(len(ledger))]
    if evidence is None:
        return ledger
    _copy_issues(ledger, evidence.issues, split)
    policy, table = evidence.policy, evidence.table
    table = table[table["kind"].isin(policy.kinds)]
    mine = table[table["split"] == split]
    rows = _positions(ledger, mine)
    groups = ledger["duplicate_group"].to_numpy(dtype=object)
    groups[rows] = mine["group"].to_numpy()
    ledger["duplicate_group"] = pd.array(groups, dtype="Int32")
    edit = _Edit(
        ledger["action"].to_numpy(dtype=object).copy(),
        ledger["new_label"].to_numpy(dtype=np.float64, na_value=np.nan).copy(),
        ledger["reason"].to_numpy(dtype=object).copy(),
        [list(s) for s in ledger["secondary_labels"]],
    )
    active = np.isin(edit.action, [str(a) for a in KEPT])
    for group, own in mine.groupby("group", sort=True):
        own = own.sort_values("row")
        positions = own["row"].to_numpy(dtype=np.int64)
        live = positions[active[positions]]
        if not len(live):
            continue
        labels = sorted({int(edit.new_label[p]) for p in live})
        found = _rule(policy, table[table["group"] == group], own, labels)
        if found is not None:
            OUTCOMES[found[0]](edit, live, found[1])
    ledger["action"], ledger["reason"] = edit.action, edit.reason
    ledger["new_label"] = formats.nullable_ints(edit.new_label)
    ledger["secondary_labels"] = edit.secondary
    return ledger


def _copy_issues(ledger: pd.DataFrame, issues: pd.DataFrame, split: str) -> None:
    mine = issues[issues["split"] == split]
    if len(mine) != len(ledger) or not np.array_equal(
        mine["image_id"].to_numpy(), ledger["image_id"].to_numpy()
    ):
        raise InputError(
            f"the duplicates issues table holds {len(mine)} rows of {split!r}, the ledger "
            f"{len(ledger)}; re-run `dvc repro duplicates` (it is older than the manifest)"
        )
    ledger["issues"] = [list(v) for v in mine["issues"]]
