"""Embeddings of the demo models: features and logits from one pass, resumable shards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages.contracts import formats
from stages.modelling.embeddings import _compute_shard as emb_compute
from stages.modelling.embeddings import embed_split
from stages.modelling.predict_config import PredictOptions
from stages.modelling.shards import work_folder
from stages.modelling.specs import model_specs


def run(tmp: Path, manifest: pd.DataFrame, params: dict, demo_root: Path, **kw: int) -> dict:
    options = PredictOptions(workers=0, batch_size=8, shard_size=kw.get("shard_size", 16))
    return embed_split(
        manifest,
        demo_root,
        model_specs(params, ["mobilenetv1_050"])[0],
        options=options,
        out=tmp / "emb/val/m.npy",
        fingerprints_out=tmp / "fp/val.parquet",
        split="val",
    )


def test_embed_split_writes_features_and_fingerprints(
    tmp_path: Path, small_manifest: pd.DataFrame, params: dict, demo_root: Path
) -> None:
    manifest = small_manifest.head(20).copy()
    manifest.loc[3, "skip_reason"] = "unreadable image: test"
    sidecar = run(tmp_path, manifest, params, demo_root)
    features = np.load(tmp_path / "emb/val/m.npy")
    prints = pd.read_parquet(tmp_path / "fp/val.parquet")
    assert features.shape == (20, 512) and features.dtype == np.float16
    assert np.isnan(features[3]).all() and not np.isnan(np.delete(features, 3, axis=0)).any()
    assert list(prints["image_id"]) == list(manifest["image_id"])
    assert prints["phash"].isna().tolist() == [k == 3 for k in range(20)]
    assert (
        sidecar["dim"] == 512 and sidecar["n_skipped"] == 1 and sidecar["n_without_features"] == 1
    )
    assert json.loads((tmp_path / "emb/val/m.json").read_text()) == sidecar
    assert sidecar["image_ids_sha256"] == formats.image_ids_sha256(manifest["image_id"])
    assert not work_folder(tmp_path / "emb/val/m.npy").exists()


def test_a_killed_run_resumes_with_the_missing_shards(
    tmp_path: Path, small_manifest: pd.DataFrame, params: dict, demo_root: Path, monkeypatch
) -> None:
    manifest = small_manifest.head(32)
    run(tmp_path / "whole", manifest, params, demo_root)
    import stages.modelling.embeddings as emb

    calls = []
    original = emb.FeatureStore.write

    def die_after_one(self, shard, feats, prints):  # type: ignore[no-untyped-def]
        calls.append(shard)
        if len(calls) > 1:
            raise KeyboardInterrupt
        original(self, shard, feats, prints)

    monkeypatch.setattr(emb.FeatureStore, "write", die_after_one)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed", manifest, params, demo_root)
    assert not (tmp_path / "killed/emb/val/m.npy").exists()
    monkeypatch.setattr(emb.FeatureStore, "write", original)
    calls.clear()
    computed = []
    monkeypatch.setattr(
        emb, "_compute_shard", lambda *a, **k: computed.append(1) or emb_compute(*a, **k)
    )
    run(tmp_path / "killed", manifest, params, demo_root)
    assert len(computed) == 1  # shard 0 was kept
    for name in ("emb/val/m.npy", "fp/val.parquet"):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
