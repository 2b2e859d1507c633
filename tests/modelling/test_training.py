"""stages.modelling.training: moved from test_train.py."""

from __future__ import annotations

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
from conftest import MODEL, ROOT, make_oof_project

from stages.contracts.params import load_params
from stages.folds import run_folds
from stages.modelling.folds import fold_dir
from stages.modelling.train_config import TrainConfig
from stages.modelling.training import train_fold


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
