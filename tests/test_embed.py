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


def test_run_embed_writes_the_stage_outputs(
    tmp_path: Path, params: dict, small_manifest: pd.DataFrame
) -> None:
    formats.write_table(
        small_manifest.head(10),
        tmp_path / formats.manifest_path("val"),
        schema=formats.MANIFEST_SCHEMA,
    )
    params["predict"]["workers"] = 0
    sidecar = embed.run_embed("val", params, root=tmp_path)
    assert sidecar["model"] == "mobilenetv1_050" and sidecar["n"] == 10
    assert np.load(tmp_path / formats.embeddings_path("val", "mobilenetv1_050")).shape == (10, 512)
    assert len(pd.read_parquet(tmp_path / formats.fingerprints_path("val"))) == 10


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
