"""Stage `review`: a self-contained static report of a split's decisions and their evidence.

`data/review/<split>/index.html` shows one review round: per queue (fixed, removed,
secondary-labelled, CAM-exempted, merged and overridden images) the `review.queue_rows` of lowest
label quality, plus a seeded sample of keeps for calibration, so its size does not grow with the
split (the review server looks up any other image on demand). Each image: a thumbnail with the
ground-truth boxes drawn, original and new class names, action and reason, each model's top-5
with probabilities, the CL candidates and the CAM overlays explain made. Rows are ordered by
review priority: the ensemble's label quality (`label_prob` of the votes: the mean probability of
the current label), lowest first. A "class pairs" view lists the most
confused class pairs of the split (ensemble top-1 vs current label, over all active rows and all
1000 classes), each with its images ranked by the same priority (the DataHeroes review workflow).
A "Duplicates" view shows the duplicate groups of the split's `decide.<split>.duplicates.group`
(`data/duplicates/<group>.parquet`) side by side, with keep / remove / relabel per image; a split
without a group gets the view's "no duplicates group configured".

Layout (no network, no CDN; opens from disk or from `imagenet-clean review`):

    index.html app.js style.css      the page (copied from stages/reporting/assets)
    data/meta.js                     split, models, class names, counts, queues, confused pairs
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
from stages.method.duplicates import DuplicatePolicy
from stages.reporting.duplicates import DuplicateSource
from stages.reporting.report import ReviewConfig, build_report, report_dir


def run_review(split: str, params: Params) -> dict[str, Any]:
    """Write data/review/<split> from the ledger, votes, manifest, predictions and overlays, each
    read only as far as the report needs (its memory follows the report's rows, not the split's)."""
    config = ReviewConfig.from_params(params, split)
    predictions = []
    for model in config.models:
        path = formats.predictions_path(split, model)
        if not path.is_file():
            raise MissingInputError(
                f"predictions {path} do not exist; run `dvc repro predict@{split}-{model}` first"
            )
        predictions.append(path)
    overlays = formats.cams_path(split).with_name(f"{split}-overlays")
    group = DuplicatePolicy.from_params(params, split).group
    duplicates = None if group is None else DuplicateSource(group, formats.duplicates_path(group))
    return build_report(
        formats.ledger_path(split),
        formats.votes_path(split),
        formats.manifest_path(split),
        split=split,
        models=config.models,
        predictions=predictions,
        image_root=config.root,
        out=report_dir(split),
        overlay_dir=overlays,
        config=config.options,
        duplicates=duplicates,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `python -m stages.review --split val [--params params.yaml]`."""
    return split_stage_main(argv, stage="review-report", doc=__doc__, run=run_review)


if __name__ == "__main__":
    run_as_script(main)
