"""The paper's category merges (Table A.1): source class -> target class, applied to kept and fixed
rows after the decisions (`merged` = true; the action stays keep or fix)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from stages.contracts import formats
from stages.contracts.actions import KEPT
from stages.contracts.errors import InputError, MissingInputError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MergesConfig:
    """params.yaml `decide.merges`."""

    enabled: bool = True
    table: str = "data/table_a1_merges.csv"


def load_merges(path: str | Path) -> dict[int, int]:
    """Table A.1 (source_wnid,...,target_wnid,...) -> {source class index: target class index}."""
    if not Path(path).is_file():
        raise MissingInputError(
            f"merge table {path} not found; fix decide.merges.table or set "
            "decide.merges.enabled: false"
        )
    table = pd.read_csv(path, dtype=str)
    missing = {"source_wnid", "target_wnid"} - set(table.columns)
    if missing:
        raise InputError(
            f"{path}: needs columns source_wnid and target_wnid, lacks {sorted(missing)}"
        )
    index = formats.wnid_index()
    merges: dict[int, int] = {}
    for line, (source, target) in enumerate(zip(table["source_wnid"], table["target_wnid"]), 2):
        unknown = [w for w in (source, target) if w not in index]
        if unknown:
            raise InputError(f"{path} line {line}: {unknown} not ILSVRC2012 wnids; fix the row")
        if index[source] in merges:
            raise InputError(f"{path} line {line}: source {source} is listed twice; keep one row")
        merges[index[source]] = index[target]
    chained = sorted(set(merges.values()) & set(merges))
    if chained:
        wnids = formats.class_wnids()
        raise InputError(
            f"{path}: {[wnids[c] for c in chained]} are both a source and a target; "
            "merge straight to the final class"
        )
    return merges


def apply_merges(ledger: pd.DataFrame, merges: dict[int, int]) -> pd.DataFrame:
    """Kept and fixed rows whose new_label is a merge source get the target (merged = true)."""
    ledger = ledger.copy()
    if not merges:
        return ledger
    wnids, names = formats.class_wnids(), formats.class_names()
    new_label = ledger["new_label"].to_numpy(dtype=np.float64, na_value=np.nan)
    reason = ledger["reason"].to_numpy(dtype=object).copy()
    merged = ledger["merged"].to_numpy(dtype=bool).copy()
    hit = ledger["action"].isin(KEPT).to_numpy() & np.isin(new_label, list(merges))
    for i in np.flatnonzero(hit):
        source = int(new_label[i])
        target = merges[source]
        new_label[i], merged[i] = target, True
        reason[i] += (
            f"; merged {wnids[source]} {names[source].split(',')[0]} -> "
            f"{wnids[target]} {names[target].split(',')[0]}"
        )
    secondary = [
        sorted({merges.get(int(c), int(c)) for c in extra} - {int(new_label[i])})
        if len(extra)
        else []
        for i, extra in enumerate(ledger["secondary_labels"])
    ]
    return ledger.assign(
        new_label=formats.nullable_ints(new_label),
        merged=merged,
        reason=reason,
        secondary_labels=pd.Series(secondary, index=ledger.index, dtype=object),
    )


def merge_overrides(ledger: pd.DataFrame, merges: dict[int, int], *, source: str) -> pd.DataFrame:
    """Overrides never bring back a class the merges empty: an override row's label (keep, fix)
    or secondary label that is a merge source becomes the merge's target, as for every kept row
    (`merged` = true, the reason says `merged <source> -> <target>`), with a logged note naming
    the image. So the cleaned split keeps one placeholder per merged-away class.

    Args:
        ledger: the ledger after `apply_overrides` (its `override` column marks their rows).
        merges: source class -> target class. source: the overrides file, for the note.
    """
    if not merges:
        return ledger
    wnids = formats.class_wnids()
    new_label = ledger["new_label"].to_numpy(dtype=np.float64, na_value=np.nan)
    touched = ledger["override"].to_numpy(dtype=bool) & ledger["action"].isin(KEPT).to_numpy()
    for i in np.flatnonzero(touched):
        named = [int(c) for c in ledger["secondary_labels"].iloc[i] if int(c) in merges]
        if new_label[i] in merges:
            named.insert(0, int(new_label[i]))
        for cls in named:
            logger.warning(
                "%s: the override of %s names %s, which the merges empty; it becomes the "
                "merge target %s",
                source,
                ledger["image_id"].iloc[i],
                wnids[cls],
                wnids[merges[cls]],
            )
    return apply_merges(ledger, merges)
