"""`evaluate` stage: the ledger, votes and predictions -> `metrics/<split>.json` and the plots.

`metrics/<split>.json` (deterministic JSON, null where a ratio has no rows) holds only the
headline figures a person diffs between iterations, so that `dvc metrics show` stays readable:
`rows`, `iteration`, `counts` (keep, fix, remove, skip, merge, override, exempted, secondary,
placeholders, `remove_new` / `remove_carried`), `cam.vetoed`, `models.<name>.original.top1` and
`.cleaned.top1` (the paper's Table 1, top-1) and, with `evaluate.reference_labels`, `reference`:
agreement before -> after, removal precision and `worse` (true, with a logged warning, when the
cleaned labels agree less with people than the input labels). The detail lies beside it, in plain
data files (DVC outputs, not metrics):

- `metrics/<split>-detail.json`: every figure: the above, `percent` of manifest rows, per model
  `cl_label_errors`, top-1/top-5 and row counts on the original and cleaned labels and
  `multi_label_top1`, the CAM histogram, the `multi_label_estimate` (share of active rows whose
  ensemble gives two or more classes at least `evaluate.multi_label_threshold`; Anzaku et al.
  2024) and the whole `reference` block (fix outcomes, recall of reference-bad rows, secondary-label
  precision, ...; `stages.method.references`);
- `metrics/<split>-models.csv`: one row per model, the paper's Table 1 with top-5 and CL errors;
- `evidence` (headline: noise, expected label accuracy before -> after; detail: per action type
  rows taken, estimated precision, best estimate offered, and the gate that held a type back;
  `stages.method.evidence_strength`): how strong the evidence is, without a reference;
- `metrics/<split>-classes.csv` / `.png`: this iteration's fixes and removals per class (top
  `evaluate.top_classes`); `metrics/<split>-rounds-*.csv` / `-rounds.png`: counts and human
  agreement per iteration (the history `imagenet-clean promote` keeps beside the labels file, plus
  this iteration).

Predictions are memory-mapped and scanned model by model in row chunks (`stages.method.scoring`),
so nothing of size N x 1000 is ever held in memory; rows that are not probabilities are refused.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stages.cli import run_as_script, split_stage_main
from stages.contracts import formats
from stages.contracts.labels import rounds_history_path, rounds_table
from stages.contracts.splits import Params
from stages.method import references
from stages.method.evidence_strength import StrengthConfig, evidence_strength
from stages.method.scoring import EvaluateConfig, evaluate_split, headline_metrics, model_table
from stages.reporting.plots import empty_note, plot_classes, write_rounds

logger = logging.getLogger(__name__)

HEADLINE_EVIDENCE = ("noise", "expected_label_accuracy_before", "expected_label_accuracy_after")
"""The evidence figures `metrics/<split>.json` keeps (the rest is in `<split>-detail.json`)."""


def run_evaluate(split: str, params: Params, *, root: str | Path = ".") -> dict[str, Any]:
    """Read ledger, votes, cams, clean split, predictions and the human reference; write the
    metrics, the per-class and per-iteration plots."""
    root = Path(root)
    config = EvaluateConfig.from_params(params, split)
    strength = StrengthConfig.from_params(params, split)
    ledger = formats.read_table(root / formats.ledger_path(split), what=f"ledger of {split!r}")
    votes = formats.read_table(root / formats.votes_path(split), what=f"votes of {split!r}")
    cams = formats.read_table(root / formats.cams_path(split), what=f"CAM scores of {split!r}")
    clean = formats.read_table(root / formats.clean_path(split), what=f"clean split {split!r}")
    predictions = {m: root / formats.predictions_path(split, m) for m in config.models}
    entries = None
    if config.reference is not None:
        entries = references.align(
            references.load_reference(root / config.reference),
            ledger["image_id"],
            source=str(config.reference),
        )
    metrics, classes = evaluate_split(
        ledger,
        votes,
        predictions,
        cams=cams,
        clean=clean,
        entries=entries,
        multi_label_threshold=config.multi_label_threshold,
        top_classes=config.top_classes,
        split=split,
    )
    if "label_posterior" in votes and "confidence" in ledger:
        metrics["evidence"] = evidence_strength(ledger, votes, config=strength)
    folder = root / formats.metrics_path(split).parent
    head = headline_metrics(metrics)
    if "evidence" in metrics:
        head["evidence"] = {k: metrics["evidence"][k] for k in HEADLINE_EVIDENCE}
    formats.write_json(head, root / formats.metrics_path(split))
    formats.write_json(metrics, folder / f"{split}-detail.json")
    for name, table in (("classes", classes), ("models", model_table(metrics))):
        with formats.atomic_path(folder / f"{split}-{name}.csv") as tmp:
            table.to_csv(tmp, index=False, lineterminator="\n")
    plot_classes(
        classes,
        folder / f"{split}-classes.png",
        empty=empty_note(metrics),
        title=f"{split}: fixes and removals per class (top {config.top_classes})",
    )
    write_rounds(
        rounds_table(root / rounds_history_path(config.labels_file), metrics), folder, split
    )
    logger.info("evaluate %s: %s", split, metrics["counts"])
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `python -m stages.evaluate --split val [--params params.yaml]`."""
    return split_stage_main(argv, stage="evaluate", doc=__doc__, run=run_evaluate)


if __name__ == "__main__":
    run_as_script(main)
