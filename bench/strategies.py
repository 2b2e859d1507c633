"""Both decision strategies on a split's pipeline outputs, scored against the human reference.

Reads what `dvc repro` wrote (manifest, votes with the ensemble's evidence, CAM scores) and the
params (thresholds, `decide.consensus`, merges, `evaluate.reference_labels`), runs `decide` with
every strategy in memory (no overrides, so the table shows the strategies alone) and prints, per
strategy, the reference figures of `metrics/<split>.json`: agreement before -> after, fixes
corrected / neutral / broken, removals and their precision, secondary labels and their precision.

    python bench/strategies.py [--split val] [--params params.yaml] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stages.contracts import formats
from stages.contracts.params import load_params
from stages.method import references as reference
from stages.method.ledger import DecideConfig, decide_split
from stages.method.merges import load_merges
from stages.method.scoring import EvaluateConfig
from stages.method.strategies import STRATEGIES


def compare(split: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """One row of reference figures per strategy."""
    base = DecideConfig.from_params(params, split)
    evaluate = EvaluateConfig.from_params(params, split)
    if evaluate.reference is None:
        raise SystemExit(
            f"evaluate.reference_labels names no file for {split}: this comparison "
            "needs a reference"
        )
    manifest = formats.read_manifest(split)
    votes = formats.read_table(formats.votes_path(split), what="votes")
    cams = formats.read_table(formats.cams_path(split), what="CAM scores")
    merges = load_merges(base.merges.table) if base.merges.enabled else {}
    source = evaluate.reference
    entries = reference.align(
        reference.load_reference(source), manifest["image_id"], source=str(source)
    )
    rows = []
    for strategy in STRATEGIES:
        config = dataclasses.replace(base, strategy=strategy)
        ledger, _ = decide_split(votes, manifest, config=config, cams=cams, merges=merges)
        block = reference.agreement(ledger, entries)
        rows.append({"strategy": strategy, **block})
    return rows


def print_table(rows: list[dict[str, Any]], split: str) -> None:
    """A Markdown table, one line per strategy."""

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    print(
        f"| strategy ({split}) | agreement before -> after | fixes: corrected / neutral / "
        "broken | removals (% of rows) | removal precision | secondary labels | secondary "
        "precision |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        f = r["fixes"]
        print(
            f"| {r['strategy']} | {pct(r['agreement_before'])} -> {pct(r['agreement_after'])} | "
            f"{f['total']}: {f['corrected']} / {f['neutral']} / {f['broken']} | "
            f"{r['removals']} ({pct(r['removed_fraction'])} %) | {pct(r['removal_precision'])} | "
            f"{r['secondary_labels']} | {pct(r['secondary_precision'])} |"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="val")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    rows = compare(args.split, load_params(args.params))
    print_table(rows, args.split)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
