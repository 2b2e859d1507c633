"""`ingest` stage: a split's raw source -> `data/manifests/<split>.parquet`.

Every image file found becomes one manifest row. Unreadable files (empty, truncated, not an image,
a broken symlink, a malformed annotation) keep their row with a `skip_reason` under
`on_bad_image: skip`, or stop the stage naming the file under `on_bad_image: error`; so manifest
rows = files found - files left out by `splits.<split>.limit`, and usable + skipped = rows.
Boxes stay in original-image pixels; a box that reaches outside the image is clipped to it, and
one with no area inside the image is dropped, each counted in the stage's metrics and logged.
Labels are checked against the wnids the box XMLs name: a wrong label mapping (a devkit synset
list in sorted order) stops the stage instead of mislabelling every image.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stages.cli import run_as_script, split_stage_main
from stages.contracts import formats
from stages.contracts.splits import Params, SplitEntry
from stages.sources.layouts import split_source
from stages.sources.manifest import IngestConfig, build_manifest
from stages.sources.probes import ProbeCache, cache_path

logger = logging.getLogger(__name__)


def ingest(
    split: str,
    params: Params,
    *,
    out: Path | None = None,
    metrics_out: Path | None = None,
    probe_cache: Path | None = None,
) -> dict[str, Any]:
    """Write one split's manifest and ingest metrics; return the stats. Images unchanged since the
    last run are not read again (`probe_cache`, default `data/.work/ingest/<split>.parquet`)."""
    source = split_source(SplitEntry.from_params(params, split))
    cache = ProbeCache(probe_cache or cache_path(split))
    manifest, stats = build_manifest(source, config=IngestConfig.from_params(params), cache=cache)
    formats.write_table(
        manifest, out or formats.manifest_path(split), schema=formats.MANIFEST_SCHEMA
    )
    formats.write_json(stats, metrics_out or Path("metrics/ingest") / f"{split}.json")
    # vote depends on this folder: when nothing fills it (the split is in neither predict.splits
    # nor train.splits), vote then stops with the fix instead of DVC's bare "No such file".
    formats.predictions_path(split, "_").parent.mkdir(parents=True, exist_ok=True)
    logger.info("ingest %s: %s", split, stats)
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `python -m stages.ingest --split val [--params params.yaml]`."""
    return split_stage_main(argv, stage="ingest", doc=__doc__, run=ingest)


if __name__ == "__main__":
    run_as_script(main)
