"""Model loading: params entries -> timm models, and one clear error for every spec timm cannot
build here (real timm, the real demo folders; offline as the tests always run)."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from stages.cli import main as cli_main
from stages.contracts import formats
from stages.contracts.errors import ConfigError, MissingInputError, UserError
from stages.modelling.models import create_model
from stages.modelling.specs import ModelSpec


@pytest.mark.parametrize(
    "entry, message",
    [
        (
            {"spec": "resnet18", "pretrain": True},
            r"unknown key 'pretrain'; did you mean 'pretrained'",
        ),
        ({"pretrained": True}, r"`models.m` lacks the key 'spec'"),
        ({"spec": "resnet18", "kwargs": [1]}, r"`models.m.kwargs` must be a mapping"),
    ],
)
def test_bad_model_entries_name_the_key(entry: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ModelSpec.from_params("m", entry)


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
