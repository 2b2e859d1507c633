"""Stage `review`: a self-contained static report of a split's decisions and their evidence.

`data/review/<split>/index.html` shows every fixed, removed and secondary-labelled image of the
ledger (plus CAM-exempted, merged and overridden ones, and a seeded sample of keeps for
calibration): a thumbnail with the ground-truth boxes drawn, original and new class names, action
and reason, each model's top-5 with probabilities, the CL candidates and the CAM overlays explain
made. Rows are ordered by review priority: the ensemble's label quality (`label_prob` of the votes:
the mean probability of the current label), lowest first. A "class pairs" view lists the most
confused class pairs of the split (ensemble top-1 vs current label, over all active rows and all
1000 classes), each with its images ranked by the same priority (the DataHeroes review workflow).

Layout (no network, no CDN; opens from disk or from `imagenet-clean review`):

    index.html app.js style.css      the page (copied from stages/reporting/assets)
    data/meta.js                     split, models, class names, counts, confused pairs
    data/index.js                    one compact entry per shown row (filter and sort keys)
    data/chunk-<k>.js                the shown rows' evidence, `review.chunk_rows` rows per file
    thumbs/<pos // 1000>/<pos>.jpg   thumbnails with boxes (<pos> = ledger row)
    cams/<pos>__<model>.png          copies of explain's overlays for shown rows

Data files are JSON wrapped in one call, `REVIEW_LOAD("<name>", <json>);`, because a page opened
from disk may load scripts but not fetch JSON; `read_data` unwraps them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stages.cli import run_as_script, split_stage_main
from stages.contracts import formats
from stages.contracts.errors import MissingInputError
from stages.contracts.splits import Params
from stages.reporting.report import (
    LEDGER_COLUMNS,
    VOTES_COLUMNS,
    ReviewConfig,
    build_report,
    read_table_columns,
    report_dir,
)


def run_review(split: str, params: Params) -> dict[str, Any]:
    """Read ledger, votes, manifest, predictions and overlays; write data/review/<split>."""
    config = ReviewConfig.from_params(params, split)
    ledger_table = read_table_columns(
        formats.ledger_path(split), LEDGER_COLUMNS, f"ledger of {split!r}"
    )
    ledger = ledger_table.select(list(LEDGER_COLUMNS)).to_pandas()
    votes = read_table_columns(formats.votes_path(split), VOTES_COLUMNS, f"votes of {split!r}")
    manifest = formats.read_manifest(split)
    predictions = []
    for model in config.models:
        path = formats.predictions_path(split, model)
        if not path.is_file():
            raise MissingInputError(
                f"predictions {path} do not exist; run `dvc repro predict@{split}-{model}` first"
            )
        predictions.append(formats.load_predictions(split, model))
    overlays = formats.cams_path(split).with_name(f"{split}-overlays")
    return build_report(
        ledger,
        votes.select(list(VOTES_COLUMNS)),
        manifest,
        split=split,
        models=config.models,
        predictions=predictions,
        image_root=config.root,
        out=report_dir(split),
        overlay_dir=overlays,
        config=config.options,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `python -m stages.review --split val [--params params.yaml]`."""
    return split_stage_main(argv, stage="review-report", doc=__doc__, run=run_review)


if __name__ == "__main__":
    run_as_script(main)
