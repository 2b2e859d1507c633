"""`retrain` stage: the two arms of the paper's Table 2, one architecture on original vs cleaned labels.

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
import logging
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from stages.contracts import formats
from stages.cli import run_as_script
from stages.modelling.distributed import distributed, launch_or_run
from stages.contracts.errors import InputError
from stages.modelling.models import model_specs
from stages.contracts.params import load_params, split_params
from stages.train import work_dir, write_outputs
from stages.modelling.train_config import ARMS, arm_dir, eval_rows, retrain_config, settings_from_params
from stages.modelling.trainer import Job, fit, predict_rows

logger = logging.getLogger(__name__)


def arm_labels(arm: str, manifest: pd.DataFrame, *, clean: pd.DataFrame | None = None
               ) -> np.ndarray:
    """(N,) int64 training label of each manifest row for one arm, -1 where the arm leaves it out.

    Raises:
        InputError: the cleaned split names images the manifest does not have.
    """
    usable = manifest["skip_reason"].isna().to_numpy()
    original = pd.to_numeric(manifest["label"], errors="coerce").fillna(-1).to_numpy(np.int64)
    if arm == "original":
        return np.where(usable, original, -1)
    if arm != "cleaned" or clean is None:
        raise ValueError(f"arm must be one of {ARMS} (cleaned needs the cleaned split), got {arm!r}")
    kept = clean[~clean["placeholder"].astype(bool)]
    index = pd.Index(manifest["image_id"].astype(str))
    where = index.get_indexer(kept["image_id"].astype(str))
    if (where < 0).any():
        raise InputError(f"the cleaned split names {int((where < 0).sum())} images that the "
                         f"manifest lacks (e.g. {kept['image_id'].iloc[int(np.argmax(where < 0))]}); "
                         "re-run `dvc repro decide`")
    labels = np.full(len(manifest), -1, dtype=np.int64)
    labels[where] = kept["label"].to_numpy(np.int64)
    return np.where(usable, labels, -1)


def run_arm(arm: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """The DVC stage `retrain@<arm>`: train, predict the eval split -> the log (process 0)."""
    config = retrain_config(params)
    settings, launch, seed = settings_from_params(params, overrides=config.settings)
    spec = model_specs(params, [config.model])[0]
    manifest = formats.read_manifest(config.split)
    clean = formats.read_table(formats.clean_path(config.split), what="cleaned split") \
        if arm == "cleaned" else None
    labels = arm_labels(arm, manifest, clean=clean)
    train_rows = np.flatnonzero(labels >= 0)
    evaluated = formats.read_manifest(config.eval_split)
    rows, excluded = eval_rows(evaluated, manifest["image_id"])
    if not len(rows):
        raise InputError(f"retrain: no usable row of split {config.eval_split!r} is left once the "
                         f"images of {config.split!r} are set aside; set `retrain.eval_split` to a "
                         "split that does not share all its images")
    out = arm_dir(arm)
    image_ids = manifest["image_id"].to_numpy(dtype=str)
    job = Job(f"retrain/{arm}", spec, Path(split_params(params, config.split)["root"]),
              manifest["path"].fillna("").tolist(), labels, train_rows, seed,
              work_dir(out),
              {"arm": arm, "manifest_image_ids_sha256": formats.image_ids_sha256(image_ids)})
    job.work.mkdir(parents=True, exist_ok=True)
    logger.info("retrain %s: %s on %d rows of %s, scored on %d rows of %s (%d left out: in the "
                "train split)", arm, config.model, len(train_rows), config.split, len(rows),
                config.eval_split, excluded)
    with distributed(settings, launch) as ctx:
        trained = fit(job, settings, ctx)
        probs = job.work / "eval.npy"
        predict_rows(trained, job, rows, probs, settings=settings, ctx=ctx,
                     root=Path(split_params(params, config.eval_split)["root"]),
                     paths=evaluated["path"].fillna("").tolist())
        if not ctx.is_main:
            return None
        log = {"arm": arm, "model": config.model, "spec": spec.spec, "split": config.split,
               "eval_split": config.eval_split, "seed": seed, "settings": settings.numeric(),
               "world_size": ctx.world, "n_train": len(train_rows),
               "n_seen": int(trained.seen.sum()), "n_eval": len(rows), "eval_excluded": excluded,
               "eval_image_ids_sha256": formats.image_ids_sha256(
                   evaluated["image_id"].to_numpy(dtype=str)[rows]),
               "train_image_ids_sha256": formats.image_ids_sha256(image_ids[train_rows]),
               "architecture": trained.architecture, "preprocessing": trained.eval_config,
               "steps": trained.steps, "resumed_at_step": trained.resumed_at,
               "epochs": trained.history}
        write_outputs(out, trained, probs, log)
    shutil.rmtree(job.work, ignore_errors=True)
    return log


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `python -m stages.retrain --arm original|cleaned [--params params.yaml]`."""
    parser = argparse.ArgumentParser(prog="imagenet-clean retrain", description=__doc__.splitlines()[0])
    parser.add_argument("--arm", required=True, choices=ARMS)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    config = retrain_config(params)
    _, launch, _ = settings_from_params(params, overrides=config.settings)
    return launch_or_run("stages.retrain", argv, launch, lambda: run_arm(args.arm, params))


if __name__ == "__main__":
    run_as_script(main)
