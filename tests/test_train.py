"""train: out-of-fold training with timm on real demo images, under torchrun, killed and resumed,
and the whole `dvc repro` chain folds -> train -> oof -> vote -> explain -> decide for a train
split.

The slow tests train real timm models from scratch (mobilenetv3_small_050 at 32 px, a few
updates) on the embedded demo images; what they check (which rows each model was fed, what it
predicts, bit-identical resumption) does not depend on the models learning anything.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import DEMO_ROOT, ROOT, copy_project, run_in

from stages.contracts import formats
from stages.contracts.actions import ACTIONS
from stages.contracts.params import load_params
from stages.folds import run_folds
from stages.modelling.folds import fold_dir, read_folds, read_seen
from stages.modelling.launch import LaunchConfig, torchrun_command
from stages.modelling.models import eval_transform
from stages.modelling.specs import ModelSpec
from stages.modelling.train_config import TrainConfig
from stages.modelling.training import load_fold_model, train_fold
from stages.oof import run_oof
from stages.sources.images import open_image

MODEL = "mobilenetv3_small_050"
TINY = {
    "epochs": 2,
    "batch_size": 4,
    "eval_batch_size": 16,
    "input_size": 32,
    "workers": 0,
    "threads": 1,
    "checkpoint_every": 2,
}


def train_sections(
    root: str,
    *,
    settings: dict | None = None,
    launch: dict | None = None,
    models: tuple[str, ...] = (MODEL,),
    folds: int = 2,
    limit: int | None = None,
) -> dict:
    """The params.yaml sections of an out-of-fold split `train_demo` (see docs/train-split.md:
    Cleaning the train split). The lead will fold them into the project's params.yaml; tests add
    them."""
    return {
        "splits": {
            "train_demo": {
                "root": root,
                "layout": "kaggle",
                "subset": "val",
                "synsets": None,
                "boxes": None,
                "limit": limit,
                "labels": "iterations/train_demo.parquet",
                "overrides": "data/overrides/train_demo.csv",
                "predictions": "out-of-fold",
                "models": list(models),
            }
        },
        "models": {name: {"spec": name, "pretrained": False} for name in models},
        "train": {
            "splits": ["train_demo"],
            "models": list(models),
            "folds": list(range(folds)),
            "seed": 0,
            "launch": {"nproc_per_node": 1, **(launch or {})},
            "settings": {**TINY, **(settings or {})},
        },
        "vote": {"train_demo": {"fn": 1.0}},
        "decide": {"train_demo": {"strategy": "consensus", "h1": "M", "h2": "M/2", "h3": "M"}},
    }


def merge(params: dict, sections: dict) -> dict:
    """params with each section's keys added (nested one level)."""
    params = copy.deepcopy(params)
    for name, values in sections.items():
        params.setdefault(name, {})
        params[name].update(copy.deepcopy(values))
    return params


def make_oof_project(path: Path, manifest: pd.DataFrame, **options) -> Path:
    """A folder with params.yaml (the project's + train_demo) and the split's manifest."""
    params = merge(load_params(ROOT / "params.yaml"), train_sections(str(DEMO_ROOT), **options))
    (path / "data/manifests").mkdir(parents=True)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    formats.write_table(
        manifest, path / "data/manifests/train_demo.parquet", schema=formats.MANIFEST_SCHEMA
    )
    return path


def stage(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`python -m stages.<args>` in a project folder, importing this checkout's stages."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", *args], cwd=project, env=env, text=True, capture_output=True
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


# --- fast unit tests -------------------------------------------------------------------------


def test_torchrun_command_is_standalone_on_one_node_and_rendezvous_across_nodes() -> None:
    one = torchrun_command("stages.train", ["--fold", "1"], LaunchConfig(nproc_per_node=2))
    assert one[1:] == [
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--standalone",
        "-m",
        "stages.train",
        "--fold",
        "1",
    ]
    many = torchrun_command(
        "stages.train", [], LaunchConfig(nproc_per_node=8, nnodes=4, rdzv_endpoint="node0:29400")
    )
    assert "--nnodes=4" in many and "--rdzv-endpoint=node0:29400" in many
    assert "--rdzv-backend=c10d" in many and "--standalone" not in many


# --- slow end-to-end tests -------------------------------------------------------------------


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


@pytest.mark.slow
def test_a_killed_training_resumes_to_the_same_result(
    tmp_path: Path, small_manifest: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = {"epochs": 4, "batch_size": 2, "input_size": 64, "checkpoint_every": 2}
    project = make_oof_project(tmp_path, small_manifest.head(24), settings=settings)
    monkeypatch.chdir(project)
    params = load_params("params.yaml")
    run_folds("train_demo", params)
    reference = train_fold(
        TrainConfig.from_params(params, "train_demo", MODEL, 0), out=project / "reference"
    )
    out = project / fold_dir("train_demo", MODEL, 0)
    checkpoint = out.parent / ".fold-0.partial/checkpoint.pth"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stages.train",
            "--split",
            "train_demo",
            "--model",
            MODEL,
            "--fold",
            "0",
        ],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not checkpoint.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)  # kill -9, mid-training
    process.wait()
    assert checkpoint.is_file() and not out.exists()  # no output under its name
    killed_at = torch.load(checkpoint, weights_only=True)["global_step"]
    log = train_fold(TrainConfig.from_params(params, "train_demo", MODEL, 0))  # the re-run resumes
    assert log["resumed_at_step"] == killed_at and 0 < killed_at < log["steps"] == 24
    assert np.array_equal(np.load(out / "probs.npy"), np.load(project / "reference/probs.npy"))
    assert log["weights_sha256"] == reference["weights_sha256"]
    assert log["epochs"][-1]["loss"] == reference["epochs"][-1]["loss"]
    assert not checkpoint.parent.exists()


def add_train_pipeline(project: Path) -> None:
    """The project's own train_demo split and stages, made small: 20 images, one model."""
    params = merge(
        yaml.safe_load((project / "params.yaml").read_text()),
        train_sections("data/demo/imagenet-val", limit=20),
    )
    params["train"]["models"] = [MODEL]
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
    assert not (project / "data/predictions/val").exists()  # val's predict never ran
    status = run_in(project, "dvc", "status", "decide@train_demo", "--with-deps").stdout
    assert "changed" not in status
