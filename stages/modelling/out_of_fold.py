"""Out-of-fold predictions: a model's K fold folders -> one predictions file in manifest order.

Every fold is checked before anything is written: its log describes this split, model and fold, its
predictions cover exactly the fold's usable rows of the current fold table, and the rows its
training loop fed the model (`seen.npy`) include none of them, so every row's prediction comes from
a model that never saw it. The folds are streamed into the file in row chunks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.contracts import formats
from stages.contracts.errors import InputError
from stages.contracts.sidecars import predictions_sidecar
from stages.method.scoring import accuracy, scan_model
from stages.modelling.folds import read_fold_log, read_seen

logger = logging.getLogger(__name__)

_SAME_IN_EVERY_FOLD = (
    "spec",
    "architecture",
    "init",
    "seed",
    "settings",
    "world_size",
    "preprocessing",
    "folds",
)


def _check_fold(
    folder: Path,
    log: dict[str, Any],
    *,
    split: str,
    model: str,
    fold: int,
    k: int,
    rows: np.ndarray,
    image_ids: np.ndarray,
    fold_of: np.ndarray,
) -> None:
    """Raise InputError unless a fold's output belongs here and its model never saw its rows."""
    rerun = f"re-run `dvc repro train@{split}-{model}-{fold}`"
    want = {"split": split, "model": model, "fold": fold, "folds": k, "n_rows": len(image_ids)}
    got = {key: log.get(key) for key in want}
    if got != want:
        raise InputError(f"{folder}/log.json describes {got}, expected {want}; {rerun}")
    if log.get("heldout_image_ids_sha256") != formats.image_ids_sha256(image_ids[rows]):
        raise InputError(
            f"{folder} predicts other rows than fold {fold} of the current fold table "
            f"({len(rows)} usable rows); {rerun}"
        )
    seen = read_seen(folder / "seen.npy", len(image_ids))
    leaked = np.flatnonzero(seen & (fold_of == fold))
    if len(leaked):
        raise InputError(
            f"{folder}: its model was trained on {len(leaked)} rows of fold {fold} "
            f"that it predicts (e.g. {image_ids[leaked[0]]}); {rerun}"
        )
    shape = np.load(folder / "probs.npy", mmap_mode="r").shape
    if shape != (len(rows), formats.NUM_CLASSES):
        raise InputError(
            f"{folder}/probs.npy has shape {shape}, expected ({len(rows)}, "
            f"{formats.NUM_CLASSES}); {rerun}"
        )


def assemble(
    manifest: pd.DataFrame,
    fold_of: np.ndarray,
    folders: Sequence[Path],
    out: Path,
    *,
    split: str,
    model: str,
) -> dict[str, Any]:
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
        raise InputError(
            f"the fold table of split {split!r} has {int(fold_of.max()) + 1} folds "
            f"(and {(usable & (fold_of < 0)).sum()} usable rows without one), params "
            f"`train.folds` {k}; re-run `dvc repro folds@{split}`"
        )
    logs, rows = [], []
    for fold, folder in enumerate(folders):
        rows.append(np.flatnonzero(usable & (fold_of == fold)))
        logs.append(read_fold_log(folder))
        _check_fold(
            folder,
            logs[-1],
            split=split,
            model=model,
            fold=fold,
            k=k,
            rows=rows[-1],
            image_ids=image_ids,
            fold_of=fold_of,
        )
    differ = [
        key for key in _SAME_IN_EVERY_FOLD if any(log.get(key) != logs[0].get(key) for log in logs)
    ]
    if differ:
        raise InputError(
            f"the fold models of {split}/{model} were trained differently ({differ}); "
            f"re-run `dvc repro train` for the stale folds"
        )
    dtype = np.load(folders[0] / "probs.npy", mmap_mode="r").dtype
    _stream(folders, rows, fold_of, out, dtype=dtype)
    top1, top5 = scan_model(
        np.load(out, mmap_mode="r"),
        usable=usable,
        source=str(out),
        desc=f"oof {split} {model} top-k",
    )
    scores = accuracy(top1, top5, manifest["label"], usable)
    first = logs[0]
    sidecar = predictions_sidecar(
        manifest,
        model=model,
        split=split,
        source="out-of-fold",
        dtype=dtype.name,
        view="full",
        spec=first["spec"],
        top1=scores["top1"],
        top5=scores["top5"],
        architecture=first["architecture"],
        preprocessing=first["preprocessing"],
        folds=k,
        seed=first["seed"],
        init=first["init"],
        settings=first["settings"],
        world_size=first["world_size"],
        fold_models=[
            {
                key: log[key]
                for key in (
                    "fold",
                    "trained_folds",
                    "n_train",
                    "n_seen",
                    "n_heldout",
                    "weights_sha256",
                    "seen_sha256",
                    "train_image_ids_sha256",
                    "heldout_image_ids_sha256",
                )
            }
            for log in logs
        ],
    )
    formats.write_json(sidecar, out.with_suffix(".json"))
    logger.info(
        "oof %s %s: %d folds, top-1 %s, top-5 %s (out-of-fold, manifest labels)",
        split,
        model,
        k,
        sidecar["top1"],
        sidecar["top5"],
    )
    return sidecar


def _stream(
    folders: Sequence[Path],
    rows: Sequence[np.ndarray],
    fold_of: np.ndarray,
    out: Path,
    *,
    dtype: np.dtype,
) -> None:
    """Write `out` in manifest order, formats.CHUNK_ROWS rows at a time (NaN rows where no fold
    predicts)."""
    n = len(fold_of)
    position = np.zeros(n, dtype=np.int64)
    for fold_rows in rows:
        position[fold_rows] = np.arange(len(fold_rows))
    probs = [np.load(folder / "probs.npy", mmap_mode="r") for folder in folders]
    with formats.atomic_path(out) as tmp:
        result = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=dtype, shape=(n, formats.NUM_CLASSES)
        )
        for start in range(0, n, formats.CHUNK_ROWS):
            stop = min(n, start + formats.CHUNK_ROWS)
            block = np.full((stop - start, formats.NUM_CLASSES), np.nan, dtype=dtype)
            for fold, fold_probs in enumerate(probs):
                inside = np.flatnonzero(fold_of[start:stop] == fold)
                if len(inside):
                    block[inside] = fold_probs[position[start + inside]]
            result[start:stop] = block
        result.flush()
        del result
