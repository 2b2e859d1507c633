"""train: out-of-fold training with timm on real demo images, under torchrun, killed and resumed,
and the whole `dvc repro` chain folds -> train -> oof -> vote -> explain -> decide for a train
split.

The slow tests train real timm models from scratch (mobilenetv3_small_050 at 32 px, a few
updates) on the embedded demo images; what they check (which rows each model was fed, what it
predicts, bit-identical resumption) does not depend on the models learning anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import (
    DEMO_ROOT,
    MODEL,
    TINY,
    copy_project,
    make_oof_project,
    merge,
    run_in,
    stage,
    stale_stages,
    train_sections,
)

from stages.contracts import formats
from stages.contracts.actions import ACTIONS
from stages.contracts.params import load_params
from stages.folds import run_folds
from stages.modelling.folds import fold_dir, read_folds, read_seen
from stages.modelling.models import eval_transform
from stages.modelling.specs import ModelSpec
from stages.modelling.train_config import TrainConfig
from stages.modelling.training import load_fold_model, train_fold
from stages.oof import run_oof
from stages.sources.images import open_image

# --- fast unit tests -------------------------------------------------------------------------


# --- slow end-to-end tests -------------------------------------------------------------------


def add_train_pipeline(project: Path) -> None:
    """The project's own train_demo split and stages, made small: 20 images, one model."""
    params = merge(
        yaml.safe_load((project / "params.yaml").read_text()),
        train_sections("data/demo/imagenet-val", limit=20),
    )
    params["train"]["models"] = [MODEL]
    params["predict"]["embeddings"] = True  # what the val duplicates path below checks
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_in(project, "git", "add", "-A")
    run_in(project, "git", "commit", "-qm", "train_demo: 20 images, one out-of-fold model")


@pytest.mark.slow
def test_dvc_repro_cleans_a_train_split_from_out_of_fold_predictions(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project", 24)
    add_train_pipeline(project)
    run_in(project, "dvc", "repro", "decide@train_demo")
    manifest = formats.read_manifest(
        "train_demo", path=project / formats.manifest_path("train_demo")
    )
    folds = pd.read_parquet(project / "data/folds/train_demo.parquet")
    ledger = pd.read_parquet(project / formats.ledger_path("train_demo"))
    assert (
        folds["image_id"].tolist() == ledger["image_id"].tolist() == manifest["image_id"].tolist()
    )
    assert ledger["action"].isin(ACTIONS).all()
    assert len(manifest) == 20  # splits.train_demo.limit
    sidecar = json.loads((project / formats.sidecar_path("train_demo", MODEL)).read_text())
    assert sidecar["source"] == "out-of-fold" and sidecar["n"] == 20
    votes = pd.read_parquet(project / formats.votes_path("train_demo"))
    assert (votes["n_models"] == 1).all()  # the split's own models
    # val's predict ran only for the duplicates group val (decide reads data/duplicates): with
    # predict.embeddings on, embed@val takes duplicates.model's features from predict@val
    embedded = json.loads((project / "data/embeddings/val/mobilenetv1_050.json").read_text())
    assert embedded["features_from"] == "data/embeddings/val/mobilenetv1_050.full.npy"
    assert not (project / formats.votes_path("val")).exists()
    assert stale_stages(project, "decide@train_demo", "--with-deps") == set()


def _check_out_of_fold(project: Path, manifest: pd.DataFrame, *, world: int) -> np.ndarray:
    """Check, from the fold table, each fold's seen.npy and log.json, that no row's prediction
    comes from a model that was fed it; return the assembled predictions."""
    fold_of = read_folds("train_demo", manifest, path=project / "data/folds/train_demo.parquet")
    usable = manifest["skip_reason"].isna().to_numpy()
    probs = np.load(project / formats.predictions_path("train_demo", MODEL))
    assert probs.shape == (len(manifest), 1000)
    assert np.isnan(probs[~usable]).all() and np.isfinite(probs[usable]).all()
    assert np.allclose(probs[usable].sum(axis=1), 1, atol=1e-4)
    for fold in (0, 1):
        folder = project / fold_dir("train_demo", MODEL, fold)
        log = json.loads((folder / "log.json").read_text())
        seen = read_seen(folder / "seen.npy", len(manifest))
        assert log["trained_folds"] == [1 - fold] and log["world_size"] == world
        assert seen.sum() == log["n_seen"] > TINY["batch_size"] * world
        assert not (seen & (fold_of == fold)).any()  # never fed its own fold
        assert (fold_of[seen] == 1 - fold).all() and usable[seen].all()
        heldout = np.flatnonzero(usable & (fold_of == fold))
        assert np.array_equal(probs[heldout], np.load(folder / "probs.npy"))
    sidecar = json.loads((project / formats.sidecar_path("train_demo", MODEL)).read_text())
    assert sidecar["source"] == "out-of-fold" and sidecar["folds"] == 2
    assert sidecar["image_ids_sha256"] == formats.image_ids_sha256(manifest["image_id"])
    return probs


@pytest.mark.slow
def test_each_row_is_predicted_by_a_model_that_never_saw_it(
    tmp_path: Path, small_manifest: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = small_manifest.head(24).copy()
    manifest.loc[7, "skip_reason"] = "empty file (0 bytes)"
    project = make_oof_project(tmp_path, manifest)
    monkeypatch.chdir(project)
    params = load_params("params.yaml")
    run_folds("train_demo", params)
    logs = [
        train_fold(TrainConfig.from_params(params, "train_demo", MODEL, fold)) for fold in (0, 1)
    ]
    run_oof("train_demo", MODEL, params)
    probs = _check_out_of_fold(project, manifest, world=1)
    assert [log["n_heldout"] for log in logs] == [12, 11]
    # the saved weights are the model that made fold 1's predictions
    folder = project / fold_dir("train_demo", MODEL, 1)
    model = load_fold_model(ModelSpec(MODEL, MODEL, pretrained=False), folder)
    transform = eval_transform(logs[1]["preprocessing"])
    rows = np.flatnonzero(read_folds("train_demo", manifest) == 1)
    batch = torch.stack([transform(open_image(DEMO_ROOT, manifest["path"][r])) for r in rows])
    with torch.inference_mode():
        again = torch.softmax(model(batch), dim=1).numpy()
    assert np.abs(again - probs[rows]).max() < 1e-4  # (other thread count, same model)
    assert not list((project / "data/oof/train_demo" / MODEL).glob(".*"))  # work folders gone


@pytest.mark.slow
def test_two_torchrun_processes_predict_every_row(
    tmp_path: Path, small_manifest: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = small_manifest.head(24)
    project = make_oof_project(tmp_path, manifest, launch={"nproc_per_node": 2})
    monkeypatch.chdir(project)
    params = load_params("params.yaml")
    run_folds("train_demo", params)
    for fold in ("0", "1"):  # the stage re-runs itself under torchrun (gloo)
        result = stage(
            project, "stages.train", "--split", "train_demo", "--model", MODEL, "--fold", fold
        )
        assert "torch.distributed.run --nproc-per-node=2 --standalone" in result.stderr
    run_oof("train_demo", MODEL, params)
    _check_out_of_fold(project, manifest, world=2)
