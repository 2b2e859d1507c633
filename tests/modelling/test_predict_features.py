"""stages.modelling.predict_features: with `predict.embeddings` on, predict writes the pooled
features of its own forward pass (the embed stage's features, bit for bit) without changing a
byte of the probabilities; off, a (N, 0) placeholder; killed, the features resume from their own
shards."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_predict_data import SKIP_ROWS, _small_params, _with_skip_rows

from stages.contracts import formats
from stages.modelling import shards
from stages.modelling.embeddings import embed_split
from stages.modelling.predict_config import PredictConfig, PredictOptions
from stages.modelling.predictor import predict_split
from stages.modelling.specs import model_specs

NAME = "mobilenetv1_050.full"


def _run(params: dict, manifest: pd.DataFrame, folder: Path, *, embeddings: bool) -> dict:
    params = _small_params(params, workers=0, embeddings=embeddings)
    config = PredictConfig.from_params(params, "val", ["mobilenetv1_050"], ["full"])
    predict_split(
        config,
        manifest,
        {NAME: folder / "preds" / f"{NAME}.npy"},
        features={NAME: folder / "emb" / f"{NAME}.npy"},
    )
    return json.loads((folder / "emb" / f"{NAME}.json").read_text())


def test_features_are_the_embed_stages_and_the_probabilities_do_not_change(
    params: dict, small_manifest: pd.DataFrame, demo_root: Path, tmp_path: Path
) -> None:
    manifest = _with_skip_rows(small_manifest.head(24))
    on = _run(params, manifest, tmp_path / "on", embeddings=True)
    _run(params, manifest, tmp_path / "off", embeddings=False)
    probs = (tmp_path / "on/preds" / f"{NAME}.npy").read_bytes()
    assert probs == (tmp_path / "off/preds" / f"{NAME}.npy").read_bytes()

    features = np.load(tmp_path / "on/emb" / f"{NAME}.npy")
    assert features.shape == (24, 512) and features.dtype == np.float16
    skipped = np.isin(np.arange(24), SKIP_ROWS)
    assert np.isnan(features[skipped]).all() and not np.isnan(features[~skipped]).any()
    assert on["enabled"] and on["dim"] == 512 and on["view"] == "full"
    assert on["n_skipped"] == 2 and on["n_without_features"] == 0
    assert on["image_ids_sha256"] == formats.image_ids_sha256(manifest["image_id"])

    embed_split(
        manifest,
        demo_root,
        model_specs(params, ["mobilenetv1_050"])[0],
        options=PredictOptions.from_params(_small_params(params, workers=0)),
        out=tmp_path / "embed/m.npy",
        fingerprints_out=tmp_path / "embed/prints.parquet",
        split="val",
    )
    np.testing.assert_array_equal(features, np.load(tmp_path / "embed/m.npy"))


def test_off_writes_a_zero_width_placeholder(
    params: dict, small_manifest: pd.DataFrame, tmp_path: Path
) -> None:
    sidecar = _run(params, small_manifest.head(10), tmp_path, embeddings=False)
    placeholder = np.load(tmp_path / "emb" / f"{NAME}.npy")
    assert placeholder.shape == (10, 0) and placeholder.dtype == np.float16
    assert not sidecar["enabled"] and sidecar["dim"] == 0
    assert not (tmp_path / ".work").exists() and not (tmp_path / "emb" / ".work").exists()


def test_killed_features_resume_from_their_own_shards(
    params: dict,
    small_manifest: pd.DataFrame,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    manifest = small_manifest.head(40)  # shards of 16 rows: 3
    _run(params, manifest, tmp_path / "whole", embeddings=True)

    write = shards.ShardStore.write
    written: list[str] = []

    def killed_after_one_feature_shard(
        store: shards.ShardStore, shard: int, values: np.ndarray
    ) -> None:
        if store.width != formats.NUM_CLASSES:
            if written:
                raise KeyboardInterrupt("killed")
            written.append(store.out.name)
        write(store, shard, values)

    monkeypatch.setattr(shards.ShardStore, "write", killed_after_one_feature_shard)
    with pytest.raises(KeyboardInterrupt):
        _run(params, manifest, tmp_path / "killed", embeddings=True)
    assert not (tmp_path / "killed/emb" / f"{NAME}.npy").exists()
    monkeypatch.setattr(shards.ShardStore, "write", write)

    caplog.set_level(logging.INFO, logger="stages.modelling.shards")
    _run(params, manifest, tmp_path / "killed", embeddings=True)
    assert f"{NAME}.npy: resuming; 1 of 3 shards already done, computing 2" in caplog.text
    for part in ("emb", "preds"):
        for suffix in (".npy", ".json"):
            assert (tmp_path / "killed" / part / f"{NAME}{suffix}").read_bytes() == (
                tmp_path / "whole" / part / f"{NAME}{suffix}"
            ).read_bytes()
