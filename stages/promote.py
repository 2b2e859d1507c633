r"""`imagenet-clean promote`: the decision ledger -> the next iteration's current labels.

Writes the labels file named by `splits.<split>.labels` (default iterations/<split>.parquet):
one row per ledger row, same order, with image_id; label = new_label for keep and fix rows, null
otherwise; iteration = ledger iteration + 1; reason = null for active rows, else why the image left
("removed in iteration k: <ledger reason>", a reason carried from an earlier iteration, or
"skip: ..."). It also appends the iteration's counts and human agreement (from
`metrics/<split>.json`) to the rounds history beside the labels file (`<labels>-rounds.csv`), which
`evaluate` plots per iteration. The writes are atomic. Promote does not run DVC or git; the
iterative loop is

    imagenet-clean promote --split val && dvc repro && git add -A \
        && git commit -m "iteration 1" && dvc metrics diff HEAD~1
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from stages.cli import describe, run_as_script
from stages.contracts import formats
from stages.contracts.labels import (
    LABELS_SCHEMA,
    PromoteConfig,
    check_not_stale,
    promote_labels,
    record_round,
)
from stages.contracts.splits import Params

logger = logging.getLogger(__name__)


def promote(
    split: str, params: Params, *, root: str | Path = ".", ledger_path: str | Path | None = None
) -> Path:
    """Read the split's ledger, write its labels file atomically; return the file's path."""
    root = Path(root)
    config = PromoteConfig.from_params(params, split)
    ledger = formats.read_table(
        root / (ledger_path or formats.ledger_path(split)), what=f"ledger of split {split!r}"
    )
    labels = promote_labels(ledger)
    target = root / config.labels_file
    if len(labels):
        check_not_stale(target, int(labels["iteration"].iloc[0]) - 1)
    record_round(root, split, target, int(ledger["iteration"].iloc[0]) if len(ledger) else 0)
    formats.write_table(labels, target, schema=LABELS_SCHEMA)
    logger.info(
        "promote %s: %d active, %d inactive rows -> %s (iteration %s)",
        split,
        int(labels["label"].notna().sum()),
        int(labels["label"].isna().sum()),
        target,
        labels["iteration"].iloc[0] if len(labels) else "-",
    )
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `imagenet-clean promote --split val [--params params.yaml] [--ledger PATH]`."""
    parser = argparse.ArgumentParser(prog="imagenet-clean promote", description=describe(__doc__))
    parser.add_argument("--split", required=True)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--ledger", default=None, help="ledger to promote (default: the split's)")
    args = parser.parse_args(argv)
    from stages.contracts.params import load_params

    promote(args.split, load_params(args.params), ledger_path=args.ledger)
    return 0


if __name__ == "__main__":
    run_as_script(main)
