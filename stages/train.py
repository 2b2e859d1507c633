"""`train` stage: one model on K-1 folds of a split -> the held-out fold's softmax probabilities.

`train@<split>-<model>-<fold>` trains `models.<model>` (from scratch, or from weights that never saw
ImageNet train: `train.settings.init`) on the split's active rows outside fold `k` with the split's
current labels, then predicts the usable rows of fold `k`. It writes the folder
`data/oof/<split>/<model>/fold-<k>/`:

- `probs.npy`: (R, 1000) probabilities of fold k's usable rows, in manifest order;
- `seen.npy`: the manifest rows the training loop actually fed the model (np.packbits of N bools);
  `oof` refuses to assemble a fold whose model saw any row it predicts;
- `log.json`: what was trained on what (folds, row counts and digests, settings, per-epoch loss);
- `model.safetensors`: the weights that made the predictions (the EMA when enabled).

Checkpoints live in `data/oof/<split>/<model>/.fold-<k>.partial/` (outside the DVC output, which
DVC deletes before a re-run): a killed run resumes there; the output folder appears, atomically,
only when complete. With `train.launch` asking for several processes the stage re-runs itself
under `torchrun` (DDP).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from stages.cli import describe, run_as_script
from stages.contracts.params import load_params
from stages.modelling.launch import launch_or_run
from stages.modelling.train_config import TrainConfig
from stages.modelling.training import train_fold


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `python -m stages.train --split S --model M --fold K [--params params.yaml]`."""
    parser = argparse.ArgumentParser(prog="imagenet-clean train", description=describe(__doc__))
    parser.add_argument("--split", required=True)
    parser.add_argument("--model", required=True, help="a key of params.yaml `models:`")
    parser.add_argument("--fold", required=True, type=int)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default=None, help="default: data/oof/<split>/<model>/fold-<k>")
    parser.add_argument("--timing", default=None, help="write per-epoch timings here (benchmarks)")
    args = parser.parse_args(argv)
    config = TrainConfig.from_params(load_params(args.params), args.split, args.model, args.fold)
    return launch_or_run(
        "stages.train",
        argv,
        config.launch,
        lambda: train_fold(config, out=args.out, timing=args.timing),
    )


if __name__ == "__main__":
    run_as_script(main)
