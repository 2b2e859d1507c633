"""Training runs of the train side: fold models (out-of-fold predictions) and retrain arms.

`train_fold` trains one model on the other folds of a split and predicts its own fold;
`train_arm` trains one retrain arm (original or cleaned labels) and predicts the eval split. Both
resume from a work folder beside their output (outside it: DVC deletes outputs before a re-run)
and swap the finished folder into place atomically (`write_outputs`).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import timm
import torch
from safetensors.torch import load_file, save_file

from stages.contracts import formats
from stages.contracts.errors import InputError
from stages.contracts.labels import current_labels
from stages.modelling.distributed import Dist, distributed
from stages.modelling.folds import fold_dir, read_folds
from stages.modelling.models import create_model
from stages.modelling.specs import ModelSpec
from stages.modelling.train_config import (
    ARMS,
    RetrainConfig,
    TrainConfig,
    TrainSettings,
    arm_dir,
    eval_rows,
)
from stages.modelling.trainer import Job, Trained, fit, predict_rows

logger = logging.getLogger(__name__)

FILES = ("probs.npy", "seen.npy", "log.json", "model.safetensors")


def work_dir(out: Path) -> Path:
    """The checkpoint folder of an output folder: a hidden sibling DVC leaves alone."""
    return out.parent / f".{out.name}.partial"


def fold_rows(
    fold_of: np.ndarray, active: np.ndarray, usable: np.ndarray, fold: int
) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows) of one fold: active rows of the other folds; usable rows
    of this fold."""
    train = np.flatnonzero(active & (fold_of >= 0) & (fold_of != fold))
    heldout = np.flatnonzero(usable & (fold_of == fold))
    return train, heldout


def write_outputs(out: Path, trained: Trained, probs: Path, log: dict[str, Any]) -> None:
    """Swap a finished run's folder into place (process 0 only): `probs` moved in as probs.npy,
    seen.npy, model.safetensors and log.json (with the digests of the other two added)."""
    with formats.atomic_folder(out) as tmp:
        shutil.move(probs, tmp / "probs.npy")
        formats.write_npy(np.packbits(trained.seen), tmp / "seen.npy")
        weights = {k: v.detach().cpu().contiguous() for k, v in trained.model.state_dict().items()}
        with formats.atomic_path(tmp / "model.safetensors") as path:
            save_file(weights, str(path))
        log["weights_sha256"] = formats.file_sha256(tmp / "model.safetensors")
        log["seen_sha256"] = formats.file_sha256(tmp / "seen.npy")
        formats.write_json(log, tmp / "log.json")


def fold_log(
    split: str,
    model: str,
    fold: int,
    k: int,
    job: Job,
    trained: Trained,
    heldout: np.ndarray,
    image_ids: np.ndarray,
    settings: TrainSettings,
    ctx: Dist,
    init_spec: str,
) -> dict[str, Any]:
    """What `log.json` records about a finished fold."""
    return {
        "split": split,
        "model": model,
        "fold": fold,
        "folds": k,
        "trained_folds": [f for f in range(k) if f != fold],
        "spec": init_spec,
        "architecture": trained.architecture,
        "init": settings.init,
        "seed": job.seed,
        "settings": settings.numeric(),
        "world_size": ctx.world,
        "device": ctx.device.type,
        "n_rows": len(image_ids),
        "n_train": len(job.train_rows),
        "train_image_ids_sha256": formats.image_ids_sha256(image_ids[job.train_rows]),
        "n_seen": int(trained.seen.sum()),
        "n_heldout": len(heldout),
        "heldout_image_ids_sha256": formats.image_ids_sha256(image_ids[heldout]),
        "preprocessing": trained.eval_config,
        "steps": trained.steps,
        "resumed_at_step": trained.resumed_at,
        "epochs": trained.history,
        "torch": torch.__version__,
        "timm": timm.__version__,
    }


def train_fold(
    config: TrainConfig,
    *,
    manifest_path: str | Path | None = None,
    folds_path: str | Path | None = None,
    out: str | Path | None = None,
    timing: str | Path | None = None,
) -> dict[str, Any] | None:
    """Train one fold model and write its folder; returns the log (None on processes > 0).
    `timing`: also write this process's per-epoch seconds and images/s there (benchmarks; kept
    out of the output folder, whose bytes depend only on the inputs)."""
    split, fold, settings = config.split, config.fold, config.settings
    manifest = formats.read_manifest(split, path=manifest_path)
    fold_of = read_folds(split, manifest, path=folds_path)
    k = int(fold_of.max()) + 1
    if not 0 <= fold < k:
        raise ValueError(f"fold {fold} is outside 0..{k - 1} of the fold table of split {split!r}")
    current = current_labels(manifest, config.labels)
    usable = manifest["skip_reason"].isna().to_numpy()
    train_rows, heldout = fold_rows(fold_of, current.active, usable, fold)
    out = Path(out or fold_dir(split, config.spec.name, fold))
    image_ids = manifest["image_id"].to_numpy(dtype=str)
    job = Job(
        f"{split}/{config.spec.name}/fold-{fold}",
        config.spec,
        Path(config.root),
        manifest["path"].fillna("").tolist(),
        current.label,
        train_rows,
        config.seed,
        work_dir(out),
        {
            "manifest_image_ids_sha256": formats.image_ids_sha256(image_ids),
            "fold": fold,
            "folds": k,
            "init": settings.init,
        },
    )
    job.work.mkdir(parents=True, exist_ok=True)
    logger.info(
        "train %s: %d training rows (folds %s), %d held-out rows, %s",
        job.name,
        len(train_rows),
        [f for f in range(k) if f != fold],
        len(heldout),
        settings,
    )
    with distributed(config.launch, device=settings.device, threads=settings.threads) as ctx:
        trained = fit(job, settings, ctx)
        if trained.seen[heldout].any():
            raise RuntimeError(f"{job.name}: the training loop fed held-out rows to the model")
        probs = job.work / "heldout.npy"
        predict_rows(trained, job, heldout, probs, settings=settings, ctx=ctx)
        if not ctx.is_main:
            return None
        log = fold_log(
            split,
            config.spec.name,
            fold,
            k,
            job,
            trained,
            heldout,
            image_ids,
            settings,
            ctx,
            config.spec.spec,
        )
        write_outputs(out, trained, probs, log)
    shutil.rmtree(job.work, ignore_errors=True)
    logger.info(
        "train %s: wrote %s (%d rows seen, %d predicted)",
        job.name,
        out,
        log["n_seen"],
        log["n_heldout"],
    )
    if timing is not None:
        formats.write_json({"epochs": trained.timings, "steps": trained.steps}, timing)
    return log


def load_fold_model(
    spec: ModelSpec, folder: str | Path, *, device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """The eval-mode model whose predictions a fold (or retrain) folder holds: the architecture
    of `spec` with the folder's `model.safetensors` (e.g. to explain a row of fold k with the
    model that predicted it)."""
    kwargs = {**spec.kwargs, "num_classes": formats.NUM_CLASSES}
    model = create_model(dataclasses.replace(spec, pretrained=False, kwargs=kwargs), device=device)
    model.load_state_dict(load_file(str(Path(folder) / "model.safetensors"), device=str(device)))
    return model.eval()


def arm_labels(
    arm: str, manifest: pd.DataFrame, *, clean: pd.DataFrame | None = None
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
        raise ValueError(
            f"arm must be one of {ARMS} (cleaned needs the cleaned split), got {arm!r}"
        )
    kept = clean[~clean["placeholder"].astype(bool)]
    index = pd.Index(manifest["image_id"].astype(str))
    where = index.get_indexer(pd.Index(kept["image_id"].astype(str)))
    if (where < 0).any():
        raise InputError(
            f"the cleaned split names {int((where < 0).sum())} images that the "
            f"manifest lacks (e.g. {kept['image_id'].iloc[int(np.argmax(where < 0))]}); "
            "re-run `dvc repro decide`"
        )
    labels = np.full(len(manifest), -1, dtype=np.int64)
    labels[where] = kept["label"].to_numpy(np.int64)
    return np.where(usable, labels, -1)


def train_arm(config: RetrainConfig, arm: str) -> dict[str, Any] | None:
    """The retrain arm `arm`: train on its labels, predict the eval split -> the log (process 0);
    writes `data/retrain/<arm>/`."""
    settings = config.settings
    manifest = formats.read_manifest(config.split)
    clean = (
        formats.read_table(formats.clean_path(config.split), what="cleaned split")
        if arm == "cleaned"
        else None
    )
    labels = arm_labels(arm, manifest, clean=clean)
    train_rows = np.flatnonzero(labels >= 0)
    evaluated = formats.read_manifest(config.eval_split)
    rows, excluded = eval_rows(evaluated, manifest["image_id"])
    if not len(rows):
        raise InputError(
            f"retrain: no usable row of split {config.eval_split!r} is left once the "
            f"images of {config.split!r} are set aside; set `retrain.eval_split` to a "
            "split that does not share all its images"
        )
    out = arm_dir(arm)
    image_ids = manifest["image_id"].to_numpy(dtype=str)
    job = Job(
        f"retrain/{arm}",
        config.spec,
        Path(config.root),
        manifest["path"].fillna("").tolist(),
        labels,
        train_rows,
        config.seed,
        work_dir(out),
        {"arm": arm, "manifest_image_ids_sha256": formats.image_ids_sha256(image_ids)},
    )
    job.work.mkdir(parents=True, exist_ok=True)
    logger.info(
        "retrain %s: %s on %d rows of %s, scored on %d rows of %s (%d left out: in the "
        "train split)",
        arm,
        config.model,
        len(train_rows),
        config.split,
        len(rows),
        config.eval_split,
        excluded,
    )
    with distributed(config.launch, device=settings.device, threads=settings.threads) as ctx:
        trained = fit(job, settings, ctx)
        probs = job.work / "eval.npy"
        predict_rows(
            trained,
            job,
            rows,
            probs,
            settings=settings,
            ctx=ctx,
            root=Path(config.eval_root),
            paths=evaluated["path"].fillna("").tolist(),
        )
        if not ctx.is_main:
            return None
        log = {
            "arm": arm,
            "model": config.model,
            "spec": config.spec.spec,
            "split": config.split,
            "eval_split": config.eval_split,
            "seed": config.seed,
            "settings": settings.numeric(),
            "world_size": ctx.world,
            "n_train": len(train_rows),
            "n_seen": int(trained.seen.sum()),
            "n_eval": len(rows),
            "eval_excluded": excluded,
            "eval_image_ids_sha256": formats.image_ids_sha256(
                evaluated["image_id"].to_numpy(dtype=str)[rows]
            ),
            "train_image_ids_sha256": formats.image_ids_sha256(image_ids[train_rows]),
            "architecture": trained.architecture,
            "preprocessing": trained.eval_config,
            "steps": trained.steps,
            "resumed_at_step": trained.resumed_at,
            "epochs": trained.history,
        }
        write_outputs(out, trained, probs, log)
    shutil.rmtree(job.work, ignore_errors=True)
    return log
