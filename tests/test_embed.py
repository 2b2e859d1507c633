"""The embed stage door: params -> the split's embeddings and fingerprints."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages import embed
from stages.contracts import formats
from stages.contracts.errors import ConfigError, MissingInputError
from stages.modelling import embeddings


def _ten_rows(root: Path, manifest: pd.DataFrame, params: dict, *, embeddings: bool) -> None:
    """A val manifest of 10 demo images under `root`; predict.embeddings as given."""
    formats.write_table(
        manifest.head(10), root / formats.manifest_path("val"), schema=formats.MANIFEST_SCHEMA
    )
    params["predict"].update(
        workers=0, embeddings=embeddings, splits=["val"], models=["mobilenetv1_050"], views=["full"]
    )
    params["duplicates"]["model"] = "mobilenetv1_050"


def test_run_embed_writes_the_stage_outputs(
    tmp_path: Path, params: dict, small_manifest: pd.DataFrame
) -> None:
    _ten_rows(tmp_path, small_manifest, params, embeddings=False)
    sidecar = embed.run_embed("val", params, root=tmp_path)
    assert sidecar["model"] == "mobilenetv1_050" and sidecar["n"] == 10
    assert sidecar["features_from"] is None
    assert np.load(tmp_path / formats.embeddings_path("val", "mobilenetv1_050")).shape == (10, 512)
    assert len(pd.read_parquet(tmp_path / formats.fingerprints_path("val"))) == 10


def test_with_predict_embeddings_on_embed_runs_no_model_and_points_at_predicts_features(
    tmp_path: Path, params: dict, small_manifest: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ten_rows(tmp_path, small_manifest, params, embeddings=True)
    monkeypatch.setattr(
        embeddings.pdata, "load_member", lambda *a, **k: pytest.fail("no model may be loaded")
    )
    sidecar = embed.run_embed("val", params, root=tmp_path)
    assert sidecar["features_from"] == "data/embeddings/val/mobilenetv1_050.full.npy"
    assert sidecar["dim"] == 0 and sidecar["spec"] is None
    assert np.load(tmp_path / formats.embeddings_path("val", "mobilenetv1_050")).shape == (10, 0)
    prints = pd.read_parquet(tmp_path / formats.fingerprints_path("val"))
    assert len(prints) == 10 and prints["phash"].notna().all()


@pytest.mark.parametrize(
    ("change", "value"),
    [
        ("embeddings", False),
        ("splits", ["other"]),
        ("models", ["mobilenetv1_025"]),
        ("views", ["boxes"]),
    ],
)
def test_embed_runs_its_model_where_predict_does_not_cover_it(
    params: dict, change: str, value: object
) -> None:
    params["predict"].update(
        embeddings=True, splits=["val"], models=["mobilenetv1_050"], views=["full", "boxes"]
    )
    assert embed.predict_writes_features(params, "val", "mobilenetv1_050")
    params["predict"][change] = value
    assert not embed.predict_writes_features(params, "val", "mobilenetv1_050")


def test_bad_model_and_missing_manifest_are_clear_errors(tmp_path: Path, params: dict) -> None:
    params["duplicates"]["model"] = "nope"
    with pytest.raises(ConfigError, match="`duplicates.model` must name an entry of `models:`"):
        embed.run_embed("val", params, root=tmp_path)
    params["duplicates"]["model"] = "mobilenetv1_050"
    shutil.rmtree(tmp_path, ignore_errors=True)
    with pytest.raises(MissingInputError, match="dvc repro ingest@val"):
        embed.run_embed("val", params, root=tmp_path)


def test_main_parses_the_split(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    monkeypatch.setattr(embed, "run_embed", lambda split, params: seen.append(split))
    assert embed.main(["--split", "val"]) == 0 and seen == ["val"]
