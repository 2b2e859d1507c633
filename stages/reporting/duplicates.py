"""The Duplicates view of the review report: the duplicate groups of the split's
`decide.<split>.duplicates.group` (the `duplicates` stage's members table,
`stages.dedup.groups.DUPLICATES_SCHEMA`) that hold images of the split, each listed with its
members side by side (docs/review.md).

The split's own members are shown rows of the report (their evidence records and thumbnails are in
its chunks, so their keep / remove / relabel buttons write overrides like every other card); members
of other splits of the group are listed by id, split and label (their corrections belong to their
own split's review).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.contracts.errors import InputError, MissingInputError

COLUMNS = (
    "image_id",
    "split",
    "row",
    "group",
    "kind",
    "similarity",
    "match",
    "match_split",
    "label",
    "labels",
    "conflicting",
    "splits",
    "size",
)
KIND_RANK = {"exact": 0, "near": 1, "similar": 2}


@dataclass(frozen=True)
class DuplicateSource:
    """The duplicates table a report reads: the `duplicates.groups` entry and its members table
    (a DataFrame or its parquet file)."""

    group: str
    table: pd.DataFrame | Path


@dataclass(frozen=True)
class DuplicateView:
    """What the report shows: the group name (None: no group configured), the groups (JSON-ready,
    members' `pos` = ledger position, None for other splits) and this split's members' positions."""

    group: str | None = None
    groups: list[dict[str, Any]] = field(default_factory=list)
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    total: int = 0


def _read(source: DuplicateSource) -> pd.DataFrame:
    if isinstance(source.table, pd.DataFrame):
        table = source.table
    elif not Path(source.table).is_file():
        raise MissingInputError(
            f"duplicates table {source.table} does not exist; run "
            f"`dvc repro duplicates@{source.group}` first"
        )
    else:
        table = pd.read_parquet(source.table)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise InputError(
            f"duplicates table of group {source.group!r} lacks columns {missing}; re-run "
            "`dvc repro duplicates` (it is older than the review stage)"
        )
    return table


def _number(value: Any, digits: int = 4) -> float | None:
    return None if value is None or pd.isna(value) else round(float(value), digits)


def _member(row: Any, split: str) -> dict[str, Any]:
    return {
        "id": str(row.image_id),
        "split": str(row.split),
        "pos": int(row.row) if row.split == split else None,
        "kind": str(row.kind),
        "sim": _number(row.similarity),
        "match": None if pd.isna(row.match) else str(row.match),
        "match_split": None if pd.isna(row.match_split) else str(row.match_split),
        "label": None if pd.isna(row.label) else int(row.label),
    }


def duplicate_view(
    source: DuplicateSource | None, *, split: str, ids: np.ndarray, limit: int
) -> DuplicateView:
    """The groups holding images of `split`, at most `limit` of them: duplicate groups before
    similar ones; among them conflicting labels first, then groups spanning several splits, then
    exact before near, then by group id.

    Args:
        source: the group's table (None: the split has no `decide.<split>.duplicates.group`).
        ids: (N,) the split's image ids in ledger order (the table's `row` must match them).

    Raises:
        InputError: the table's rows of this split do not match the ledger (an older table).
    """
    if source is None:
        return DuplicateView()
    table = _read(source)
    mine = table[table["split"] == split]
    rows = mine["row"].to_numpy(dtype=np.int64)
    if len(rows) and (
        rows.max() >= len(ids) or (ids[rows] != mine["image_id"].to_numpy(dtype=object)).any()
    ):
        raise InputError(
            f"the duplicates table of group {source.group!r} does not match the ledger of "
            f"{split!r}; re-run `dvc repro duplicates@{source.group}` (it is older than the "
            "manifest)"
        )
    held = table[table["group"].isin(mine["group"].unique())]
    summary = held.groupby("group").agg(
        kind=("kind", lambda k: min(KIND_RANK.get(str(v), 3) for v in k)),
        conflicting=("conflicting", "first"),
        spans=("splits", lambda s: len(s.iloc[0])),
    )
    summary["similar"] = summary["kind"] >= KIND_RANK["similar"]
    order = summary.reset_index().sort_values(
        ["similar", "conflicting", "spans", "kind", "group"],
        ascending=[True, False, False, True, True],
    )
    chosen = order["group"].to_numpy()[:limit]
    groups, positions = [], []
    for group in chosen:
        members = held[held["group"] == group]
        first = members.iloc[0]
        listed = [_member(r, split) for r in members.itertuples(index=False)]
        positions += [m["pos"] for m in listed if m["pos"] is not None]
        groups.append(
            {
                "group": int(group),
                "kind": min((m["kind"] for m in listed), key=lambda k: KIND_RANK.get(k, 3)),
                "labels": [int(c) for c in first["labels"]],
                "conflicting": bool(first["conflicting"]),
                "splits": [str(s) for s in first["splits"]],
                "members": listed,
            }
        )
    return DuplicateView(
        source.group, groups, np.unique(np.array(positions, dtype=np.int64)), len(summary)
    )
