"""The current labels of a split at the start of an iteration (`splits.<split>.labels`).

`promote` writes the file from a ledger; `vote` reads it. A split without the file is at iteration
0: its manifest's labels are current. Columns: image_id, label (null once the image left the
split), iteration (the iteration these labels are the input of), reason (why it left).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from stages.contracts import formats
from stages.contracts.actions import ACTIONS, KEPT
from stages.contracts.errors import InputError
from stages.contracts.splits import Params, SplitEntry

LABELS_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("label", pa.int32()),
        ("iteration", pa.int32()),
        ("reason", pa.string()),
    ]
)
"""The current-labels file of an iteration (data contracts)."""

LABELS_COLUMNS = tuple(LABELS_SCHEMA.names)


@dataclass(frozen=True, eq=False)
class CurrentLabels:
    """A split's labels at the start of an iteration, aligned with the manifest.

    Attributes:
        label: (N,) int64 current label, -1 on inactive rows.
        active: (N,) bool rows that take part in this iteration.
        inactive_reason: (N,) object, None on active rows.
        iteration: 0 when the labels are the manifest's, else the labels file's iteration.
    """

    label: np.ndarray
    active: np.ndarray
    inactive_reason: np.ndarray
    iteration: int


def current_labels(manifest: pd.DataFrame, labels_file: str | Path | None) -> CurrentLabels:
    """The manifest's labels (iteration 0) or, when `labels_file` exists, the labels it holds.

    Raises:
        ValueError: the labels file lacks columns, does not cover the manifest's image ids, mixes
            iterations, or an active row has no label.
    """
    skip = manifest["skip_reason"].notna().to_numpy()
    reason = ("skip: " + manifest["skip_reason"].fillna("").astype(str)).to_numpy(dtype=object)
    reason[~skip] = None
    label = manifest["label"].astype("Int64")
    iteration = 0
    if labels_file is not None and Path(labels_file).is_file():
        label, left, iteration = _read_labels_file(Path(labels_file), manifest["image_id"])
        reason = np.where(skip | left.isna().to_numpy(), reason, left.to_numpy(dtype=object))
    active = pd.isna(reason) & label.notna().to_numpy()
    missing = pd.isna(reason) & ~active
    if missing.any():
        raise ValueError(
            f"image {manifest['image_id'].iloc[int(np.argmax(missing))]} is usable but "
            f"has no label ({int(missing.sum())} such rows); fix the manifest or labels"
        )
    values = label.fillna(-1).to_numpy(dtype=np.int64)
    return CurrentLabels(np.where(active, values, -1), active, reason, iteration)


def _read_labels_file(path: Path, image_ids: pd.Series) -> tuple[pd.Series, pd.Series, int]:
    """(label Int64, reason for rows that left (None elsewhere), iteration), manifest-aligned."""
    table = formats.read_table(path, what="labels file")
    absent = [c for c in LABELS_COLUMNS if c not in table.columns]
    if absent:
        raise ValueError(
            f"labels file {path} lacks columns {absent}; it needs {list(LABELS_COLUMNS)}"
        )
    if table["image_id"].duplicated().any():
        raise ValueError(
            f"labels file {path} repeats image_id "
            f"{table['image_id'][table['image_id'].duplicated()].iloc[0]!r}"
        )
    table = table.set_index("image_id")
    unknown = table.index.difference(pd.Index(image_ids))
    lacking = pd.Index(image_ids).difference(table.index)
    if len(unknown) or len(lacking):
        raise ValueError(
            f"labels file {path} does not match the manifest: {len(lacking)} manifest "
            f"image ids missing (e.g. {list(lacking[:3])}), {len(unknown)} unknown "
            f"(e.g. {list(unknown[:3])}); re-run promote for this manifest"
        )
    iterations = table["iteration"].dropna().unique()
    if len(iterations) != 1:
        found = sorted(int(i) for i in iterations)
        raise ValueError(f"labels file {path} must hold one iteration, found {found}")
    table = table.reindex(image_ids)
    left = table["label"].isna()
    reason = table["reason"].where(
        table["reason"].notna(), "left the split in an earlier iteration"
    )
    return (
        table["label"].astype("Int64").reset_index(drop=True),
        reason.where(left, None).reset_index(drop=True),
        int(iterations[0]),
    )


ROUND_COLUMNS = (
    "iteration",
    "keep",
    "fix",
    "remove_new",
    "remove",
    "secondary",
    "agreement_before",
    "agreement_after",
)


def round_row(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """One iteration's line of the rounds history."""
    counts, block = metrics["counts"], metrics.get("reference") or {}
    return {
        "iteration": metrics["iteration"],
        "keep": counts["keep"],
        "fix": counts["fix"],
        "remove_new": counts["remove_new"],
        "remove": counts["remove"],
        "secondary": counts["secondary"],
        "agreement_before": block.get("agreement_before"),
        "agreement_after": block.get("agreement_after"),
    }


def rounds_history_path(labels_file: str | Path) -> Path:
    """Where promote keeps a split's rounds history: beside its labels file."""
    labels_file = Path(labels_file)
    return labels_file.with_name(f"{labels_file.stem}-rounds.csv")


def rounds_table(history: Path, metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Earlier iterations (from the history file, if any) plus this one, one row each."""
    rows = [round_row(metrics)]
    if history.is_file():
        earlier = pd.read_csv(history)
        missing = set(ROUND_COLUMNS) - set(earlier.columns)
        if missing:
            raise InputError(
                f"{history}: lacks columns {sorted(missing)}; it is written by "
                "`imagenet-clean promote`, restore it from git"
            )
        rows = earlier[earlier["iteration"] < metrics["iteration"]].to_dict("records") + rows
    return pd.DataFrame(rows, columns=list(ROUND_COLUMNS))


CARRIED = ("removed in iteration ", "skip: ")


def _left_reason(action: str, reason: str, iteration: int) -> str | None:
    """Why a row is inactive in the next iteration (None for keep/fix)."""
    if action in KEPT:
        return None
    if reason.startswith(CARRIED):
        return reason
    return f"removed in iteration {iteration}: {reason}"


def promote_labels(ledger: pd.DataFrame) -> pd.DataFrame:
    """The next iteration's labels table from a ledger (columns of LABELS_SCHEMA).

    Raises:
        ValueError: when the ledger mixes iterations or has an unknown action.
    """
    iterations = sorted(set(ledger["iteration"].astype(int)))
    if len(iterations) > 1:
        raise ValueError(f"ledger mixes iterations {iterations}; re-run `dvc repro decide`")
    unknown = sorted(set(ledger["action"]) - set(ACTIONS))
    if unknown:
        raise ValueError(
            f"ledger has unknown actions {unknown}; expected {list(map(str, ACTIONS))}"
        )
    iteration = iterations[0] if iterations else 0
    active = ledger["action"].isin(KEPT)
    return pd.DataFrame(
        {
            "image_id": ledger["image_id"],
            "label": ledger["new_label"].astype("Int32").where(active),  # NA where not kept
            "iteration": pd.array([iteration + 1] * len(ledger), dtype="int32"),
            "reason": [
                _left_reason(a, str(r), iteration)
                for a, r in zip(ledger["action"], ledger["reason"])
            ],
        }
    )


def check_not_stale(target: Path, ledger_iteration: int) -> None:
    """Refuse a ledger older than the labels it would replace (promote twice is a no-op)."""
    if not target.is_file():
        return
    current = set(pq.read_table(target, columns=["iteration"]).column(0).to_pylist())
    if current and current != {ledger_iteration} and current != {ledger_iteration + 1}:
        raise ValueError(
            f"{target} is at iteration {sorted(current)} but the ledger is from "
            f"iteration {ledger_iteration}; run `dvc repro` before promoting again"
        )


def record_round(root: Path, split: str, labels_file: Path, iteration: int) -> None:
    """Append the promoted iteration's counts and agreement to the rounds history."""
    metrics_file = root / formats.metrics_path(split)
    if not metrics_file.is_file():
        raise InputError(
            f"{metrics_file} does not exist; run `dvc repro` (evaluate) before "
            "promoting, so the iteration's figures are recorded"
        )
    metrics = json.loads(metrics_file.read_text())
    if metrics.get("iteration") != iteration:
        raise InputError(
            f"{metrics_file} is from iteration {metrics.get('iteration')} but the "
            f"ledger from iteration {iteration}; run `dvc repro` first"
        )
    history = rounds_history_path(labels_file)
    table = rounds_table(history, metrics)
    with formats.atomic_path(history) as tmp:
        table.to_csv(tmp, index=False, lineterminator="\n")


@dataclass(frozen=True)
class PromoteConfig:
    """`imagenet-clean promote`: the split and its current-labels file (`splits.<split>.labels`,
    default iterations/<split>.parquet)."""

    split: str
    labels_file: str

    @classmethod
    def from_params(cls, params: Params, split: str) -> PromoteConfig:
        """Raises ConfigError for an unknown split or a bad `labels` value."""
        return cls(split, SplitEntry.from_params(params, split).labels_file)
