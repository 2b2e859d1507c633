"""`imagenet-clean promote`: the decision ledger -> the next iteration's current labels.

Writes the labels file named by `splits.<split>.labels` (default iterations/<split>.parquet):
one row per ledger row, same order, with image_id; label = new_label for keep and fix rows, null
otherwise; iteration = ledger iteration + 1; reason = null for active rows, else why the image left
("removed in iteration k: <ledger reason>", a reason carried from an earlier iteration, or
"skip: ..."). It also appends the iteration's counts and human agreement (from
`metrics/<split>.json`) to the rounds history beside the labels file (`<labels>-rounds.csv`), which
`evaluate` plots per iteration. The writes are atomic. Promote does not run DVC or git; the
iterative loop is

    imagenet-clean promote --split val && dvc repro && git add -A \\
        && git commit -m "iteration 1" && dvc metrics diff HEAD~1
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import pyarrow.parquet as pq

from stages.contracts import formats
from stages.contracts.errors import InputError
from stages.evaluate import rounds_history_path, rounds_table
from stages.contracts.labels import LABELS_SCHEMA
from stages.contracts.params import load_params, split_params

logger = logging.getLogger(__name__)


CARRIED = ("removed in iteration ", "skip: ")


def _left_reason(action: str, reason: str, iteration: int) -> str | None:
    """Why a row is inactive in the next iteration (None for keep/fix)."""
    if action in ("keep", "fix"):
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
    unknown = sorted(set(ledger["action"]) - set(formats.ACTIONS))
    if unknown:
        raise ValueError(f"ledger has unknown actions {unknown}; expected {formats.ACTIONS}")
    iteration = iterations[0] if iterations else 0
    active = ledger["action"].isin(["keep", "fix"])
    return pd.DataFrame({
        "image_id": ledger["image_id"],
        "label": ledger["new_label"].astype("Int32").where(active, pd.NA),
        "iteration": pd.array([iteration + 1] * len(ledger), dtype="int32"),
        "reason": [_left_reason(a, str(r), iteration)
                   for a, r in zip(ledger["action"], ledger["reason"])],
    })


def _check_not_stale(target: Path, ledger_iteration: int) -> None:
    """Refuse a ledger older than the labels it would replace (promote twice is a no-op)."""
    if not target.is_file():
        return
    current = set(pq.read_table(target, columns=["iteration"]).column(0).to_pylist())
    if current and current != {ledger_iteration} and current != {ledger_iteration + 1}:
        raise ValueError(f"{target} is at iteration {sorted(current)} but the ledger is from "
                         f"iteration {ledger_iteration}; run `dvc repro` before promoting again")


def promote(split: str, params: dict[str, Any], *, root: str | Path = ".",
            ledger_path: str | Path | None = None) -> Path:
    """Read the split's ledger, write its labels file atomically; return the file's path."""
    root = Path(root)
    ledger = formats.read_table(root / (ledger_path or formats.ledger_path(split)),
                                what=f"ledger of split {split!r}")
    labels = promote_labels(ledger)
    target = root / split_params(params, split).get("labels", f"iterations/{split}.parquet")
    if len(labels):
        _check_not_stale(target, int(labels["iteration"].iloc[0]) - 1)
    _record_round(root, split, target, int(ledger["iteration"].iloc[0]) if len(ledger) else 0)
    formats.write_table(labels, target, schema=LABELS_SCHEMA)
    logger.info("promote %s: %d active, %d inactive rows -> %s (iteration %s)", split,
                int(labels["label"].notna().sum()), int(labels["label"].isna().sum()), target,
                labels["iteration"].iloc[0] if len(labels) else "-")
    return target


def _record_round(root: Path, split: str, labels_file: Path, iteration: int) -> None:
    """Append the promoted iteration's counts and agreement to the rounds history."""
    metrics_file = root / formats.metrics_path(split)
    if not metrics_file.is_file():
        raise InputError(f"{metrics_file} does not exist; run `dvc repro` (evaluate) before "
                         "promoting, so the iteration's figures are recorded")
    metrics = json.loads(metrics_file.read_text())
    if metrics.get("iteration") != iteration:
        raise InputError(f"{metrics_file} is from iteration {metrics.get('iteration')} but the "
                         f"ledger from iteration {iteration}; run `dvc repro` first")
    history = rounds_history_path(labels_file)
    table = rounds_table(history, metrics)
    with formats.atomic_path(history) as tmp:
        table.to_csv(tmp, index=False, lineterminator="\n")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `imagenet-clean promote --split val [--params params.yaml] [--ledger PATH]`."""
    parser = argparse.ArgumentParser(prog="imagenet-clean promote",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--split", required=True)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--ledger", default=None, help="ledger to promote (default: the split's)")
    args = parser.parse_args(argv)
    promote(args.split, load_params(args.params), ledger_path=args.ledger)
    return 0


if __name__ == "__main__":
    from stages.cli import run_as_script

    run_as_script(main)
