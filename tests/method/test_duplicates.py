"""The duplicates policy of decide on a ledger and a duplicates table (real class names)."""

from __future__ import annotations

import pandas as pd
import pytest

from stages.contracts.errors import ConfigError, InputError
from stages.method.duplicates import DuplicateEvidence, DuplicatePolicy, apply_duplicates


def ledger(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": [f"v{k}" for k in range(n)],
            "label": pd.array([1, 1, 2, 3, 4, 5][:n], dtype="Int32"),
            "action": ["keep", "keep", "fix", "keep", "keep", "skip"][:n],
            "new_label": pd.array([1, 1, 7, 3, 4, None][:n], dtype="Int32"),
            "reason": ["keep", "keep", "fix: x", "keep", "keep", "skip: bad"][:n],
            "secondary_labels": [[], [], [], [9], [], []][:n],
        }
    )


def member(image_id: str, split: str, row: int, group: int, kind: str, label: int) -> dict:
    return {
        "image_id": image_id,
        "split": split,
        "row": row,
        "group": group,
        "kind": kind,
        "label": label,
    }


TABLE = pd.DataFrame(
    [
        member("v0", "val", 0, 0, "exact", 1),  # same label twice in val: a repeat
        member("v1", "val", 1, 0, "exact", 1),
        member("v2", "val", 2, 1, "near", 2),  # fixed to 7, copy labelled 3: a conflict
        member("v3", "val", 3, 1, "near", 3),
        member("v4", "val", 4, 2, "exact", 4),  # a leak: also in train
        member("t9", "train", 9, 2, "exact", 8),
        member("v5", "val", 5, 3, "near", 5),  # a skip row: never changed
        member("t1", "train", 1, 3, "near", 5),
    ]
)


def issues(n: int = 6) -> pd.DataFrame:
    found = [[], ["dark"], [], [], ["grayscale", "outlier"], []][:n]
    return pd.DataFrame({"image_id": [f"v{k}" for k in range(n)], "split": "val", "issues": found})


def apply(policy: DuplicatePolicy) -> pd.DataFrame:
    return apply_duplicates(ledger(), DuplicateEvidence(TABLE, issues(), policy), split="val")


def test_defaults_remove_leaks_and_send_conflicts_to_review() -> None:
    out = apply(DuplicatePolicy(group="ab", leak_from=("train",)))
    assert list(out["action"]) == ["keep", "keep", "fix", "keep", "remove", "skip"]
    assert list(out["duplicate_group"]) == [0, 0, 1, 1, 2, 3]
    assert out["new_label"].isna().tolist() == [False] * 4 + [True, True]
    assert "duplicate leak: exact copy of train image t9 labelled 8 (" in out["reason"][4]
    assert "review: duplicate group 1 (v2, v3) with conflicting labels 3 (" in out["reason"][2]
    assert out["reason"][2].startswith("fix: x; ")
    assert out["reason"][0] == "keep; duplicate group 0 (v0, v1), same label"
    assert out["reason"][5] == "skip: bad"
    assert list(out["issues"]) == [[], ["dark"], [], [], ["grayscale", "outlier"], []]


@pytest.mark.parametrize(
    "conflict, actions",
    [
        ("keep_one", ["fix", "remove"]),
        ("remove", ["remove", "remove"]),
        ("keep", ["fix", "keep"]),
    ],
)
def test_conflict_outcomes(conflict: str, actions: list[str]) -> None:
    out = apply(DuplicatePolicy(group="ab", conflict=conflict))  # type: ignore[arg-type]
    assert list(out["action"][2:4]) == actions
    removed = out["action"] == "remove"
    assert out.loc[removed, "secondary_labels"].map(len).eq(0).all()
    assert out.loc[removed, "new_label"].isna().all()


def test_no_leak_without_leak_from_and_keep_one_for_repeats() -> None:
    out = apply(DuplicatePolicy(group="ab", repeat="keep_one"))
    assert list(out["action"]) == ["keep", "remove", "fix", "keep", "keep", "skip"]
    assert out["reason"][1].startswith("remove: duplicate group 0 (v0, v1), same label; one copy")


def test_kinds_limit_what_is_acted_on() -> None:
    out = apply(DuplicatePolicy(group="ab", leak_from=("train",), kinds=("near",)))
    assert list(out["action"]) == ["keep", "keep", "fix", "keep", "keep", "skip"]
    assert out["duplicate_group"].isna().tolist() == [True, True, False, False, True, False]


def test_no_evidence_adds_empty_columns() -> None:
    out = apply_duplicates(ledger(), None, split="val")
    assert out["duplicate_group"].isna().all() and out["issues"].map(len).eq(0).all()
    pd.testing.assert_frame_equal(out[ledger().columns], ledger())


def test_a_stale_table_is_refused() -> None:
    stale = TABLE.assign(row=TABLE["row"] + 1)
    with pytest.raises(InputError, match="re-run `dvc repro duplicates`"):
        apply_duplicates(
            ledger(), DuplicateEvidence(stale, issues(), DuplicatePolicy()), split="val"
        )
    with pytest.raises(InputError, match="issues table holds 5 rows"):
        apply_duplicates(
            ledger(), DuplicateEvidence(TABLE, issues(5), DuplicatePolicy()), split="val"
        )


def test_policy_from_params(params: dict) -> None:
    policy = DuplicatePolicy.from_params(params, "val")
    assert policy.group == "val" and policy.leak == "remove" and policy.conflict == "review"
    assert DuplicatePolicy.from_params(params, "train_demo") == DuplicatePolicy()
    params["decide"]["val"]["duplicates"]["group"] = "nope"
    with pytest.raises(ConfigError, match="not a key of `duplicates.groups`"):
        DuplicatePolicy.from_params(params, "val")
    params["decide"]["val"]["duplicates"] = {"leak": "delete"}
    with pytest.raises(ConfigError, match="decide.val.duplicates.leak"):
        DuplicatePolicy.from_params(params, "val")
