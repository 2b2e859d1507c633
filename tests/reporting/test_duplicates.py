"""The Duplicates view's groups (stages/reporting/duplicates.py) from a members table in the
duplicates stage's schema; the view in the browser: tests/test_review_browser.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages.contracts.errors import InputError, MissingInputError
from stages.reporting.duplicates import DuplicateSource, duplicate_view


def members(rows: list[tuple]) -> pd.DataFrame:
    """(image_id, split, row, group, kind, similarity, label) rows -> a members table."""
    table = pd.DataFrame(
        rows, columns=["image_id", "split", "row", "group", "kind", "similarity", "label"]
    )
    table["match"] = table.groupby("group")["image_id"].transform("first")
    table["match_split"] = table.groupby("group")["split"].transform("first")
    labels = table.groupby("group")["label"].agg(lambda s: sorted(set(s)))
    spans = table.groupby("group")["split"].agg(lambda s: sorted(set(s)))
    table["labels"] = table["group"].map(labels)
    table["conflicting"] = table["labels"].map(len) > 1
    table["splits"] = table["group"].map(spans)
    table["size"] = table.groupby("group")["image_id"].transform("size")
    return table


IDS = np.array([f"v{k}" for k in range(6)], dtype=object)
TABLE = members(
    [
        ("v0", "val", 0, 0, "exact", 1.0, 3),  # same label
        ("v1", "val", 1, 0, "exact", 1.0, 3),
        ("v2", "val", 2, 1, "near", 0.93, 4),  # conflicting, across splits
        ("t9", "train", 9, 1, "near", 0.93, 5),
        ("v3", "val", 3, 2, "similar", 0.85, 6),
        ("v4", "val", 4, 2, "similar", 0.85, 7),
        ("t1", "train", 1, 3, "exact", 1.0, 8),  # no val image: not shown
        ("t2", "train", 2, 3, "exact", 1.0, 8),
    ]
)


def test_groups_of_the_split_conflicting_first_similar_last() -> None:
    view = duplicate_view(DuplicateSource("g", TABLE), split="val", ids=IDS, limit=10)
    assert view.group == "g" and view.total == 3
    assert [g["group"] for g in view.groups] == [1, 0, 2]
    first = view.groups[0]
    assert first["conflicting"] and first["splits"] == ["train", "val"]
    assert first["labels"] == [4, 5] and first["kind"] == "near"
    assert [(m["id"], m["pos"]) for m in first["members"]] == [("v2", 2), ("t9", None)]
    assert first["members"][0]["sim"] == pytest.approx(0.93)
    assert list(view.rows) == [0, 1, 2, 3, 4]


def test_limit_keeps_the_first_groups_and_their_rows() -> None:
    view = duplicate_view(DuplicateSource("g", TABLE), split="val", ids=IDS, limit=1)
    assert [g["group"] for g in view.groups] == [1] and list(view.rows) == [2]
    assert view.total == 3


def test_no_group_configured_is_an_empty_view() -> None:
    view = duplicate_view(None, split="val", ids=IDS, limit=10)
    assert view.group is None and view.groups == [] and len(view.rows) == 0


def test_a_table_older_than_the_ledger_or_missing_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not match the ledger"):
        duplicate_view(DuplicateSource("g", TABLE), split="val", ids=IDS[::-1], limit=10)
    with pytest.raises(MissingInputError, match="dvc repro duplicates@g"):
        duplicate_view(DuplicateSource("g", tmp_path / "g.parquet"), split="val", ids=IDS, limit=1)
    with pytest.raises(InputError, match="lacks columns"):
        duplicate_view(
            DuplicateSource("g", TABLE.drop(columns=["kind"])), split="val", ids=IDS, limit=1
        )
