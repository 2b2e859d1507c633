"""The paper's Table 2: both retrain arms scored on the eval split's original labels, its cleaned
labels (the kept and fixed rows of its ledger) and, when the eval split has one, the human
reference (ReaL-style: a prediction is right when it is among the accepted classes; images without
any accepted class are not scored). Arms trained differently are refused. Torch-free.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.contracts import formats
from stages.contracts.actions import KEPT
from stages.contracts.errors import InputError, MissingInputError
from stages.contracts.splits import Params
from stages.method.references import load_reference, multi_label_top1, reference_file
from stages.method.scoring import accuracy, scan_model
from stages.modelling.train_config import ARMS, RetrainSection, arm_dir, eval_rows

logger = logging.getLogger(__name__)


def score(top1: np.ndarray, top5: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Top-1/top-5 (%) of an arm's top1 (R,) / top5 (R, 5) against labels (R,) float (NaN = not
    scored), and the count of scored rows."""
    scores = accuracy(top1, top5, labels, np.ones(len(labels), dtype=bool))
    return {"top1": scores["top1"], "top5": scores["top5"], "n": scores["rows"]}


def reference_top1(
    top1: np.ndarray, image_ids: Sequence[str], reference: Mapping[str, Collection[int]]
) -> dict[str, Any]:
    """ReaL top-1 (%): the top prediction is among the accepted classes (images with some)."""
    entries = [reference.get(i) for i in image_ids]
    return {
        "top1": multi_label_top1(top1, entries, np.ones(len(entries), dtype=bool)),
        "n": sum(1 for entry in entries if entry),
    }


def eval_labels(
    eval_split: str, evaluated: pd.DataFrame, rows: np.ndarray
) -> dict[str, np.ndarray]:
    """The eval rows' original labels and cleaned labels (NaN where the ledger removed or
    skipped the row), as float arrays."""
    original = pd.to_numeric(evaluated["label"], errors="coerce").to_numpy(
        np.float64, na_value=np.nan
    )
    ledger = formats.read_table(formats.ledger_path(eval_split), what=f"ledger of {eval_split!r}")
    if not np.array_equal(
        ledger["image_id"].to_numpy(dtype=str), evaluated["image_id"].to_numpy(dtype=str)
    ):
        raise InputError(
            f"the ledger of {eval_split!r} does not match its manifest; re-run "
            f"`dvc repro decide@{eval_split}`"
        )
    kept = ledger["action"].isin(KEPT).to_numpy()
    new = pd.to_numeric(ledger["new_label"], errors="coerce").to_numpy(np.float64, na_value=np.nan)
    return {"original": original[rows], "cleaned": np.where(kept, new, np.nan)[rows]}


@dataclass(frozen=True)
class RetrainReportConfig:
    """What the retrain report scores: `retrain.split`, `retrain.eval_split`, `retrain.model`
    and the eval split's human reference file (None without one)."""

    split: str
    eval_split: str
    model: str
    reference: Path | None

    @classmethod
    def from_params(cls, params: Params) -> RetrainReportConfig:
        """Raises ConfigError for a bad `retrain:` or `evaluate:` section."""
        own = RetrainSection.from_params(params)
        return cls(own.split, own.eval_split, own.model, reference_file(params, own.eval_split))


def retrain_report(config: RetrainReportConfig) -> dict[str, Any]:
    """Score both arms of the retrain comparison -> the figures of metrics/retrain.json."""
    logs = {
        arm: json.loads((arm_dir(arm) / "log.json").read_text())
        for arm in ARMS
        if (arm_dir(arm) / "log.json").is_file()
    }
    if len(logs) < len(ARMS):
        raise MissingInputError(
            f"retrain outputs missing for {sorted(set(ARMS) - set(logs))}; "
            "run `dvc repro retrain` first"
        )
    same = ("model", "spec", "seed", "settings", "world_size", "eval_image_ids_sha256")
    differ = [k for k in same if logs["original"].get(k) != logs["cleaned"].get(k)]
    if differ:
        raise InputError(f"the two retrain arms differ in {differ}; re-run `dvc repro retrain`")
    evaluated = formats.read_manifest(config.eval_split)
    rows, excluded = eval_rows(evaluated, formats.read_manifest(config.split)["image_id"])
    ids = evaluated["image_id"].to_numpy(dtype=str)[rows]
    if formats.image_ids_sha256(ids) != logs["original"]["eval_image_ids_sha256"]:
        raise InputError(
            "the retrain predictions score other rows than the eval split now has; "
            "re-run `dvc repro retrain`"
        )
    labels = eval_labels(config.eval_split, evaluated, rows)
    reference = load_reference(config.reference) if config.reference else None
    metrics: dict[str, Any] = {
        "model": config.model,
        "split": config.split,
        "eval_split": config.eval_split,
        "settings": logs["original"]["settings"],
        "seed": logs["original"]["seed"],
        "eval_rows": len(rows),
        "eval_rows_in_train_split": excluded,
        "reference_labels": str(config.reference) if config.reference else None,
    }
    for arm in ARMS:
        top1, top5 = scan_model(
            np.load(arm_dir(arm) / "probs.npy", mmap_mode="r"), desc=f"retrain score {arm}"
        )
        metrics[arm] = {
            "train_rows": logs[arm]["n_train"],
            **{f"{config.eval_split}_{k}": score(top1, top5, v) for k, v in labels.items()},
            "reference": reference_top1(top1, ids, reference) if reference else None,
        }
    metrics["delta_top1"] = {
        key: _delta(metrics["cleaned"][key]["top1"], metrics["original"][key]["top1"])
        for key in metrics["original"]
        if isinstance(metrics["original"][key], dict)
    }
    logger.info("retrain: %s", metrics["delta_top1"])
    return metrics


def _delta(cleaned: float | None, original: float | None) -> float | None:
    return None if cleaned is None or original is None else round(cleaned - original, 4)
