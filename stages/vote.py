"""`vote` stage: confident-learning votes, top-5 misses per model -> `data/votes/<split>.parquet`.

For each model m (params `predict.models`, in that order) cleanlab flags the active rows whose label
looks wrong; each flagged row gets the candidate l' = m's most likely class other than the label.
Per row, L' (`cl_candidates`) lists one candidate per flagging model. C_s (`top5_misses`) counts the
models whose top-5 misses the label. Inactive rows (manifest skip rows, rows an earlier iteration
removed) take no part. Predictions are memory-mapped and streamed one model at a time.

Three strategies in `stages.method.confident`: `exact` (cleanlab's `find_label_issues` in memory, up
to `vote.exact_max_rows` active rows), `streaming` (the same flags in the same order from chunks of
the memory-mapped predictions; `auto` picks it above the limit) and `batched` (cleanlab's
`LabelInspector`, another filter). Images that predict could not decode (NaN rows of usable images)
take no part either: their `inactive_reason` says so. Then one more streamed pass writes the
ensemble's evidence per row (`stages.method.evidence`): its top-5 classes with their mean
probabilities, the mean probability of the label and each model's top-1.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stages.cli import run_as_script, split_stage_main
from stages.contracts import formats
from stages.contracts.splits import Params
from stages.method.votes import VoteConfig, split_votes

logger = logging.getLogger(__name__)


def run_vote(
    split: str,
    params: Params,
    *,
    out: Path | None = None,
    metrics_out: Path | None = None,
    predictions: Path | None = None,
) -> dict[str, Any]:
    """Write the votes of one split (and their figures); return the figures."""
    config = VoteConfig.from_params(params, split)
    table, stats = split_votes(config, formats.read_manifest(split), predictions=predictions)
    formats.write_table(table, out or formats.votes_path(split), schema=formats.VOTES_SCHEMA)
    formats.write_json(stats, metrics_out or Path("metrics/vote") / f"{split}.json")
    logger.info("vote %s: %s", split, stats)
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `python -m stages.vote --split val [--params params.yaml]`."""
    return split_stage_main(argv, stage="vote", doc=__doc__, run=run_vote)


if __name__ == "__main__":
    run_as_script(main)
