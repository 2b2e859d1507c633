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
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from stages.contracts import formats
from stages.cli import run_as_script
from stages.contracts.errors import InputError
from stages.evaluate import accuracy, scan_model
from stages.folds import (check_out_of_fold_split, fold_count, fold_dir, read_fold_log,
                           read_folds, read_seen)
from stages.contracts.params import load_params
from stages.contracts.sidecars import predictions_sidecar

logger = logging.getLogger(__name__)

CHUNK_ROWS = 16384
_SAME_IN_EVERY_FOLD = ("spec", "architecture", "init", "seed", "settings", "world_size",
                       "preprocessing", "folds")


def _check_fold(folder: Path, log: dict[str, Any], *, split: str, model: str, fold: int,
                k: int, rows: np.ndarray, image_ids: np.ndarray, fold_of: np.ndarray) -> None:
    """Raise InputError unless a fold's output belongs here and its model never saw its rows."""
    rerun = f"re-run `dvc repro train@{split}-{model}-{fold}`"
    want = {"split": split, "model": model, "fold": fold, "folds": k, "n_rows": len(image_ids)}
    got = {key: log.get(key) for key in want}
    if got != want:
        raise InputError(f"{folder}/log.json describes {got}, expected {want}; {rerun}")
    if log.get("heldout_image_ids_sha256") != formats.image_ids_sha256(image_ids[rows]):
        raise InputError(f"{folder} predicts other rows than fold {fold} of the current fold table "
                         f"({len(rows)} usable rows); {rerun}")
    seen = read_seen(folder / "seen.npy", len(image_ids))
    leaked = np.flatnonzero(seen & (fold_of == fold))
    if len(leaked):
        raise InputError(f"{folder}: its model was trained on {len(leaked)} rows of fold {fold} "
                         f"that it predicts (e.g. {image_ids[leaked[0]]}); {rerun}")
    shape = np.load(folder / "probs.npy", mmap_mode="r").shape
    if shape != (len(rows), formats.NUM_CLASSES):
        raise InputError(f"{folder}/probs.npy has shape {shape}, expected ({len(rows)}, "
                         f"{formats.NUM_CLASSES}); {rerun}")


def assemble(manifest: pd.DataFrame, fold_of: np.ndarray, folders: Sequence[Path], out: Path, *,
             split: str, model: str) -> dict[str, Any]:
    """Check the K fold folders and stream them into `out` -> the sidecar (also written).

    Args:
        manifest: (N rows) the split's manifest.
        fold_of: (N,) int fold of each row, -1 on skip rows (folds.read_folds).
        folders: the K fold folders, fold order.
    """
    k = len(folders)
    image_ids = manifest["image_id"].to_numpy(dtype=str)
    usable = manifest["skip_reason"].isna().to_numpy()
    if int(fold_of.max()) + 1 != k or (usable & (fold_of < 0)).any():
        raise InputError(f"the fold table of split {split!r} has {int(fold_of.max()) + 1} folds "
                         f"(and {(usable & (fold_of < 0)).sum()} usable rows without one), params "
                         f"`train.folds` {k}; re-run `dvc repro folds@{split}`")
    logs, rows = [], []
    for fold, folder in enumerate(folders):
        rows.append(np.flatnonzero(usable & (fold_of == fold)))
        logs.append(read_fold_log(folder))
        _check_fold(folder, logs[-1], split=split, model=model, fold=fold, k=k, rows=rows[-1],
                    image_ids=image_ids, fold_of=fold_of)
    differ = [key for key in _SAME_IN_EVERY_FOLD if any(log.get(key) != logs[0].get(key)
                                                          for log in logs)]
    if differ:
        raise InputError(f"the fold models of {split}/{model} were trained differently ({differ}); "
                         f"re-run `dvc repro train` for the stale folds")
    dtype = np.load(folders[0] / "probs.npy", mmap_mode="r").dtype
    _stream(folders, rows, fold_of, out, dtype=dtype)
    top1, top5 = scan_model(np.load(out, mmap_mode="r"), usable=usable, source=str(out),
                            desc=f"oof {split} {model} top-k")
    scores = accuracy(top1, top5, manifest["label"], usable)
    first = logs[0]
    sidecar = predictions_sidecar(
        manifest, model=model, split=split, source="out-of-fold", dtype=dtype.name,
        spec=first["spec"], top1=scores["top1"], top5=scores["top5"],
        architecture=first["architecture"], preprocessing=first["preprocessing"],
        folds=k, seed=first["seed"], init=first["init"], settings=first["settings"],
        world_size=first["world_size"],
        fold_models=[{key: log[key] for key in (
            "fold", "trained_folds", "n_train", "n_seen", "n_heldout", "weights_sha256",
            "seen_sha256", "train_image_ids_sha256", "heldout_image_ids_sha256")} for log in logs])
    formats.write_json(sidecar, out.with_suffix(".json"))
    logger.info("oof %s %s: %d folds, top-1 %s, top-5 %s (out-of-fold, manifest labels)", split,
                model, k, sidecar["top1"], sidecar["top5"])
    return sidecar


def _stream(folders: Sequence[Path], rows: Sequence[np.ndarray], fold_of: np.ndarray, out: Path, *,
            dtype: np.dtype) -> None:
    """Write `out` in manifest order, CHUNK_ROWS at a time (NaN rows where no fold predicts)."""
    n = len(fold_of)
    position = np.zeros(n, dtype=np.int64)
    for fold_rows in rows:
        position[fold_rows] = np.arange(len(fold_rows))
    probs = [np.load(folder / "probs.npy", mmap_mode="r") for folder in folders]
    with formats.atomic_path(out) as tmp:
        result = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(n, formats.NUM_CLASSES))
        for start in range(0, n, CHUNK_ROWS):
            stop = min(n, start + CHUNK_ROWS)
            block = np.full((stop - start, formats.NUM_CLASSES), np.nan, dtype=dtype)
            for fold, fold_probs in enumerate(probs):
                inside = np.flatnonzero(fold_of[start:stop] == fold)
                if len(inside):
                    block[inside] = fold_probs[position[start + inside]]
            result[start:stop] = block
        result.flush()
        del result


def run_oof(split: str, model: str, params: dict[str, Any], *,
            manifest_path: str | Path | None = None, folds_path: str | Path | None = None,
            out: str | Path | None = None) -> dict[str, Any]:
    """The DVC stage for one (split, model) -> the sidecar."""
    check_out_of_fold_split(params, split)
    k = fold_count(params)
    manifest = formats.read_manifest(split, path=manifest_path)
    fold_of = read_folds(split, manifest, path=folds_path)
    folders = [fold_dir(split, model, fold) for fold in range(k)]
    return assemble(manifest, fold_of, folders, Path(out or formats.predictions_path(split, model)),
                    split=split, model=model)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `python -m stages.oof --split S --model M [--params params.yaml]`."""
    parser = argparse.ArgumentParser(prog="imagenet-clean oof", description=__doc__.splitlines()[0])
    parser.add_argument("--split", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    run_oof(args.split, args.model, load_params(args.params))
    return 0


if __name__ == "__main__":
    run_as_script(main)
