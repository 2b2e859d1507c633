"""`folds` stage: a stratified, seeded K-fold assignment of a split -> `data/folds/<split>.parquet`.

One row per manifest row, in manifest order: `image_id` and `fold` (0..K-1; null on the manifest's
skip rows, which are never trained on nor predicted). Within every class the folds take turns, so
each class's images are spread over the folds as evenly as possible (counts differ by at most one)
and so are the fold sizes. Stratified on the manifest labels (the split as ingested), so the folds
stay the same from one cleanup iteration to the next. K = len(`train.folds`), seed `train.seed`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stages.cli import run_as_script, split_stage_main
from stages.contracts import formats
from stages.contracts.splits import Params
from stages.modelling.folds import FOLDS_SCHEMA, fold_table, folds_path
from stages.modelling.train_config import FoldsConfig

logger = logging.getLogger(__name__)


def run_folds(
    split: str,
    params: Params,
    *,
    manifest_path: str | Path | None = None,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Write the fold table of `split`; return its per-fold counts."""
    config = FoldsConfig.from_params(params, split)
    manifest = formats.read_manifest(split, path=manifest_path)
    table = fold_table(manifest, k=config.k, seed=config.seed)
    formats.write_table(table, out or folds_path(split), schema=FOLDS_SCHEMA)
    counts = np.bincount(table["fold"].drop_null().to_numpy(), minlength=config.k).tolist()
    stats = {
        "split": split,
        "folds": config.k,
        "seed": config.seed,
        "rows": len(manifest),
        "skipped": int(table["fold"].null_count),
        "per_fold": counts,
    }
    logger.info("folds %s: %s", split, stats)
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `python -m stages.folds --split train [--params params.yaml]`."""
    return split_stage_main(argv, stage="folds", doc=__doc__, run=run_folds)


if __name__ == "__main__":
    run_as_script(main)
