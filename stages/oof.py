"""`oof` stage: a model's K fold outputs -> its out-of-fold predictions of a split.

`oof@<split>-<model>` reads `data/oof/<split>/<model>/fold-<k>/` for every fold and writes the
predictions contract that `predict` writes for pretrained models, so vote, explain and decide read
them unchanged: `data/predictions/<split>/<model>.npy` ((N, 1000), manifest row order, NaN on skip
rows) and its sidecar `<model>.json` (predict's fields plus `source: out-of-fold`, `folds`, the
training settings, `image_ids_sha256` and one entry per fold model).

Before writing anything it checks, per fold, that the fold's log describes this split, model and
fold, that its predictions cover exactly the fold's usable rows of the current fold table, and
that the rows its training loop fed the model (`seen.npy`) include none of them: every row's
prediction comes from a model that never saw it. Streams the folds in row chunks.
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
from stages.modelling.folds import fold_dir, read_folds
from stages.modelling.out_of_fold import assemble
from stages.modelling.train_config import OofConfig


def run_oof(
    split: str,
    model: str,
    params: Params,
    *,
    manifest_path: str | Path | None = None,
    folds_path: str | Path | None = None,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Assemble one (split, model)'s fold folders into its predictions -> the sidecar."""
    config = OofConfig.from_params(params, split, model)
    manifest = formats.read_manifest(split, path=manifest_path)
    fold_of = read_folds(split, manifest, path=folds_path)
    folders = [fold_dir(split, model, fold) for fold in range(config.k)]
    return assemble(
        manifest,
        fold_of,
        folders,
        Path(out or formats.predictions_path(split, model)),
        split=split,
        model=model,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `python -m stages.oof --split S --model M [--params params.yaml]`."""
    parser = argparse.ArgumentParser(prog="imagenet-clean oof", description=describe(__doc__))
    parser.add_argument("--split", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    run_oof(args.split, args.model, load_params(args.params))
    return 0


if __name__ == "__main__":
    run_as_script(main)
