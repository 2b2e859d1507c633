"""Human reference labels (ImageNet-ReaL style) and how well a split's decisions agree with them.

A reference gives, per image, the set of classes human raters accept; an empty set means that no
class fits the image. Two file shapes are read: ReaL's published `real.json` (a list of 50,000
lists, entry i for `ILSVRC2012_val_{i+1:08d}`) and a mapping `{image_id: [classes]}`. Reading a
reference is evaluation only: no decision depends on it.

A row is *judged* when the reference has a non-empty entry for its image (ReaL's convention: images
that no class fits are left out of accuracy).
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.contracts import formats
from stages.contracts.actions import KEPT, Action
from stages.contracts.errors import ConfigError, InputError, MissingInputError
from stages.contracts.splits import Params

logger = logging.getLogger(__name__)

REAL_ROWS = 50_000


def reference_file(params: Params, split: str) -> Path | None:
    """The human reference file of `split`: params `evaluate.references` (the folder DVC tracks)
    joined with `evaluate.reference_labels.<split>` (a mapping split -> file name; a split left
    out, or null, has none).

    Raises:
        ConfigError: `reference_labels` is neither a mapping of file names nor null.
    """
    section = params.get("evaluate") or {}
    files = section.get("reference_labels")
    if files is None:
        return None
    if not isinstance(files, Mapping) or not all(
        isinstance(v, str) or v is None for v in files.values()
    ):
        raise ConfigError(
            "params.yaml `evaluate.reference_labels` must map split names to "
            f"reference files in `evaluate.references` (or be null), got {files!r}; "
            "e.g. {val: real.json}"
        )
    name = files.get(split)
    return Path(section.get("references") or ".") / name if name else None


def _real_id(index: int) -> str:
    return f"ILSVRC2012_val_{index + 1:08d}"


def _classes(value: Any, path: Path, where: str) -> frozenset[int]:
    if not isinstance(value, list) or not all(
        isinstance(c, int) and not isinstance(c, bool) and 0 <= c < formats.NUM_CLASSES
        for c in value
    ):
        raise InputError(
            f"{path}: {where} must be a list of class indices 0..999, got "
            f"{str(value)[:80]}; fix the file (ImageNet-ReaL real.json or "
            "{image_id: [classes]})"
        )
    return frozenset(value)


def load_reference(path: str | Path) -> dict[str, frozenset[int]]:
    """image_id -> accepted classes, from either file shape.

    Raises:
        MissingInputError: the file does not exist.
        InputError: not JSON, neither shape, a ReaL list that does not have 50,000 entries, or an
            entry that is not a list of class indices 0..999 (the message names the entry).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(
            f"reference labels {path} not found; fix evaluate.references / "
            "evaluate.reference_labels or set reference_labels to null"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(
            f"{path}: not a JSON file ({error}); expected ImageNet-ReaL real.json "
            "or a mapping {image_id: [classes]}"
        ) from None
    if isinstance(data, list):
        if len(data) != REAL_ROWS:
            raise InputError(
                f"{path}: a ReaL real.json list has {REAL_ROWS} entries (one per "
                f"ILSVRC2012 val image), this one has {len(data)}; use the published "
                "file or a mapping {image_id: [classes]}"
            )
        return {
            _real_id(i): _classes(v, path, f"entry {i} ({_real_id(i)})") for i, v in enumerate(data)
        }
    if isinstance(data, dict):
        return {str(k): _classes(v, path, f"entry {k!r}") for k, v in data.items()}
    raise InputError(
        f"{path}: expected a JSON list (ReaL real.json) or a mapping {{image_id: "
        f"[classes]}}, got a {type(data).__name__}"
    )


def align(
    reference: Mapping[str, frozenset[int]], image_ids: pd.Series, *, source: str
) -> list[frozenset[int] | None]:
    """Per row: the accepted classes, or None where the reference has no entry.

    Raises:
        InputError: the reference covers none of the split's images (a file for another split).
    """
    entries = [reference.get(str(i)) for i in image_ids]
    if len(image_ids) and all(e is None for e in entries):
        raise InputError(
            f"{source}: none of the split's {len(image_ids)} image ids (e.g. "
            f"{image_ids.iloc[0]!r}) has an entry; is it the reference of another "
            "split? Point evaluate.reference_labels at this split's file or null"
        )
    return entries


class Accepted:
    """A reference's accepted classes per row, as sorted `row * 1000 + class` keys, so that "is
    class c accepted for row i" is answered for every row at once (no per-row Python loop).

    Attributes:
        has_entry: (N,) the reference has an entry for the row (possibly empty).
        sizes: (N,) number of accepted classes (0 for no entry or an empty one).
        keys: sorted `row * 1000 + class` of every accepted (row, class).
    """

    def __init__(self, entries: Sequence[Collection[int] | None]) -> None:
        n = len(entries)
        self.has_entry = np.fromiter((e is not None for e in entries), bool, n)
        self.sizes = np.fromiter((len(e) if e is not None else 0 for e in entries), np.int64, n)
        classes = np.fromiter(
            itertools.chain.from_iterable(e for e in entries if e), np.int64, int(self.sizes.sum())
        )
        rows = np.repeat(np.arange(n, dtype=np.int64), self.sizes)
        self.keys = np.sort(rows * formats.NUM_CLASSES + classes)

    def __len__(self) -> int:
        return len(self.has_entry)

    def accepts(self, classes: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Per row (all rows, or `rows`): whether `classes` (-1 = none) is an accepted class."""
        classes = np.asarray(classes, dtype=np.int64)
        rows = np.arange(len(classes), dtype=np.int64) if rows is None else rows.astype(np.int64)
        probe = rows * formats.NUM_CLASSES + classes
        at = np.minimum(np.searchsorted(self.keys, probe), max(len(self.keys) - 1, 0))
        found = self.keys[at] == probe if len(self.keys) else np.zeros(len(probe), bool)
        return found & (classes >= 0)


def _as_accepted(entries: Sequence[Collection[int] | None] | Accepted) -> Accepted:
    return entries if isinstance(entries, Accepted) else Accepted(entries)


def _class_column(values: pd.Series) -> np.ndarray:
    """A nullable label column -> int64 with -1 for null."""
    floats = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    return np.where(np.isnan(floats), -1, floats).astype(np.int64)


def agreement(
    ledger: pd.DataFrame, entries: Sequence[Collection[int] | None] | Accepted
) -> dict[str, Any]:
    """The `reference` block of `metrics/<split>.json`: agreement before -> after, fix outcomes,
    removal precision and recall, secondary-label precision (percentages, with their row counts).
    A kept label that the merges replaced by its merged class agrees after when people accepted
    the label before (the merged class contains it).

    Rows that left the split in an earlier iteration or are unreadable (no current label) and rows
    without a reference entry are not counted. Vectorised over rows (ImageNet train: 1.28M).
    """
    accepted = _as_accepted(entries)
    label, new = _class_column(ledger["label"]), _class_column(ledger["new_label"])
    action = ledger["action"].to_numpy(dtype=object)
    counted = accepted.has_entry & (label >= 0) & (action != Action.SKIP)
    judged = counted & (accepted.sizes > 0)
    right, new_right = accepted.accepts(label), accepted.accepts(new)
    kept = np.isin(action, list(KEPT))
    if "merged" in ledger:
        # a kept label merged into its confusable partner (the paper's merge table) is as right
        # as the label people accepted: the merged class contains it
        merged = ledger["merged"].fillna(False).to_numpy(dtype=bool)
        new_right |= merged & (action == Action.KEEP) & right
    fixes = counted & (action == Action.FIX)
    corrected, broken = fixes & ~right & new_right, fixes & right & ~new_right
    removed = counted & (action == Action.REMOVE)
    secondary = ledger["secondary_labels"].to_numpy(dtype=object)
    sizes = np.fromiter((0 if s is None else len(s) for s in secondary), np.int64, len(secondary))
    sizes = np.where(counted, sizes, 0)
    extra_rows = np.repeat(np.arange(len(secondary), dtype=np.int64), sizes)
    extras = np.fromiter(
        itertools.chain.from_iterable(s for s, k in zip(secondary, sizes) if k),
        np.int64,
        int(sizes.sum()),
    )
    secondary_ok = int(accepted.accepts(extras, extra_rows).sum())
    t = {
        "judged_before": int(judged.sum()),
        "agree_before": int((judged & right).sum()),
        "judged_after": int((judged & kept).sum()),
        "agree_after": int((judged & kept & new_right).sum()),
        "active": int(counted.sum()),
        "bad": int((counted & ~right).sum()),
        "removed": int(removed.sum()),
        "removed_bad": int((removed & ~right).sum()),
        "corrected": int(corrected.sum()),
        "broken": int(broken.sum()),
        "fixes": int(fixes.sum()),
    }
    return {
        "agreement_before": formats.percent(t["agree_before"], t["judged_before"]),
        "agreement_after": formats.percent(t["agree_after"], t["judged_after"]),
        "judged_before": t["judged_before"],
        "judged_after": t["judged_after"],
        "rows": t["active"],
        "removed_fraction": formats.percent(t["removed"], t["active"]),
        "fixes": {
            "corrected": t["corrected"],
            "neutral": t["fixes"] - t["corrected"] - t["broken"],
            "broken": t["broken"],
            "total": t["fixes"],
        },
        "removal_precision": formats.percent(t["removed_bad"], t["removed"]),
        "removals": t["removed"],
        "recall_of_bad": formats.percent(t["removed_bad"] + t["corrected"], t["bad"]),
        "bad_rows": t["bad"],
        "secondary_precision": formats.percent(secondary_ok, int(sizes.sum())),
        "secondary_labels": int(sizes.sum()),
        "multi_label_share": formats.percent(
            int((counted & (accepted.sizes > 1)).sum()), t["active"]
        ),
    }


def multi_label_top1(
    top1: np.ndarray, entries: Sequence[Collection[int] | None] | Accepted, rows: np.ndarray
) -> float | None:
    """A model's multi-label top-1 (ReaL accuracy): its top-1 is among the accepted classes, over
    the given rows that have a non-empty entry (vectorised over rows)."""
    accepted = _as_accepted(entries)
    judged = np.asarray(rows, dtype=bool) & (accepted.sizes > 0)
    hits = accepted.accepts(np.asarray(top1, dtype=np.int64)) & judged
    return formats.percent(int(hits.sum()), int(judged.sum()))


def warn_if_worse(block: Mapping[str, Any], split: str) -> bool:
    """Log a warning when the decisions agree less with the reference than the input labels did."""
    before, after = block.get("agreement_before"), block.get("agreement_after")
    worse = before is not None and after is not None and after < before
    if worse:
        logger.warning(
            "%s: the cleaned labels agree LESS with the human reference than the input "
            "labels (%.2f %% -> %.2f %%); do not publish them as an improvement",
            split,
            before,
            after,
        )
    return worse
