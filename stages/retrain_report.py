"""`retrain-report` stage: the paper's Table 2 from the two `retrain` arms -> metrics/retrain.json.

Scores the eval split's predictions of both arms (`data/retrain/original/`, `data/retrain/cleaned/`,
written by `stages.retrain`) on the eval split's original labels, its cleaned labels (the kept and
fixed rows of its ledger) and, when `evaluate.reference_labels` is set, the human reference
(`stages.method.references`; ReaL-style: a prediction is right when it is among the accepted
classes; images without any accepted class are not scored). Refuses arms trained differently.
Imports no torch: it starts in seconds and never makes DVC re-run the (costly) arms when only
scoring changes.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stages.cli import describe, run_as_script
from stages.contracts import formats
from stages.contracts.params import load_params
from stages.contracts.splits import Params
from stages.method.retrain_scoring import RetrainReportConfig, retrain_report

METRICS = Path("metrics/retrain.json")


def run_report(params: Params, *, out: Path | None = None) -> dict[str, Any]:
    """Score both arms -> metrics/retrain.json."""
    metrics = retrain_report(RetrainReportConfig.from_params(params))
    formats.write_json(metrics, out or METRICS)
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `python -m stages.retrain_report [--params params.yaml]`."""
    parser = argparse.ArgumentParser(
        prog="imagenet-clean retrain-report", description=describe(__doc__)
    )
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    run_report(load_params(args.params))
    return 0


if __name__ == "__main__":
    run_as_script(main)
