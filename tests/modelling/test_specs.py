"""stages.modelling.specs: params `models.<name>` entries -> timm specs, torch-free."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from stages.contracts.errors import ConfigError
from stages.modelling.specs import (
    ModelSpec,
    model_specs,
    require_tracked_weights,
    weights_sha256,
)


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


def test_specs_come_in_the_order_asked_and_undefined_names_are_refused() -> None:
    params = {"models": {"a": {"spec": "resnet18"}, "b": "resnet34"}, "predict": {"models": ["b"]}}
    assert [s.spec for s in model_specs(params, ["a", "b"])] == ["resnet18", "resnet34"]
    assert [s.name for s in model_specs(params)] == ["b"]  # default: predict.models
    with pytest.raises(
        ConfigError, match=r"models \['c'\] are listed but not defined under `models:`"
    ):
        model_specs(params, ["a", "c"])


def test_local_weights_are_fingerprinted_and_hub_weights_are_not(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    local = ModelSpec("m", f"local-dir:{tmp_path}")
    assert weights_sha256(local) == hashlib.sha256(b"weights").hexdigest()
    (tmp_path / "model.safetensors").write_bytes(b"other weights")  # swapped weights
    assert weights_sha256(local) == hashlib.sha256(b"other weights").hexdigest()
    assert weights_sha256(ModelSpec("m", "hf-hub:timm/resnet18.a1_in1k")) is None


def test_a_checkpoint_file_is_what_the_weights_digest_covers(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"pretrained")
    (tmp_path / "tuned.safetensors").write_bytes(b"tuned")
    spec = ModelSpec(
        "m",
        f"local-dir:{tmp_path}",
        kwargs={"checkpoint_path": str(tmp_path / "tuned.safetensors")},
    )
    assert weights_sha256(spec) == hashlib.sha256(b"tuned").hexdigest()


def test_local_weights_outside_the_tracked_folder_are_refused(tmp_path: Path) -> None:
    inside = ModelSpec("a", f"local-dir:{tmp_path / 'models/a'}")
    require_tracked_weights([inside], str(tmp_path / "models"))
    require_tracked_weights([ModelSpec("hub", "hf-hub:timm/resnet18.a1_in1k")], "models")
    elsewhere = ModelSpec("b", f"local-dir:{tmp_path / 'elsewhere/b'}")
    with pytest.raises(
        ConfigError,
        match=r"`models.b` loads its weights from .*elsewhere/b, outside `predict.weights_dir`",
    ):
        require_tracked_weights([inside, elsewhere], str(tmp_path / "models"))
    checkpoint = ModelSpec("c", "resnet18", False, {"checkpoint_path": str(tmp_path / "c.pth")})
    with pytest.raises(ConfigError, match=r"`models.c` loads its weights from .*c.pth, outside"):
        require_tracked_weights([checkpoint], str(tmp_path / "models"))
