"""retrain_report: the Table 2 scores of the two retrain arms (original and cleaned labels of the
eval split, the human reference), from arm folders written here (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages.contracts import formats
from stages.contracts.errors import InputError, MissingInputError
from stages.modelling.train_config import arm_dir
from stages.retrain_report import run_report


def _write_arm(arm: str, predicted: np.ndarray, image_ids: list[str], **log: object) -> None:
    """An arm folder as `retrain@<arm>` writes it: probs.npy (0.9 on `predicted`), log.json."""
    probs = np.full((len(predicted), 1000), 0.1 / 999, dtype=np.float32)
    probs[np.arange(len(predicted)), predicted] = 0.9
    folder = arm_dir(arm)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "probs.npy", probs)
    formats.write_json(
        {
            "model": "resnet10t",
            "spec": "resnet10t",
            "seed": 0,
            "world_size": 1,
            "settings": {"epochs": 2},
            "n_train": 2,
            "eval_image_ids_sha256": formats.image_ids_sha256(image_ids),
            **log,
        },
        folder / "log.json",
    )


def test_report_scores_both_arms_on_unseen_rows_with_both_label_sets(
    project: pd.DataFrame, params: dict
) -> None:
    params["retrain"] = {"split": "train_demo", "eval_split": "val", "model": "resnet10t"}
    params["evaluate"]["reference_labels"] = None
    ids = project["image_id"].tolist()[2:]  # rows 2..5: unseen, usable
    labels = project["label"].to_numpy()[2:]
    fixed = labels.copy()
    fixed[1] = (fixed[1] + 1) % 1000
    _write_arm("original", labels, ids, n_train=2)
    _write_arm("cleaned", fixed, ids, n_train=1)
    metrics = run_report(params)
    assert metrics == json.loads(Path("metrics/retrain.json").read_text())
    assert metrics["eval_rows"] == 4 and metrics["eval_rows_in_train_split"] == 1
    assert metrics["original"]["val_original"] == {"top1": 100.0, "top5": 100.0, "n": 4}
    assert metrics["original"]["val_cleaned"]["top1"] == pytest.approx(200 / 3, abs=1e-3)
    assert metrics["cleaned"]["val_original"]["top1"] == 75.0
    assert metrics["cleaned"]["val_cleaned"] == {"top1": 100.0, "top5": 100.0, "n": 3}
    assert metrics["cleaned"]["train_rows"] == 1 and metrics["cleaned"]["reference"] is None
    assert metrics["delta_top1"] == {
        "val_original": -25.0,
        "val_cleaned": pytest.approx(100 / 3, abs=1e-3),
    }


def test_arms_trained_differently_or_missing_are_refused(
    project: pd.DataFrame, params: dict
) -> None:
    params["retrain"] = {"split": "train_demo", "eval_split": "val", "model": "resnet10t"}
    ids = project["image_id"].tolist()[2:]
    labels = project["label"].to_numpy()[2:]
    _write_arm("original", labels, ids)
    with pytest.raises(MissingInputError, match=r"retrain outputs missing for \['cleaned'\]"):
        run_report(params)
    _write_arm("cleaned", labels, ids, seed=1)
    with pytest.raises(InputError, match=r"differ in \['seed'\]"):
        run_report(params)
    _write_arm("original", labels, ids[:3], seed=1)
    _write_arm("cleaned", labels, ids[:3], seed=1)
    with pytest.raises(InputError, match="score other rows than the eval split now has"):
        run_report(params)
    assert not Path("metrics/retrain.json").exists()
