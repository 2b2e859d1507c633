"""folds: stratified, seeded K-fold assignment in manifest order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_train_config import _params

from stages.contracts import formats
from stages.contracts.errors import InputError
from stages.folds import run_folds
from stages.modelling.folds import assign_folds, read_folds


def test_the_stage_writes_a_table_that_reads_back_against_its_manifest(
    tmp_path: Path, params: dict, small_manifest: pd.DataFrame
) -> None:
    manifest_file = tmp_path / "manifest.parquet"
    formats.write_table(small_manifest, manifest_file, schema=formats.MANIFEST_SCHEMA)
    stats = run_folds(
        "train_demo", _params(params), manifest_path=manifest_file, out=tmp_path / "folds.parquet"
    )
    assert stats["folds"] == 3 and sum(stats["per_fold"]) == len(small_manifest)
    fold = read_folds("train_demo", small_manifest, path=tmp_path / "folds.parquet")
    assert (
        fold.tolist()
        == assign_folds(small_manifest["label"].to_numpy(), np.ones(48, bool), k=3, seed=3).tolist()
    )
    with pytest.raises(InputError, match="does not match the manifest"):
        read_folds("train_demo", small_manifest.iloc[::-1], path=tmp_path / "folds.parquet")
