"""Human overrides of a split's decisions: `splits.<split>.overrides`, a CSV that `decide` applies
last.

Columns `image_id,action,new_label,note`. Actions: `keep` (the label the image had before this
iteration: rejects a fix or removal), `fix` (new_label = class index 0..999 or wnid), `remove`,
`secondary` (new_label = a class the image also shows; several rows per image allowed; an image's
secondary labels become exactly its rows' classes, one row with an empty new_label = none). At most
one keep/fix/remove row per image. `imagenet-clean review` writes this file; people may edit it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Hashable, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.contracts import formats
from stages.contracts.actions import KEPT, Action
from stages.contracts.errors import InputError, MissingInputError

OVERRIDE_COLUMNS = ("image_id", "action", "new_label", "note")
LINE = "line"
"""The index name of `load_overrides`' table: each row's line in the file, for messages."""


class OverrideAction(StrEnum):
    """What an overrides row does: set the decision (keep, fix, remove) or a secondary label."""

    KEEP = "keep"
    FIX = "fix"
    REMOVE = "remove"
    SECONDARY = "secondary"


OVERRIDE_ACTIONS: tuple[OverrideAction, ...] = tuple(OverrideAction)
DECISIONS = (OverrideAction.KEEP, OverrideAction.FIX, OverrideAction.REMOVE)
"""The override actions that set an image's decision (at most one row each per image)."""


def read_rows(path: Path) -> list[dict[str, str]]:
    """The overrides file's rows as strings ([] when the file does not exist yet).

    Raises:
        InputError: see `read_numbered_rows`.
    """
    return [row for _line, row in read_numbered_rows(path)]


def read_numbered_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    """The overrides file's rows, each with its line number ([] when the file does not exist).

    Parsed strictly with the csv module's quoting: a UTF-8 byte-order mark (what spreadsheets
    write) is accepted, blank lines are skipped, and a row with more or fewer fields than the
    header (a note with an unquoted comma) is an error, not silently cut.

    Raises:
        InputError: naming the file (and the line): a header other than
            image_id,action,new_label,note, a row with the wrong number of fields, text that is
            not UTF-8 or not valid CSV.
    """
    if not path.is_file():
        return []
    rows: list[tuple[int, dict[str, str]]] = []
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle, strict=True)
        try:
            header = next(reader, [])
            if header != list(OVERRIDE_COLUMNS):
                raise InputError(
                    f"{path}: header must be {','.join(OVERRIDE_COLUMNS)}, got "
                    f"{','.join(map(repr, header))}; fix the file first"
                )
            for fields in reader:
                if not any(field.strip() for field in fields):
                    continue
                if len(fields) != len(OVERRIDE_COLUMNS):
                    raise InputError(
                        f"{path} line {reader.line_num}: {len(fields)} fields, expected "
                        f"{len(OVERRIDE_COLUMNS)} ({','.join(OVERRIDE_COLUMNS)}); put a note "
                        'that holds a comma in double quotes ("like, this")'
                    )
                rows.append((reader.line_num, dict(zip(OVERRIDE_COLUMNS, fields, strict=True))))
        except csv.Error as error:
            raise InputError(
                f"{path} line {reader.line_num}: not valid CSV ({error}); fix the file first"
            ) from None
        except UnicodeDecodeError as error:
            raise InputError(f"{path}: not UTF-8 text ({error}); save it as UTF-8") from None
    return rows


def write_rows(path: Path, rows: Sequence[dict[str, str]]) -> None:
    """Rewrite the overrides file atomically (header + rows, in order): what review writes."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(OVERRIDE_COLUMNS)
    writer.writerows([row[c] for c in OVERRIDE_COLUMNS] for row in rows)
    with formats.atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")


def load_overrides(path: str | Path) -> pd.DataFrame:
    """The overrides CSV as a table of strings (a header-only file = no overrides).

    Raises:
        MissingInputError: no such file. InputError: see `read_numbered_rows`.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(
            f"overrides file {path} not found; create it with the header "
            f"{','.join(OVERRIDE_COLUMNS)} (no rows = no overrides)"
        )
    numbered = read_numbered_rows(path)
    return pd.DataFrame(
        [row for _line, row in numbered],
        columns=list(OVERRIDE_COLUMNS),
        index=pd.Index([line for line, _row in numbered], name=LINE, dtype="int64"),
    )


def _override_error(
    row: Mapping[Hashable, Any],
    position: int | None,
    action_now: np.ndarray,
    label_now: np.ndarray,
) -> str | None:
    """Why an override row cannot apply (with the fix), or None."""
    action, new_label = row["action"].strip(), row["new_label"].strip()
    if position is None:
        return "unknown image_id; use an image_id of the split's manifest"
    if action not in OVERRIDE_ACTIONS:
        return f"action {action!r} is not {', '.join(OVERRIDE_ACTIONS)}; use one of those"
    if action == OverrideAction.FIX and not new_label:
        return "action fix needs a new_label (class index 0..999 or wnid); add it"
    if action in (OverrideAction.KEEP, OverrideAction.REMOVE) and new_label:
        return "new_label is only read for actions fix and secondary; clear it or use fix"
    if (
        action in (OverrideAction.FIX, OverrideAction.SECONDARY)
        and new_label
        and formats.parse_class(new_label) is None
    ):
        return f"new_label {new_label!r} is not a class index 0..999 or an ILSVRC2012 wnid"
    if action_now[position] == Action.SKIP:
        return "the image is unreadable (a skip row); overrides cannot apply to it; drop the row"
    if action == OverrideAction.KEEP and np.isnan(label_now[position]):
        return "the image left the split earlier and has no label to keep; use fix with a new_label"
    return None


def apply_overrides(
    ledger: pd.DataFrame, overrides: pd.DataFrame, *, source: str = "overrides"
) -> pd.DataFrame:
    """Human overrides win over every rule and merge; `override` = true, reason "override: <note>".
    keep/fix/remove rows set the decision (one per image); `secondary` rows set the image's
    secondary labels to exactly their classes (an empty new_label: none).

    Raises:
        InputError: naming `source`, the CSV line and the fix, for an unknown image_id, a bad
            action, a fix without a valid new_label, a duplicated row, or secondary labels on an
            image that is not kept or fixed.
    """
    cols = {c: ledger[c].to_numpy(dtype=object).copy() for c in ("action", "reason")}
    label = ledger["label"].to_numpy(dtype=np.float64, na_value=np.nan)
    new_label = ledger["new_label"].to_numpy(dtype=np.float64, na_value=np.nan)
    merged, override = ledger["merged"].to_numpy(dtype=bool).copy(), np.zeros(len(ledger), bool)
    positions = {image_id: i for i, image_id in enumerate(ledger["image_id"])}
    decided: set[str] = set()
    secondary: dict[int, list[tuple[int, int | None]]] = {}
    lines = overrides.index if overrides.index.name == LINE else range(2, len(overrides) + 2)
    for line, row in zip(lines, overrides.to_dict("records"), strict=True):
        image_id, action = row["image_id"].strip(), row["action"].strip()
        problem = _override_error(row, positions.get(image_id), cols["action"], label)
        if problem is None and action != OverrideAction.SECONDARY and image_id in decided:
            problem = "image_id has two keep/fix/remove rows; keep one"
        if problem:
            raise InputError(f"{source} line {line} (image_id {image_id!r}): {problem}")
        i = positions[image_id]
        if action == OverrideAction.SECONDARY:
            secondary.setdefault(i, []).append(
                (line, formats.parse_class(row["new_label"]) if row["new_label"].strip() else None)
            )
            continue
        decided.add(image_id)
        new_label[i] = (
            formats.parse_class(row["new_label"])
            if action == OverrideAction.FIX
            else label[i]
            if action == OverrideAction.KEEP
            else np.nan
        )
        if action == OverrideAction.FIX and new_label[i] == label[i]:
            action = Action.KEEP.value  # an override "fix" to the current label (a later iteration)
        cols["action"][i], merged[i], override[i] = action, False, True
        cols["reason"][i] = f"override: {row['note'].strip() or '(no note)'}"
    extra = _override_secondary(ledger, secondary, cols["action"], new_label, source)
    for i in secondary:
        override[i] = True
        if ledger["image_id"].iloc[i] not in decided:
            cols["reason"][i] += "; secondary labels set by override"
    return ledger.assign(
        action=cols["action"],
        reason=cols["reason"],
        new_label=formats.nullable_ints(new_label),
        merged=merged,
        override=ledger["override"].to_numpy(bool) | override,
        secondary_labels=pd.Series(extra, index=ledger.index, dtype=object),
        **_decided_by_a_person(ledger, ledger["image_id"].isin(decided).to_numpy(), override),
    )


def _decided_by_a_person(
    ledger: pd.DataFrame, decided: np.ndarray, reviewed: np.ndarray
) -> dict[str, np.ndarray]:
    """`confidence` 1.0 for the rows whose action a person decided, and no `review` flag on any
    row a person looked at (where the ledger has those columns: the review server checks
    overrides on a narrower ledger)."""
    columns = {}
    if "confidence" in ledger:
        confidence = ledger["confidence"].to_numpy(dtype=np.float32, na_value=np.nan).copy()
        confidence[decided] = 1.0
        columns["confidence"] = confidence
    if "review" in ledger:
        columns["review"] = ledger["review"].to_numpy(bool) & ~reviewed
    return columns


def _override_secondary(
    ledger: pd.DataFrame,
    secondary: dict[int, list[tuple[int, int | None]]],
    action: np.ndarray,
    new_label: np.ndarray,
    source: str,
) -> list[list[int]]:
    """The secondary labels after `secondary` override rows (grouped by row position)."""
    out = [list(v) for v in ledger["secondary_labels"]]
    for i, entries in secondary.items():
        line = entries[0][0]
        where = f"{source} line {line} (image_id {ledger['image_id'].iloc[i]!r})"
        if action[i] not in KEPT:
            raise InputError(
                f"{where}: secondary labels only apply to kept or fixed images, this "
                f"one is {action[i]}; drop the secondary rows or keep the image"
            )
        classes = [c for _, c in entries if c is not None]
        if len(set(classes)) != len(classes) or (classes and len(classes) != len(entries)):
            raise InputError(
                f"{where}: repeated or mixed (empty and non-empty) secondary rows; "
                "list each secondary class once, or one empty row for none"
            )
        if int(new_label[i]) in classes:
            raise InputError(
                f"{where}: class {formats.class_label(int(new_label[i]))} is the "
                "image's label, not a secondary label; drop that row"
            )
        out[i] = sorted(classes)
    return out
