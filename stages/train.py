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
import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import timm
import torch
from safetensors.torch import load_file, save_file

from stages.contracts import formats
from stages.cli import run_as_script
from stages.folds import check_out_of_fold_split, fold_dir, read_folds
from stages.contracts.labels import current_labels
from stages.modelling.models import ModelSpec, create_model, model_specs
from stages.contracts.params import load_params, split_params
from stages.modelling.distributed import Dist, distributed, launch_or_run
from stages.modelling.train_config import TrainSettings, settings_from_params
from stages.modelling.trainer import Job, Trained, fit, predict_rows

logger = logging.getLogger(__name__)

FILES = ("probs.npy", "seen.npy", "log.json", "model.safetensors")


def work_dir(out: Path) -> Path:
    """The checkpoint folder of an output folder: a hidden sibling DVC leaves alone."""
    return out.parent / f".{out.name}.partial"


def fold_rows(fold_of: np.ndarray, active: np.ndarray, usable: np.ndarray, fold: int
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


def fold_log(split: str, model: str, fold: int, k: int, job: Job, trained: Trained,
             heldout: np.ndarray, image_ids: np.ndarray, settings: TrainSettings, ctx: Dist,
             init_spec: str) -> dict[str, Any]:
    """What `log.json` records about a finished fold."""
    return {
        "split": split, "model": model, "fold": fold, "folds": k,
        "trained_folds": [f for f in range(k) if f != fold], "spec": init_spec,
        "architecture": trained.architecture, "init": settings.init, "seed": job.seed,
        "settings": settings.numeric(), "world_size": ctx.world, "device": ctx.device.type,
        "n_rows": len(image_ids), "n_train": len(job.train_rows),
        "train_image_ids_sha256": formats.image_ids_sha256(image_ids[job.train_rows]),
        "n_seen": int(trained.seen.sum()), "n_heldout": len(heldout),
        "heldout_image_ids_sha256": formats.image_ids_sha256(image_ids[heldout]),
        "preprocessing": trained.eval_config, "steps": trained.steps,
        "resumed_at_step": trained.resumed_at, "epochs": trained.history,
        "torch": torch.__version__, "timm": timm.__version__,
    }


def train_fold(split: str, model: str, fold: int, params: dict[str, Any], *,
               manifest_path: str | Path | None = None, folds_path: str | Path | None = None,
               out: str | Path | None = None, timing: str | Path | None = None
               ) -> dict[str, Any] | None:
    """Train one fold model and write its folder; returns the log (None on processes > 0).
    `timing`: also write this process's per-epoch seconds and images/s there (benchmarks; kept
    out of the output folder, whose bytes depend only on the inputs)."""
    check_out_of_fold_split(params, split)
    settings, launch, seed = settings_from_params(params)
    entry = split_params(params, split)
    spec = model_specs(params, [model])[0]
    manifest = formats.read_manifest(split, path=manifest_path)
    fold_of = read_folds(split, manifest, path=folds_path)
    k = int(fold_of.max()) + 1
    if not 0 <= fold < k:
        raise ValueError(f"fold {fold} is outside 0..{k - 1} of the fold table of split {split!r}")
    current = current_labels(manifest, entry.get("labels"))
    usable = manifest["skip_reason"].isna().to_numpy()
    train_rows, heldout = fold_rows(fold_of, current.active, usable, fold)
    out = Path(out or fold_dir(split, model, fold))
    image_ids = manifest["image_id"].to_numpy(dtype=str)
    job = Job(f"{split}/{model}/fold-{fold}", spec, Path(entry["root"]),
              manifest["path"].fillna("").tolist(), current.label, train_rows, seed, work_dir(out),
              {"manifest_image_ids_sha256": formats.image_ids_sha256(image_ids),
               "fold": fold, "folds": k, "init": settings.init})
    job.work.mkdir(parents=True, exist_ok=True)
    logger.info("train %s: %d training rows (folds %s), %d held-out rows, %s", job.name,
                len(train_rows), [f for f in range(k) if f != fold], len(heldout), settings)
    with distributed(settings, launch) as ctx:
        trained = fit(job, settings, ctx)
        if trained.seen[heldout].any():
            raise RuntimeError(f"{job.name}: the training loop fed held-out rows to the model")
        probs = job.work / "heldout.npy"
        predict_rows(trained, job, heldout, probs, settings=settings, ctx=ctx)
        if not ctx.is_main:
            return None
        log = fold_log(split, model, fold, k, job, trained, heldout, image_ids, settings, ctx,
                       spec.spec)
        write_outputs(out, trained, probs, log)
    shutil.rmtree(job.work, ignore_errors=True)
    logger.info("train %s: wrote %s (%d rows seen, %d predicted)", job.name, out,
                log["n_seen"], log["n_heldout"])
    if timing is not None:
        formats.write_json({"epochs": trained.timings, "steps": trained.steps}, timing)
    return log


def load_fold_model(spec: ModelSpec, folder: str | Path, *, device: str | torch.device = "cpu"
                    ) -> torch.nn.Module:
    """The eval-mode model whose predictions a fold (or retrain) folder holds: the architecture
    of `spec` with the folder's `model.safetensors` (e.g. to explain a row of fold k with the
    model that predicted it)."""
    kwargs = {**spec.kwargs, "num_classes": formats.NUM_CLASSES}
    model = create_model(dataclasses.replace(spec, pretrained=False, kwargs=kwargs), device=device)
    model.load_state_dict(load_file(str(Path(folder) / "model.safetensors"), device=str(device)))
    return model.eval()


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `python -m stages.train --split S --model M --fold K [--params params.yaml]`."""
    parser = argparse.ArgumentParser(prog="imagenet-clean train", description=__doc__.splitlines()[0])
    parser.add_argument("--split", required=True)
    parser.add_argument("--model", required=True, help="a key of params.yaml `models:`")
    parser.add_argument("--fold", required=True, type=int)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default=None, help="default: data/oof/<split>/<model>/fold-<k>")
    parser.add_argument("--timing", default=None, help="write per-epoch timings here (benchmarks)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    _, launch, _ = settings_from_params(params)
    return launch_or_run("stages.train", argv, launch,
                         lambda: train_fold(args.split, args.model, args.fold, params, out=args.out,
                                            timing=args.timing))


if __name__ == "__main__":
    run_as_script(main)
