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
from stages.method.retrain_scoring import eval_labels, reference_top1, score
from stages.method.scoring import scan_model
from stages.modelling.train_config import arm_dir
from stages.retrain_report import run_report


def test_scores_count_only_scored_rows() -> None:
    probs = np.full((3, 1000), 1e-4, dtype=np.float32)
    probs[[0, 1, 2], [5, 6, 7]] = 0.9
    probs[1, 1] = 0.0  # below 999 classes: a miss
    top1, top5 = scan_model(probs)
    assert score(top1, top5, np.array([5.0, 1.0, np.nan])) == {"top1": 50.0, "top5": 50.0, "n": 2}
    reference = {"a": frozenset({5, 8}), "b": frozenset(), "c": frozenset({1})}
    assert reference_top1(top1, ["a", "b", "c"], reference) == {"top1": 50.0, "n": 2}


@pytest.fixture
def project(
    tmp_path: Path, small_manifest: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> pd.DataFrame:
    """In tmp_path: val = 6 demo rows (row 1 a skip row, row 0 also in train_demo) and its ledger
    (row 3 fixed to label + 1, row 4 removed); returns val's manifest."""
    monkeypatch.chdir(tmp_path)
    val = small_manifest.head(6).copy()
    val.loc[1, "skip_reason"] = "empty file (0 bytes)"
    for split, table in (("val", val), ("train_demo", small_manifest.iloc[[0, 10]])):
        formats.write_table(table, formats.manifest_path(split), schema=formats.MANIFEST_SCHEMA)
    ledger = pd.DataFrame(
        {"image_id": val["image_id"], "action": "keep", "new_label": val["label"].astype("Int64")}
    )
    ledger.loc[3, ["action", "new_label"]] = ["fix", (int(val["label"][3]) + 1) % 1000]
    ledger.loc[4, ["action", "new_label"]] = ["remove", pd.NA]
    ledger.loc[1, ["action", "new_label"]] = ["remove", pd.NA]
    formats.write_table(ledger, formats.ledger_path("val"))
    return val


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


def test_eval_labels_are_the_original_and_the_kept_or_fixed_ones(project: pd.DataFrame) -> None:
    labels = eval_labels("val", project, np.array([2, 3, 4, 5]))
    original = project["label"].to_numpy(np.float64)
    assert labels["original"].tolist() == original[[2, 3, 4, 5]].tolist()
    cleaned = labels["cleaned"]
    assert cleaned[[0, 3]].tolist() == original[[2, 5]].tolist()  # kept
    assert cleaned[1] == (original[3] + 1) % 1000 and np.isnan(cleaned[2])  # fixed, removed
    with pytest.raises(InputError, match="ledger of 'val' does not match its manifest"):
        eval_labels("val", project.iloc[::-1].reset_index(drop=True), np.array([0]))


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
