"""stages.modelling.predict_data: the fast uint8 input path equals timm's own eval transform bit for
bit on a real demo image for every demo model, batches are planned so that none crosses a shard,
an ensemble decodes each image once, and one forward pass gives the features and the logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from stages.cli import main as cli_main
from stages.contracts import formats
from stages.modelling import predict_data
from stages.modelling.models import create_model, data_config, eval_transform
from stages.modelling.specs import model_specs
from stages.sources.images import open_image


def test_input_path_is_bit_identical_to_timm_transform(
    params: dict, small_manifest: pd.DataFrame, demo_root: Path
) -> None:
    image = open_image(demo_root, small_manifest.at[0, "path"])
    for spec in model_specs(params):
        config = data_config(create_model(spec))
        fast = predict_data.input_transform(config)
        assert fast.scaled, f"{spec.name}: fast uint8 path not used"
        batch = fast.to_device(
            fast.worker_tensor(image).unsqueeze(0), torch.device("cpu"), channels_last=True
        )
        assert torch.equal(batch, eval_transform(config)(image).unsqueeze(0)), spec.name
        assert batch.is_contiguous(memory_format=torch.channels_last)


def test_batches_never_span_shards() -> None:
    usable = np.ones(23, dtype=bool)
    usable[[2, 9]] = False
    batches = predict_data.plan_batches(usable, [0, 2], shard_size=10, batch_size=4)
    assert [b.tolist() for b in batches] == [[0, 1, 3, 4], [5, 6, 7, 8], [20, 21, 22]]
    assert predict_data.plan_batches(usable, [1], shard_size=10, batch_size=4)[0].tolist() == [
        10,
        11,
        12,
        13,
    ]


SKIP_ROWS = (3, 10)


def _write_manifest(manifest: pd.DataFrame, folder: Path) -> Path:
    path = folder / "manifest.parquet"
    formats.write_table(manifest, path, schema=formats.MANIFEST_SCHEMA)
    return path


def _with_skip_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    """Mark rows as ingest's skip rows; their path names no file, so decoding them would fail."""
    manifest = manifest.copy()
    for row in SKIP_ROWS:
        manifest.loc[row, ["path", "skip_reason"]] = [
            "missing/never-decoded.JPEG",
            "unreadable image: marked by the test",
        ]
        manifest.at[row, "label"] = None
    return manifest


def _small_params(params: dict, **predict_options: object) -> dict:
    """Small batches and shards; one torch thread (the test CPU is shared: 2 threads stall
    there)."""
    params["predict"].update(
        {"batch_size": 8, "shard_size": 16, "workers": 1, "threads": 1, **predict_options}
    )
    return params


def test_ensemble_one_pass_is_byte_identical_and_decodes_once(
    params, small_manifest, tmp_path, monkeypatch
):
    # A second params entry with the same spec: a real model that shares its preprocessing group.
    params["models"]["mobilenetv1_050_again"] = dict(params["models"]["mobilenetv1_050"])
    names = ["mobilenetv1_025", "mobilenetv1_050", "mobilenetv1_050_again"]
    params = _small_params(params, workers=0, models=names)
    common = [
        "--split",
        "val",
        "--params",
        _dump(params, tmp_path),
        "--manifest",
        str(_write_manifest(_with_skip_rows(small_manifest.head(32)), tmp_path)),
    ]
    views = ["full", "boxes"]
    for name in names:
        for view in views:
            out = tmp_path / "single" / f"{name}.{view}.npy"
            assert (
                cli_main(["predict", *common, "--model", name, "--view", view, "--out", str(out)])
                == 0
            )

    decoded: list[str] = []
    shaped: list[str] = []
    real_open, real_shape = predict_data.open_image, predict_data.InputTransform.worker_tensor
    monkeypatch.setattr(
        predict_data, "open_image", lambda root, path: decoded.append(path) or real_open(root, path)
    )
    monkeypatch.setattr(
        predict_data.InputTransform,
        "worker_tensor",
        lambda self, image: shaped.append(self.key) or real_shape(self, image),
    )
    ensemble = ["predict-ensemble", *common, "--views", *views]
    assert cli_main([*ensemble, "--out-dir", str(tmp_path / "ensemble")]) == 0

    assert len(decoded) == len(set(decoded)) == 32 - len(SKIP_ROWS)
    # the two mobilenetv1_050 entries share one resize per view; each image is decoded once
    assert len(shaped) == 2 * len(views) * len(decoded)
    for name in names:
        for view in views:
            for suffix in (".npy", ".json"):
                single = tmp_path / "single" / f"{name}.{view}{suffix}"
                together = tmp_path / "ensemble" / f"{name}.{view}{suffix}"
                assert together.read_bytes() == single.read_bytes(), (name, view)


def _dump(params: dict, folder: Path) -> str:
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return str(path)


@pytest.mark.parametrize(
    "name", ["mobilenetv1_025", "mobilenetv1_050", "mobilenetv1_075", "mobilenetv2_100_tf"]
)
def test_logits_from_the_features_equal_the_models_own(params: dict, name: str) -> None:
    """The hook's premise: logits = classifier(pooled features), so one pass gives both."""
    member = predict_data.load_member(model_specs(params, [name])[0], device=torch.device("cpu"))
    batch = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        pooled, logits = predict_data.features_and_logits(member.module, batch)
        expected = member.module(batch)
    assert pooled.shape == (2, member.module.num_features)
    torch.testing.assert_close(logits, expected)
