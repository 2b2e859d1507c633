"""`retrain` stage: the paper's Table 2 arms, one architecture on original vs cleaned labels.

`retrain@original` and `retrain@cleaned` train `retrain.model` on the train split `retrain.split`
with `train.settings` (updated by `retrain.settings`, the same for both arms) and the same seed:

- `original`: every usable row of the split with its manifest label (ImageNet's own);
- `cleaned`: the rows of `data/clean/<split>.parquet` with their cleaned labels (removed rows gone,
  fixes applied; merge placeholders, which have no image, left out).

Each arm predicts the usable rows of `retrain.eval_split` that are not in the train split (an image
the model trained on is never scored) and writes `data/retrain/<arm>/` (probs.npy, seen.npy,
log.json, model.safetensors; resumable like `train`, and launched under torchrun like it).
`stages.retrain_report` scores both arms -> `metrics/retrain.json`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from stages.cli import describe, run_as_script
from stages.contracts.params import load_params
from stages.modelling.launch import launch_or_run
from stages.modelling.train_config import ARMS, RetrainConfig
from stages.modelling.training import train_arm


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `python -m stages.retrain --arm original|cleaned [--params params.yaml]`."""
    parser = argparse.ArgumentParser(prog="imagenet-clean retrain", description=describe(__doc__))
    parser.add_argument("--arm", required=True, choices=ARMS)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    config = RetrainConfig.from_params(load_params(args.params))
    return launch_or_run("stages.retrain", argv, config.launch, lambda: train_arm(config, args.arm))


if __name__ == "__main__":
    run_as_script(main)
