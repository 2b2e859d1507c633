"""`retrain` stages: the paper's Table 2, one architecture trained on original vs cleaned labels.

`retrain@original` and `retrain@cleaned` train `retrain.model` on the train split `retrain.split`
with `train.settings` (updated by `retrain.settings`, the same for both arms) and the same seed:

- `original`: every usable row of the split with its manifest label (ImageNet's own);
- `cleaned`: the rows of `data/clean/<split>.parquet` with their cleaned labels (removed rows gone,
  fixes applied; merge placeholders, which have no image, left out).

Each arm predicts the usable rows of `retrain.eval_split` that are not in the train split (an image
the model trained on is never scored) and writes `data/retrain/<arm>/` (probs.npy, seen.npy,
log.json, model.safetensors; resumable like `train`). `retrain-report` scores both on the eval
split's original labels, its cleaned labels (kept and fixed rows of its ledger) and, when
`evaluate.reference_labels` is set, the human reference (`stages.reference`; ReaL-style: a
prediction is right when it is among the accepted classes; images without any accepted class are
not scored) -> `metrics/retrain.json`.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Mapping, Sequence

import numpy as np
import pandas as pd

from stages import formats
from stages.cli import run_as_script
from stages.config import from_section
from stages.distributed import distributed, launched
from stages.errors import InputError, MissingInputError
from stages.models import model_specs
from stages.oof import top_accuracy
from stages.params import load_params, section, split_params
from stages.evaluate import scan_model
from stages.reference import load_reference
from stages.train import write_outputs
from stages.train_config import settings_from_params
from stages.trainer import Job, fit, predict_rows

logger = logging.getLogger(__name__)

ARMS = ("original", "cleaned")
RETRAIN_ROOT = Path("data/retrain")
METRICS = Path("metrics/retrain.json")


@dataclass(frozen=True)
class RetrainConfig:
    """params.yaml `retrain:`.

    Attributes:
        split: the train split whose original and cleaned labels are compared.
        eval_split: the split both models are scored on (its ledger gives the cleaned labels).
        model: a `models:` entry (the architecture; weights only with `init: pretrained`).
        settings: `train.settings` keys to change for both arms (e.g. more epochs).
    """

    split: str
    eval_split: str
    model: str
    settings: dict[str, Any] = field(default_factory=dict)


def retrain_config(params: dict[str, Any]) -> RetrainConfig:
    """The `retrain:` section, checked (its splits and model must be configured)."""
    config = from_section(RetrainConfig, section(params, "retrain"), where="retrain")
    split_params(params, config.split)
    split_params(params, config.eval_split)
    model_specs(params, [config.model])
    return config


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


def eval_rows(eval_manifest: pd.DataFrame, train_ids: Sequence[str]) -> tuple[np.ndarray, int]:
    """(usable eval rows whose image is not in the train split, how many were left out for it)."""
    usable = eval_manifest["skip_reason"].isna().to_numpy()
    shared = eval_manifest["image_id"].astype(str).isin(set(map(str, train_ids))).to_numpy()
    return np.flatnonzero(usable & ~shared), int((usable & shared).sum())


def arm_dir(arm: str) -> Path:
    return RETRAIN_ROOT / arm


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
              out.parent / f".{out.name}.partial",
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
        if not ctx.main:
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


def score(probs: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Top-1/top-5 (%) of probs (R, 1000) against labels (R,) float (NaN = not scored)."""
    top1, top5 = scan_model(probs, desc="retrain score")
    return top_accuracy(top1, top5, labels, np.ones(len(labels), dtype=bool))


def reference_top1(probs: np.ndarray, image_ids: Sequence[str],
                   reference: Mapping[str, Collection[int]]) -> dict[str, Any]:
    """ReaL top-1 (%): the top prediction is among the accepted classes (images with some)."""
    top1 = np.asarray(probs).argmax(axis=1)
    judged = [(int(t), reference[i]) for t, i in zip(top1, image_ids) if reference.get(i)]
    if not judged:
        return {"top1": None, "n": 0}
    return {"top1": round(100.0 * sum(t in ok for t, ok in judged) / len(judged), 4),
            "n": len(judged)}


def eval_labels(eval_split: str, evaluated: pd.DataFrame, rows: np.ndarray
                ) -> dict[str, np.ndarray]:
    """The eval rows' original labels and cleaned labels (NaN where the ledger removed or
    skipped the row), as float arrays."""
    original = pd.to_numeric(evaluated["label"], errors="coerce").to_numpy(np.float64, na_value=np.nan)
    ledger = formats.read_table(formats.ledger_path(eval_split), what=f"ledger of {eval_split!r}")
    if not np.array_equal(ledger["image_id"].to_numpy(dtype=str),
                          evaluated["image_id"].to_numpy(dtype=str)):
        raise InputError(f"the ledger of {eval_split!r} does not match its manifest; re-run "
                         f"`dvc repro decide@{eval_split}`")
    kept = ledger["action"].isin(["keep", "fix"]).to_numpy()
    new = pd.to_numeric(ledger["new_label"], errors="coerce").to_numpy(np.float64, na_value=np.nan)
    return {"original": original[rows], "cleaned": np.where(kept, new, np.nan)[rows]}


def run_report(params: dict[str, Any], *, out: Path | None = None) -> dict[str, Any]:
    """The DVC stage `retrain-report`: score both arms -> metrics/retrain.json."""
    config = retrain_config(params)
    logs = {arm: json.loads((arm_dir(arm) / "log.json").read_text()) for arm in ARMS
            if (arm_dir(arm) / "log.json").is_file()}
    if len(logs) < len(ARMS):
        raise MissingInputError(f"retrain outputs missing for {sorted(set(ARMS) - set(logs))}; "
                                "run `dvc repro retrain` first")
    same = ("model", "spec", "seed", "settings", "world_size", "eval_image_ids_sha256")
    differ = [k for k in same if logs["original"].get(k) != logs["cleaned"].get(k)]
    if differ:
        raise InputError(f"the two retrain arms differ in {differ}; re-run `dvc repro retrain`")
    evaluated = formats.read_manifest(config.eval_split)
    rows, excluded = eval_rows(evaluated, formats.read_manifest(config.split)["image_id"])
    ids = evaluated["image_id"].to_numpy(dtype=str)[rows]
    if formats.image_ids_sha256(ids) != logs["original"]["eval_image_ids_sha256"]:
        raise InputError("the retrain predictions score other rows than the eval split now has; "
                         "re-run `dvc repro retrain`")
    labels = eval_labels(config.eval_split, evaluated, rows)
    evaluate = params.get("evaluate") or {}
    reference_file = (str(Path(evaluate.get("references") or ".") / evaluate["reference_labels"])
                      if evaluate.get("reference_labels") else None)
    reference = load_reference(reference_file) if reference_file else None
    metrics: dict[str, Any] = {
        "model": config.model, "split": config.split, "eval_split": config.eval_split,
        "settings": logs["original"]["settings"], "seed": logs["original"]["seed"],
        "eval_rows": len(rows), "eval_rows_in_train_split": excluded,
        "reference_labels": reference_file}
    for arm in ARMS:
        probs = np.load(arm_dir(arm) / "probs.npy", mmap_mode="r")
        metrics[arm] = {"train_rows": logs[arm]["n_train"],
                        **{f"{config.eval_split}_{k}": score(probs, v) for k, v in labels.items()},
                        "reference": reference_top1(probs, ids, reference) if reference else None}
    metrics["delta_top1"] = {
        key: _delta(metrics["cleaned"][key]["top1"], metrics["original"][key]["top1"])
        for key in metrics["original"] if isinstance(metrics["original"][key], dict)}
    formats.write_json(metrics, out or METRICS)
    logger.info("retrain: %s", metrics["delta_top1"])
    return metrics


def _delta(cleaned: float | None, original: float | None) -> float | None:
    return None if cleaned is None or original is None else round(cleaned - original, 4)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `python -m stages.retrain --arm original|cleaned` or `--report`."""
    parser = argparse.ArgumentParser(prog="imagenet-clean retrain", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--arm", choices=ARMS)
    group.add_argument("--report", action="store_true", help="score both arms -> metrics/retrain.json")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    if args.report:
        run_report(params)
        return 0
    config = retrain_config(params)
    _, launch, _ = settings_from_params(params, overrides=config.settings)
    status = launched("stages.retrain", list(argv) if argv is not None else [], launch)
    if status is not None:
        return status
    run_arm(args.arm, params)
    return 0


if __name__ == "__main__":
    run_as_script(main)
