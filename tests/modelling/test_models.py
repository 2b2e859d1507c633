"""Model loading: params entries -> timm models, and one clear error for every spec timm cannot
build here (real timm, the real demo folders; offline as the tests always run)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from stages.cli import main as cli_main
from stages.contracts import formats
from stages.contracts.errors import ConfigError, MissingInputError, UserError
from stages.method.confident import ConfidentConfig
from stages.method.votes import vote
from stages.modelling.models import create_model, data_config, eval_transform
from stages.modelling.specs import ModelSpec, model_specs
from stages.sources.images import open_image


def test_predicting_with_an_untrained_model_needs_an_explicit_opt_in() -> None:
    from stages.modelling.predict_data import load_member

    untrained = ModelSpec.from_params("m", {"spec": "resnet18", "pretrained": False})
    with pytest.raises(
        ConfigError,
        match=r"`models.m` has pretrained: false, which would predict "
        r"with random weights.*random_weights",
    ):
        load_member(untrained, device=torch.device("cpu"))
    spec = ModelSpec.from_params(
        "m", {"spec": "resnet18", "pretrained": False, "random_weights": True}
    )
    spec.require_weights()
    assert create_model(spec).num_classes == 1000
    with_weights = ModelSpec.from_params(
        "m",
        {"spec": "resnet18", "pretrained": False, "kwargs": {"checkpoint_path": "w.safetensors"}},
    )
    assert with_weights.kwargs == {"checkpoint_path": "w.safetensors"}
    assert ModelSpec.from_params("m", "resnet18").pretrained


@pytest.mark.parametrize(
    "spec, error, message",
    [
        ("resnet5O", UserError, r"model 'm': timm has no model named 'resnet5O' \(close: resnet50"),
        (
            "hf-hub:timm/resnet18.a1_in1k",
            UserError,
            r"model 'm' \(hf-hub:timm/resnet18.a1_in1k\): its weights are not in the local "
            r"Hugging Face cache and HF_HUB_OFFLINE is set. Fix: download them once",
        ),
        ("local-dir:/nowhere/model", MissingInputError, r"/nowhere/model/config.json not found"),
    ],
)
def test_specs_timm_cannot_build_fail_with_the_fix(
    spec: str, error: type, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(error, match=message):
        create_model(ModelSpec("m", spec))


def test_cli_prints_one_line_instead_of_a_traceback(
    params: dict, demo_manifest: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params = copy.deepcopy(params)
    params["models"]["typo"] = {"spec": "resnet5O"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    manifest = tmp_path / "manifest.parquet"
    formats.write_table(demo_manifest.head(2), manifest, schema=formats.MANIFEST_SCHEMA)
    status = cli_main(
        [
            "predict",
            "--split",
            "val",
            "--model",
            "typo",
            "--params",
            str(tmp_path / "params.yaml"),
            "--manifest",
            str(manifest),
            "--out",
            str(tmp_path / "p.npy"),
        ]
    )
    err = capsys.readouterr().err
    assert status == 2 and "error: model 'typo': timm has no model named 'resnet5O'" in err
    assert "Traceback" not in err and not (tmp_path / "p.npy").exists()


def demo_predictions(manifest: pd.DataFrame, root: Path, params: dict) -> dict[str, np.ndarray]:
    """The five demo models' softmax over the manifest rows (stages.predict does this in the
    pipeline; computed here so this test does not depend on it)."""
    out = {}
    for spec in model_specs(params):
        model = create_model(spec)
        transform = eval_transform(data_config(model))
        with torch.no_grad():
            batch = torch.stack([transform(open_image(root, p)) for p in manifest["path"]])
            out[spec.name] = torch.softmax(model(batch), dim=1).numpy()
    return out


@pytest.fixture(scope="module")
def small_demo_predictions(
    small_manifest: pd.DataFrame, demo_root: Path, _params: dict
) -> dict[str, np.ndarray]:
    return demo_predictions(small_manifest.head(24), demo_root, _params)


@pytest.mark.parametrize("strategy", ["exact", "batched"])
def test_votes_on_real_demo_predictions(
    small_manifest: pd.DataFrame, strategy: str, small_demo_predictions: dict[str, np.ndarray]
) -> None:
    """24 real images x 5 real models. Most classes have one image here, which exact
    prune_by_noise_rate never flags (min_examples_per_class); batched does flag some."""
    labels = small_manifest["label"].to_numpy()[:24]
    result = vote(labels, small_demo_predictions, config=ConfidentConfig(strategy=strategy))
    table = result.table.to_pydict()
    for m, (name, probs) in enumerate(small_demo_predictions.items()):
        top5 = torch.topk(torch.from_numpy(probs), 5).indices.numpy()
        hit = (top5 == labels[:, None]).any(axis=1)
        assert result.models[m].top5_hit.tolist() == hit.tolist()
        assert [name in models for models in table["top5_hit_models"]] == hit.tolist()
        flagged = result.models[m]
        others = probs[flagged.flagged].copy()
        others[np.arange(len(flagged.flagged)), labels[flagged.flagged]] = -1
        assert flagged.candidates.tolist() == others.argmax(axis=1).tolist()
        assert (flagged.candidates != labels[flagged.flagged]).all()
        assert all(name in table["cl_models"][row] for row in flagged.flagged)
    assert table["top5_misses"] == sum(~r.top5_hit for r in result.models).tolist()
    assert sum(map(len, table["cl_candidates"])) == sum(len(r.flagged) for r in result.models)
    if strategy == "batched":
        assert sum(map(len, table["cl_candidates"])) > 0
