"""`predict` stage: one model through one view over a split -> cached softmax probabilities.

Writes `data/predictions/<split>/<model>.<view>.npy`: (N, 1000) probabilities in manifest row
order, float32 (or float16 by `predict.dtype`), NaN rows for manifest skip rows (never decoded),
plus its JSON sidecar (model identity, view, preprocessing, dtype, N, top-1/top-5 on the manifest
labels). With `predict.embeddings` on it also writes `data/embeddings/<split>/<model>.<view>.npy`,
the float16 (N, D) pooled pre-logit features of the same forward pass (sidecar beside it; a (N, 0)
placeholder when off, so the DVC output always exists). A view (`predict.views`: `full`, `boxes`,
`hflip`; `stages.sources.views`) is what the model is shown of each image before its own eval
transform. DVC runs one stage per split x model x view, so a changed view list re-runs only the
views it adds. The work is done in resumable shards
(`stages.modelling.predictor`): a run killed at any point resumes with the missing shards only, and
the final file appears, atomically, only when complete. `main_ensemble` predicts every model x view
in one pass over the images (each image decoded once) and writes byte-identical files. Under
`torchrun` (or with `predict.processes` > 1) each process computes a share of the missing shards
and rank 0 assembles the same files. An image that cannot be decoded although the manifest marks
it usable (a header-only ingest) keeps a NaN row, counted as `n_unreadable`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stages.contracts import formats
from stages.contracts.params import load_params
from stages.contracts.splits import Params
from stages.modelling import distributed
from stages.modelling.launch import launch_or_run
from stages.modelling.predict_config import PredictConfig, PredictOptions
from stages.modelling.predictor import predict_split
from stages.sources.views import VIEWS


def run_predict(
    split: str,
    model: str,
    params: Params,
    *,
    view: str = "full",
    manifest_path: str | Path | None = None,
    out: str | Path | None = None,
    features_out: str | Path | None = None,
) -> dict[str, Any]:
    """The DVC stage for one (split, model, view): write its predictions + sidecar and its
    features file (`predict.embeddings`; a (N, 0) placeholder when off), return the predictions
    sidecar. With `out` given, features are written only where `features_out` says. Under
    torchrun it joins the process group (stages.modelling.distributed)."""
    config = PredictConfig.from_params(params, split, [model], [view])
    manifest = formats.read_manifest(split, path=manifest_path)
    name = f"{model}.{view}"
    features = (
        {name: Path(features_out or formats.features_path(split, model, view))}
        if features_out is not None or out is None
        else None
    )
    out = Path(out or formats.predictions_path(split, model, view))
    with distributed.session(config.options.device):
        return predict_split(config, manifest, {name: out}, features=features)[name]


def run_ensemble(
    split: str,
    params: Params,
    *,
    manifest_path: str | Path | None = None,
    out_dir: str | Path | None = None,
    models: Sequence[str] | None = None,
    views: Sequence[str] | None = None,
    features_dir: str | Path | None = None,
) -> dict[str, dict[str, Any]]:
    """All `predict.models` x `predict.views` (or `models` x `views`) of a split in one image
    pass; the files of run_predict (features in `features_dir`; by default in
    data/embeddings/<split> unless `out_dir` is given)."""
    config = PredictConfig.from_params(params, split, models or None, views or None)
    manifest = formats.read_manifest(split, path=manifest_path)
    folder = Path(out_dir) if out_dir else formats.predictions_path(split, "x").parent
    feature_folder = (
        Path(features_dir) if features_dir else formats.features_path(split, "x").parent
    )
    pairs = [(spec.name, view) for spec in config.specs for view in config.views]
    outs = {f"{m}.{v}": folder / formats.predictions_path(split, m, v).name for m, v in pairs}
    features = {
        f"{m}.{v}": feature_folder / formats.features_path(split, m, v).name for m, v in pairs
    }
    with distributed.session(config.options.device):
        return predict_split(config, manifest, outs, features=features)


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--split", required=True)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--manifest", default=None, help="default: data/manifests/<split>.parquet")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `python -m stages.predict --split val --model <name> [--view full]`; under
    `torchrun` (or with `predict.processes` > 1) each process takes a share of the shards."""
    parser = _parser("imagenet-clean predict", __doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a key of params.yaml `models:`")
    parser.add_argument("--view", default="full", choices=list(VIEWS), help="default: full")
    parser.add_argument(
        "--out", default=None, help="default: data/predictions/<split>/<model>.<view>.npy"
    )
    parser.add_argument(
        "--features-out",
        default=None,
        help="predict.embeddings: default data/embeddings/<split>/<model>.<view>.npy; with --out, "
        "none unless given",
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    params = load_params(args.params)
    return launch_or_run(
        "stages.predict",
        argv,
        PredictOptions.from_params(params).processes,
        lambda: run_predict(
            args.split,
            args.model,
            params,
            view=args.view,
            manifest_path=args.manifest,
            out=args.out,
            features_out=args.features_out,
        ),
    )


def main_ensemble(argv: Sequence[str] | None = None) -> int:
    """CLI: `imagenet-clean predict-ensemble --split val`: every model x view, one image pass."""
    parser = _parser(
        "imagenet-clean predict-ensemble",
        "Predict all predict.models x predict.views of a split in one pass over the images",
    )
    parser.add_argument("--models", nargs="+", default=None, help="default: predict.models")
    parser.add_argument("--views", nargs="+", default=None, help="default: predict.views")
    parser.add_argument("--out-dir", default=None, help="default: data/predictions/<split>")
    parser.add_argument(
        "--features-dir",
        default=None,
        help="predict.embeddings: default data/embeddings/<split> (with --out-dir: none)",
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    params = load_params(args.params)
    return launch_or_run(
        "stages.cli",
        ["predict-ensemble", *argv],
        PredictOptions.from_params(params).processes,
        lambda: run_ensemble(
            args.split,
            params,
            manifest_path=args.manifest,
            out_dir=args.out_dir,
            models=args.models,
            views=args.views,
            features_dir=args.features_dir,
        ),
    )


if __name__ == "__main__":
    from stages.cli import run_as_script

    run_as_script(main)
