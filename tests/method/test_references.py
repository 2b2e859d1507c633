"""Human reference labels: both file shapes, broken and mismatched files, agreement figures."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from stages.contracts.errors import InputError, MissingInputError
from stages.method.references import REAL_ROWS, agreement, align, load_reference

DEMO_REFERENCE = Path("data/demo/references/real-demo500.json")


def test_the_shipped_demo_reference_is_a_mapping_of_500_images() -> None:
    reference = load_reference(DEMO_REFERENCE)
    assert len(reference) == 500
    assert reference["ILSVRC2012_val_00000580"] == frozenset({480, 582, 760, 886})
    assert sum(1 for v in reference.values() if not v) == 21
    assert sum(1 for v in reference.values() if len(v) > 1) == 50


def test_real_json_list_maps_entry_i_to_val_image_i_plus_one(tmp_path: Path) -> None:
    entries = [[i % 1000] for i in range(REAL_ROWS)]
    entries[1] = []
    (tmp_path / "real.json").write_text(json.dumps(entries))
    reference = load_reference(tmp_path / "real.json")
    assert reference["ILSVRC2012_val_00000001"] == frozenset({0})
    assert reference["ILSVRC2012_val_00000002"] == frozenset()
    assert reference["ILSVRC2012_val_00050000"] == frozenset({(REAL_ROWS - 1) % 1000})


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", r"bad.json: not a JSON file"),
        (json.dumps([[1], [2]]), r"bad.json: a ReaL real.json list has 50000 entries .* has 2"),
        (
            json.dumps({"a": [1], "b": [1000]}),
            r"bad.json: entry 'b' must be a list of class "
            r"indices 0..999, got \[1000\]",
        ),
        (json.dumps({"a": "1"}), r"entry 'a' must be a list of class indices"),
        (json.dumps({"a": [True]}), r"entry 'a' must be a list of class indices"),
        (json.dumps("x"), r"expected a JSON list \(ReaL real.json\) or a mapping"),
    ],
)
def test_broken_reference_files_name_the_file_and_the_problem(
    tmp_path: Path, content: str, match: str
) -> None:
    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(InputError, match=match):
        load_reference(tmp_path / "bad.json")


def test_missing_file_and_a_reference_of_another_split(tmp_path: Path) -> None:
    with pytest.raises(MissingInputError, match=r"reference labels .*nope.json not found"):
        load_reference(tmp_path / "nope.json")
    with pytest.raises(InputError, match=r"v2.json: none of the split's 2 image ids .*another"):
        align(
            {"ILSVRC2012_val_00000001": frozenset({1})},
            pd.Series(["0/abc", "1/def"]),
            source="v2.json",
        )


def test_agreement_counts_fix_outcomes_removals_and_secondary_labels() -> None:
    ledger = pd.DataFrame(
        {
            "label": [1, 2, 3, 4, 5, 6, None, 8],
            "action": ["keep", "fix", "fix", "fix", "remove", "remove", "remove", "keep"],
            "new_label": [1, 12, 13, 14, None, None, None, 8],
            "secondary_labels": [[11], [], [], [], [], [], [], [18]],
        }
    )
    reference = [
        frozenset({1, 11}),
        frozenset({12}),
        frozenset({3}),
        frozenset({4, 14}),
        frozenset(),
        frozenset({6}),
        frozenset({7}),
        None,
    ]
    block = agreement(ledger, reference)
    # judged before: rows 0-3 and 5 (row 4 accepts nothing, row 6 left earlier, row 7 no entry)
    assert (block["agreement_before"], block["judged_before"]) == (80.0, 5)
    assert (block["agreement_after"], block["judged_after"]) == (75.0, 4)
    assert block["fixes"] == {"corrected": 1, "neutral": 1, "broken": 1, "total": 3}
    assert (block["removal_precision"], block["removals"]) == (50.0, 2)
    assert (block["recall_of_bad"], block["bad_rows"]) == (100.0, 2)
    assert (block["secondary_precision"], block["secondary_labels"]) == (100.0, 1)
    assert block["rows"] == 6 and block["removed_fraction"] == 33.3333


def test_a_kept_label_merged_into_its_partner_agrees_when_people_accepted_the_label() -> None:
    """Laptop merged into notebook (the paper's merge table): people said laptop, the merged
    class contains it; a merged label people did not accept before stays wrong."""
    ledger = pd.DataFrame(
        {
            "label": [620, 620, 3],
            "action": ["keep", "keep", "keep"],
            "new_label": [681, 681, 3],
            "secondary_labels": [[], [], []],
            "merged": [True, True, False],
        }
    )
    block = agreement(ledger, [frozenset({620}), frozenset({5}), frozenset({3})])
    assert block["agreement_before"] == block["agreement_after"] == round(200 / 3, 4)


def _agreement_row_by_row(ledger: pd.DataFrame, entries: list) -> dict[str, int]:
    """The block's counts computed one row at a time, as the definition reads."""
    t = dict.fromkeys(("before", "agree_before", "after", "agree_after", "active", "bad"), 0)
    t.update(dict.fromkeys(("corrected", "broken", "fixes", "removed", "removed_bad"), 0))
    t.update(secondary=0, secondary_ok=0, multi=0)
    for row, ok in enumerate(entries):
        label, action, new = ledger.loc[row, ["label", "action", "new_label"]]
        if ok is None or pd.isna(label) or action == "skip":
            continue
        right = int(label) in ok
        t["active"] += 1
        t["multi"] += len(ok) > 1
        t["bad"] += not right
        t["before"] += bool(ok)
        t["agree_before"] += bool(ok) and right
        kept = action in ("keep", "fix") and bool(ok)
        t["after"] += kept
        t["agree_after"] += kept and int(new) in ok
        if action == "fix":
            t["fixes"] += 1
            t["corrected"] += not right and int(new) in ok
            t["broken"] += right and int(new) not in ok
        if action == "remove":
            t["removed"] += 1
            t["removed_bad"] += not right
        for extra in ledger.loc[row, "secondary_labels"]:
            t["secondary"] += 1
            t["secondary_ok"] += int(extra) in ok
    return t


def test_vectorised_agreement_equals_the_row_by_row_definition_on_random_rows() -> None:
    import numpy as np

    from stages.method.references import Accepted, multi_label_top1

    rng = np.random.default_rng(0)
    n = 3000
    action = rng.choice(["keep", "fix", "remove", "skip"], size=n, p=[0.6, 0.2, 0.15, 0.05])
    label = rng.integers(0, 6, n).astype(object)
    label[rng.random(n) < 0.05] = None
    new = np.where(np.isin(action, ["keep", "fix"]), rng.integers(0, 6, n), None)
    new = [int(v) if v is not None and label[i] is not None else None for i, v in enumerate(new)]
    secondary = [list(rng.integers(0, 6, rng.integers(0, 3))) for _ in range(n)]
    ledger = pd.DataFrame(
        {
            "label": pd.array(label, dtype="Int64"),
            "action": action,
            "new_label": pd.array(new, dtype="Int64"),
            "secondary_labels": secondary,
        }
    )
    entries = [
        None if rng.random() < 0.1 else frozenset(rng.integers(0, 6, rng.integers(0, 4)).tolist())
        for _ in range(n)
    ]
    t = _agreement_row_by_row(ledger, entries)
    block = agreement(ledger, entries)
    assert block == agreement(ledger, Accepted(entries))
    assert (block["judged_before"], block["judged_after"], block["rows"]) == (
        t["before"],
        t["after"],
        t["active"],
    )
    assert block["agreement_before"] == round(100 * t["agree_before"] / t["before"], 4)
    assert block["agreement_after"] == round(100 * t["agree_after"] / t["after"], 4)
    assert block["fixes"] == {
        "corrected": t["corrected"],
        "neutral": t["fixes"] - t["corrected"] - t["broken"],
        "broken": t["broken"],
        "total": t["fixes"],
    }
    assert (block["removals"], block["bad_rows"]) == (t["removed"], t["bad"])
    assert block["removal_precision"] == round(100 * t["removed_bad"] / t["removed"], 4)
    assert block["recall_of_bad"] == round(100 * (t["removed_bad"] + t["corrected"]) / t["bad"], 4)
    assert block["secondary_labels"] == t["secondary"]
    assert block["secondary_precision"] == round(100 * t["secondary_ok"] / t["secondary"], 4)
    assert block["multi_label_share"] == round(100 * t["multi"] / t["active"], 4)
    top1 = rng.integers(0, 6, n)
    rows = rng.random(n) < 0.7
    hits = [int(top1[i]) in e for i in np.flatnonzero(rows) if (e := entries[i])]
    assert multi_label_top1(top1, entries, rows) == round(100 * sum(hits) / len(hits), 4)
