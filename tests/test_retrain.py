"""retrain: the Table 2 comparison (original vs cleaned train labels, scored on a val split)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import DEMO_ROOT, ROOT

from stages.contracts import formats
from stages.contracts.errors import InputError
from stages.contracts.params import load_params
from stages.modelling.train_config import RetrainConfig
from stages.modelling.training import arm_labels, train_arm
from stages.retrain_report import run_report

MODEL = "mobilenetv3_small_050"


@pytest.fixture
def manifest(small_manifest: pd.DataFrame) -> pd.DataFrame:
    table = small_manifest.head(8).copy()
    table.loc[2, "skip_reason"] = "empty file (0 bytes)"
    return table


def _clean(manifest: pd.DataFrame) -> pd.DataFrame:
    """Rows 0, 3, 5 kept (5 fixed to class 7), plus a merge placeholder, as decide writes it."""
    rows = manifest.iloc[[0, 3, 5]]
    return pd.DataFrame(
        {
            "image_id": list(rows["image_id"]) + ["placeholder_n0"],
            "label": [int(rows["label"].iloc[0]), int(rows["label"].iloc[1]), 7, 9],
            "placeholder": [False, False, False, True],
        }
    )


def test_the_arms_train_on_original_or_cleaned_labels(manifest: pd.DataFrame) -> None:
    original = arm_labels("original", manifest)
    assert original[2] == -1 and (original[[0, 1, 3]] == manifest["label"].iloc[[0, 1, 3]]).all()
    cleaned = arm_labels("cleaned", manifest, clean=_clean(manifest))
    assert np.flatnonzero(cleaned >= 0).tolist() == [0, 3, 5] and cleaned[5] == 7
    stranger = _clean(manifest).assign(image_id=["x", "y", "z", "placeholder_n0"])
    with pytest.raises(InputError, match="names 3 images that the manifest lacks"):
        arm_labels("cleaned", manifest, clean=stranger)


def _project(path: Path, train: pd.DataFrame, val: pd.DataFrame, *, reference: Path | None) -> Path:
    params = load_params(ROOT / "params.yaml")
    params["splits"]["train_demo"] = {**params["splits"]["val"], "root": str(DEMO_ROOT)}
    params["splits"]["val"]["root"] = str(DEMO_ROOT)
    params["models"][MODEL] = {"spec": MODEL, "pretrained": False}
    params["train"] = {
        "seed": 0,
        "launch": {"nproc_per_node": 1},
        "settings": {"epochs": 1, "batch_size": 4, "input_size": 32, "workers": 0, "threads": 1},
    }
    params["retrain"] = {
        "split": "train_demo",
        "eval_split": "val",
        "model": MODEL,
        "settings": {"epochs": 2},
    }
    params["evaluate"]["references"] = str(reference.parent) if reference else "none"
    params["evaluate"]["reference_labels"] = {"val": reference.name} if reference else None
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for split, table in (("train_demo", train), ("val", val)):
        formats.write_table(
            table, path / formats.manifest_path(split), schema=formats.MANIFEST_SCHEMA
        )
    ledger = pd.DataFrame(
        {"image_id": val["image_id"], "action": "keep", "new_label": val["label"]}
    )
    ledger.loc[ledger.index[-1], "action"], ledger.loc[ledger.index[-1], "new_label"] = (
        "remove",
        None,
    )
    ledger.loc[ledger.index[-2], "action"], ledger.loc[ledger.index[-2], "new_label"] = "fix", 3
    ledger.to_parquet(path / formats.ledger_path("val"))
    return path


@pytest.mark.slow
def test_both_arms_train_with_the_same_settings_and_are_scored_on_unseen_val_rows(
    tmp_path: Path, small_manifest: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    train, val = small_manifest.head(16), small_manifest.head(28)
    (tmp_path / "data/decisions").mkdir(parents=True)
    (tmp_path / "data/manifests").mkdir(parents=True)
    reference = tmp_path / "real.json"
    reference.write_text(
        json.dumps({i: [int(label)] for i, label in zip(val["image_id"], val["label"])})
    )
    project = _project(tmp_path, train, val, reference=reference)
    monkeypatch.chdir(project)
    params = load_params("params.yaml")
    formats.write_table(
        pd.DataFrame(
            {  # decide's cleaned split: 4 rows removed, one fixed
                "image_id": train["image_id"].iloc[4:],
                "label": [5] + list(train["label"].iloc[5:]),
                "placeholder": False,
            }
        ),
        formats.clean_path("train_demo"),
    )
    logs = {
        arm: train_arm(RetrainConfig.from_params(params), arm) for arm in ("original", "cleaned")
    }
    assert logs["original"]["n_train"] == 16 and logs["cleaned"]["n_train"] == 12
    assert logs["original"]["settings"] == logs["cleaned"]["settings"]
    assert logs["original"]["settings"]["epochs"] == 2  # retrain.settings applies
    metrics = run_report(params)
    assert metrics == json.loads(Path("metrics/retrain.json").read_text())
    assert metrics["eval_rows"] == 12 and metrics["eval_rows_in_train_split"] == 16
    for arm in ("original", "cleaned"):
        probs = np.load(f"data/retrain/{arm}/probs.npy")
        assert probs.shape == (12, 1000) and np.isfinite(probs).all()
        assert metrics[arm]["val_original"]["n"] == 12 and metrics[arm]["val_cleaned"]["n"] == 11
        assert metrics[arm]["reference"]["n"] == 12
    assert set(metrics["delta_top1"]) == {"val_original", "val_cleaned", "reference"}
