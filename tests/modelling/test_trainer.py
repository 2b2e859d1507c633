"""trainer: the training engine (timm model, fit, checkpoint fingerprint, prediction of rows).

The fast fit test trains a real timm model from scratch (mobilenetv3_small_050 at 32 px, two
updates) on a few embedded demo images on the CPU; what it checks (which rows were fed, resuming
from the run's checkpoint, the predicted rows) does not depend on the model learning anything.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stages.contracts.errors import ConfigError
from stages.modelling.distributed import Dist
from stages.modelling.models import eval_transform
from stages.modelling.specs import ModelSpec
from stages.modelling.train_config import TrainSettings
from stages.modelling.trainer import (
    CHECKPOINT,
    Job,
    build_model,
    fingerprint,
    fit,
    imagenet_weights,
    predict_rows,
)
from stages.sources.images import open_image

MODEL = "mobilenetv3_small_050"
TINY = TrainSettings(
    epochs=1, batch_size=4, eval_batch_size=3, input_size=32, workers=0, device="cpu"
)


def test_imagenet_weights_are_refused_unless_allowed(project_root: Path) -> None:
    spec = ModelSpec("demo", f"local-dir:{project_root}/data/demo/models/mobilenetv1_025.tf_in1k")
    with pytest.raises(ConfigError, match="leak the very labels being checked"):
        build_model(spec, TrainSettings(init="pretrained"), torch.device("cpu"))
    model = build_model(
        spec, TrainSettings(init="pretrained", allow_imagenet_weights=True), torch.device("cpu")
    )
    assert imagenet_weights(model) and model.training


def test_freeze_bn_keeps_the_pretrained_features_in_train_mode(project_root: Path) -> None:
    """The demo weights have batch norm folded in (running mean 0, variance 1): in train mode a
    live BatchNorm normalises by the batch and the features are lost; frozen, the train-mode model
    computes what the pretrained model computes, and only non-BatchNorm weights train."""
    spec = ModelSpec("demo", f"local-dir:{project_root}/data/demo/models/mobilenetv1_025.tf_in1k")
    settings = TrainSettings(init="pretrained", allow_imagenet_weights=True)
    images = torch.randn(4, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    reference = build_model(spec, settings, torch.device("cpu")).eval()
    live = build_model(spec, settings, torch.device("cpu"))
    frozen = build_model(spec, dataclasses.replace(settings, freeze_bn=True), torch.device("cpu"))
    assert live.training and frozen.training
    with torch.no_grad():
        expected = reference(images)
        assert not torch.allclose(live(images), expected, atol=1e-2)
        assert torch.allclose(frozen(images), expected, atol=1e-4)
    trainable = {name for name, weight in frozen.named_parameters() if weight.requires_grad}
    assert trainable and not any(".bn" in name for name in trainable)


def _job(tmp_path: Path, root: Path, manifest: pd.DataFrame, train_rows: list[int]) -> Job:
    """A job training on `train_rows` of `manifest` (labels -1 elsewhere)."""
    labels = np.full(len(manifest), -1, dtype=np.int64)
    labels[train_rows] = manifest["label"].to_numpy()[train_rows]
    return Job(
        "test",
        ModelSpec(MODEL, MODEL, pretrained=False),
        root,
        manifest["path"].tolist(),
        labels,
        np.array(train_rows),
        0,
        tmp_path / "work",
    )


def test_fingerprint_changes_with_what_the_weights_depend_on_only(
    tmp_path: Path, small_manifest: pd.DataFrame, demo_root: Path
) -> None:
    job = _job(tmp_path, demo_root, small_manifest.head(12), [0, 2, 4, 6, 8])
    settings = TrainSettings()
    base = fingerprint(job, settings, 1)
    same = dataclasses.replace(
        settings, workers=7, checkpoint_every=3, eval_batch_size=5, dtype="float16"
    )
    assert fingerprint(job, same, 1) == base
    other_labels = job.labels.copy()
    other_labels[1] = 5  # row 1 is not trained on
    assert fingerprint(dataclasses.replace(job, labels=other_labels), settings, 1) == base
    other_labels[2] = (other_labels[2] + 1) % 1000  # row 2 is
    changed = [
        fingerprint(job, dataclasses.replace(settings, lr=0.05), 1),
        fingerprint(job, dataclasses.replace(settings, epochs=3), 1),
        fingerprint(job, settings, 2),
        fingerprint(dataclasses.replace(job, seed=1), settings, 1),
        fingerprint(dataclasses.replace(job, labels=other_labels), settings, 1),
        fingerprint(dataclasses.replace(job, train_rows=np.array([0, 2, 4, 6])), settings, 1),
    ]
    assert all(other != base for other in changed)


def test_fit_feeds_only_the_training_rows_and_resumes_from_its_checkpoint(
    tmp_path: Path, small_manifest: pd.DataFrame, demo_root: Path
) -> None:
    manifest = small_manifest.head(12)
    train_rows = [0, 1, 3, 5, 6, 8, 9, 11]
    job = _job(tmp_path, demo_root, manifest, train_rows)
    ctx = Dist(device=torch.device("cpu"))
    trained = fit(job, TINY, ctx)
    assert np.flatnonzero(trained.seen).tolist() == train_rows
    assert trained.steps == 2 and trained.resumed_at is None and not trained.model.training
    assert [epoch["images"] for epoch in trained.history] == [8]
    assert (job.work / CHECKPOINT).is_file()
    again = fit(job, TINY, ctx)  # finished: nothing left to train
    assert again.resumed_at == 2 and again.history == trained.history
    assert all(
        torch.equal(a, b)
        for a, b in zip(again.model.state_dict().values(), trained.model.state_dict().values())
    )
    retrained = fit(job, dataclasses.replace(TINY, lr=0.05), ctx)  # another run: starts over
    assert retrained.resumed_at is None

    heldout = np.array([2, 4, 7, 10, 11])
    out = tmp_path / "probs.npy"
    predict_rows(trained, job, heldout, out, settings=TINY, ctx=ctx)
    probs = np.load(out)
    assert probs.shape == (5, 1000) and np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    transform = eval_transform(trained.eval_config)
    batch = torch.stack([transform(open_image(demo_root, manifest["path"][r])) for r in heldout])
    with torch.inference_mode():
        direct = torch.softmax(trained.model(batch), dim=1).numpy()
    assert np.abs(direct - probs).max() < 1e-4  # row k of out is heldout[k]
