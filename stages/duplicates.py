"""`duplicates` stage: exact and near-duplicate images within and across a group of splits.

For each group of `duplicates.groups` (e.g. `val: [val]`, `val+train: [val, train]`) it reads
every split's manifest (file sha256), fingerprints (decoded-pixel sha256, pHash, quality scores)
and embeddings (`embed` stage, or predict's own with `predict.embeddings` on) and writes:

    data/duplicates/<group>.parquet          one row per image in a group (stages.dedup.groups)
    data/duplicates/<group>.issues.parquet   every image's quality issues and nearest neighbour
    metrics/duplicates/<group>.json          counts by kind, within / across splits, conflicting

Exact: same file bytes or same decoded pixels. Near: pHash within `duplicates.phash_distance`
bits or cosine >= `duplicates.cosine`. Similar (review only): cosine in [`review_cosine`,
`cosine`). decide acts on them by `decide.<split>.duplicates` (stages.method.duplicates).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stages.cli import run_as_script
from stages.contracts import formats
from stages.contracts.errors import ConfigError, InputError, MissingInputError
from stages.contracts.params import load_params
from stages.contracts.splits import Params
from stages.dedup.fingerprints import FINGERPRINT_SCHEMA
from stages.dedup.groups import (
    DUPLICATES_SCHEMA,
    ISSUES_SCHEMA,
    DuplicatesConfig,
    SplitData,
    find_duplicates,
)

logger = logging.getLogger(__name__)


def _split_data(split: str, model: str, root: Path) -> SplitData:
    """A split's manifest, fingerprints and embeddings, checked to be of the same rows (the
    embeddings are predict's where the embed sidecar names them in `features_from`)."""
    manifest = formats.read_manifest(split, path=root / formats.manifest_path(split))
    prints_path = root / formats.fingerprints_path(split)
    emb_path = root / formats.embeddings_path(split, model)
    for path in (prints_path, emb_path):
        if not path.is_file():
            raise MissingInputError(f"{path} does not exist; run `dvc repro embed@{split}` first")
    prints = formats.read_table(prints_path, what=f"fingerprints of {split!r}")
    sidecar = json.loads(emb_path.with_suffix(".json").read_text())
    if sidecar.get("features_from"):
        emb_path = root / sidecar["features_from"]
        if not emb_path.with_suffix(".json").is_file():
            raise MissingInputError(
                f"{emb_path} does not exist (the embed sidecar of {split!r} names it); run "
                f"`dvc repro predict` with predict.embeddings: true first"
            )
        sidecar = json.loads(emb_path.with_suffix(".json").read_text())
        if not sidecar.get("enabled", True):
            raise InputError(
                f"{emb_path} is predict's placeholder (predict.embeddings was off when it ran); "
                f"re-run `dvc repro predict` and `embed@{split}`"
            )
    if sidecar.get("image_ids_sha256") != formats.image_ids_sha256(manifest["image_id"]) or list(
        prints["image_id"]
    ) != list(manifest["image_id"]):
        raise InputError(
            f"{emb_path} or {prints_path} do not hold the manifest's rows; "
            f"re-run `dvc repro embed@{split}`"
        )
    missing = [c for c in FINGERPRINT_SCHEMA.names if c not in prints.columns]
    if missing:
        raise InputError(f"{prints_path} lacks {missing}; re-run `dvc repro embed@{split}`")
    return SplitData(split, manifest, prints, np.load(emb_path, mmap_mode="r"))


def run_duplicates(group: str, params: Params, *, root: str | Path = ".") -> dict[str, Any]:
    """Find the group's duplicates; write its table, issues and metrics; return the metrics."""
    root = Path(root)
    config = DuplicatesConfig.from_params(params)
    if group not in config.groups:
        raise ConfigError(
            f"duplicates group {group!r} is not in params.yaml `duplicates.groups` "
            f"({sorted(config.groups)})"
        )
    parts = [_split_data(s, config.model, root) for s in config.groups[group]]
    result = find_duplicates(parts, config)
    formats.write_table(
        result.table, root / formats.duplicates_path(group), schema=DUPLICATES_SCHEMA
    )
    formats.write_table(
        result.issues,
        root / formats.duplicate_issues_path(group),
        schema=ISSUES_SCHEMA,
    )
    metrics = {"group": group, "splits": list(config.groups[group]), **result.metrics}
    formats.write_json(metrics, root / "metrics/duplicates" / f"{group}.json")
    g = metrics["groups"]
    logger.info(
        "duplicates %s (%s): %d images; %d duplicate groups (%d with exact copies, %d across "
        "splits, %d with conflicting labels), %d similar groups for review; issues %s",
        group,
        ", ".join(config.groups[group]),
        metrics["images"],
        g["duplicate"],
        g["with_exact"],
        g["across_splits"],
        g["conflicting"],
        g["similar"],
        metrics["issues"],
    )
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `python -m stages.duplicates --group val [--params params.yaml]`."""
    parser = argparse.ArgumentParser(
        prog="imagenet-clean duplicates", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--group", required=True, help="a key of params.yaml duplicates.groups")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    run_duplicates(args.group, load_params(args.params))
    return 0


if __name__ == "__main__":
    run_as_script(main)
