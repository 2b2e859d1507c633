"""`imagenet-clean import-predictions`: predictions made elsewhere (a GPU cluster, a colleague) ->
the predict contract, so that vote/explain/evaluate use them and DVC does not re-run predict.

FILE is one of
- `.npz` with an `image_id` array (N,) and a `probabilities` (or `probs`) array (N, 1000);
- `.parquet` with an `image_id` column and a `probabilities` list column of 1000 floats;
- `.npy` (N, 1000) with `--image-ids IDS` (a text file, one image id per line, same order).

Rows are matched to the manifest by image_id (never by position): unknown, duplicate or missing
ids are refused, naming some. Probabilities are checked on the manifest's usable rows: finite,
in [0, 1], each row summing to 1; logits or NaN rows are refused naming the row and the fix. The
manifest's skip rows become NaN rows, as predict writes them. The output is
`data/predictions/<split>/<model>.npy` in manifest row order (dtype `predict.dtype`) plus the
sidecar predict writes, with `source: imported`, `image_ids_sha256` and the file's sha256. For a
predict stage's own path it also writes that stage's features output,
`data/embeddings/<split>/<model>.<view>.npy`, as the (N, 0) placeholder (imported predictions carry
no features; docs/duplicates.md). In a DVC project the import is recorded with
`dvc commit -f predict@<split>-<model>-<view>`, so `dvc status` and `dvc repro` treat the stage as
up to date.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stages.cli import describe, run_as_script
from stages.contracts import formats
from stages.contracts.params import load_params
from stages.contracts.sidecars import predictions_sidecar, write_features_placeholder
from stages.contracts.splits import Params
from stages.modelling.imported import ImportConfig, dvc_commit, import_predictions, open_predictions
from stages.sources.views import VIEWS

logger = logging.getLogger(__name__)


def run_import(
    split: str,
    model: str,
    path: str | Path,
    params: Params,
    *,
    view: str = "full",
    image_ids: str | Path | None = None,
    manifest_path: str | Path | None = None,
    out: str | Path | None = None,
    commit: bool = True,
) -> dict[str, Any]:
    """Import one model's predictions for a split (one view); write the .npy and its sidecar,
    record the import with DVC when inside a DVC project, return the sidecar."""
    config = ImportConfig.from_params(params, split, model)
    dtype = config.dtype
    manifest = formats.read_manifest(split, path=manifest_path)
    table = open_predictions(path, image_ids=image_ids)
    out = Path(out or formats.predictions_path(split, model, view))
    top1, top5, scored, _skipped = import_predictions(table, manifest, out, dtype=dtype)
    sidecar = predictions_sidecar(
        manifest,
        model=model,
        split=split,
        source="imported",
        dtype=dtype,
        spec=config.spec,
        top1=formats.percent(top1, scored),
        top5=formats.percent(top5, scored),
        imported_from=Path(path).name,
        imported_sha256=formats.file_sha256(path),
        view=view,
    )
    formats.write_json(sidecar, out.with_suffix(".json"))
    logger.info(
        "imported %s for %s/%s: %d rows, top-1 %s, top-5 %s",
        path,
        split,
        model,
        len(manifest),
        sidecar["top1"],
        sidecar["top5"],
    )
    stage = f"predict@{split}-{model}-{view}"
    in_matrix = config.in_matrix
    if in_matrix and out == formats.predictions_path(split, model, view):
        # the stage's features output: imported predictions come without features
        write_features_placeholder(
            formats.features_path(split, model, view),
            manifest,
            split=split,
            model=model,
            view=view,
            source="imported",
        )
    if (
        commit
        and Path(".dvc").is_dir()
        and in_matrix
        and out == formats.predictions_path(split, model, view)
    ):
        dvc_commit(stage)
    elif in_matrix:
        logger.info("record the import for DVC with `dvc commit -f %s`", stage)
    else:
        logger.warning(
            "%s/%s is not in predict.splits x predict.models, so no DVC stage owns these "
            "predictions; add them there for vote to use them",
            split,
            model,
        )
    return sidecar


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `imagenet-clean import-predictions --split S --model M FILE`."""
    parser = argparse.ArgumentParser(
        prog="imagenet-clean import-predictions", description=describe(__doc__)
    )
    parser.add_argument("file", help=".npz / .parquet with image_id + probabilities, or .npy")
    parser.add_argument("--split", required=True)
    parser.add_argument("--model", required=True, help="a key of params.yaml `models:`")
    parser.add_argument("--view", default="full", choices=list(VIEWS), help="default: full")
    parser.add_argument("--image-ids", default=None, help="for an .npy: one image id per line")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--manifest", default=None, help="default: data/manifests/<split>.parquet")
    parser.add_argument(
        "--out", default=None, help="default: data/predictions/<split>/<model>.<view>.npy"
    )
    parser.add_argument(
        "--no-dvc-commit",
        action="store_true",
        help="do not run `dvc commit -f predict@<split>-<model>-<view>`",
    )
    args = parser.parse_args(argv)
    run_import(
        args.split,
        args.model,
        args.file,
        load_params(args.params),
        view=args.view,
        image_ids=args.image_ids,
        manifest_path=args.manifest,
        out=args.out,
        commit=not args.no_dvc_commit,
    )
    return 0


if __name__ == "__main__":
    run_as_script(main)
