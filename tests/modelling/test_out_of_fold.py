"""stages.modelling.out_of_fold: moved from test_oof.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages.contracts import formats
from stages.contracts.errors import InputError
from stages.modelling.folds import assign_folds
from stages.modelling.out_of_fold import assemble


@pytest.fixture
def manifest(small_manifest: pd.DataFrame) -> pd.DataFrame:
    table = small_manifest.head(20).copy()
    table.loc[5, "skip_reason"] = "unreadable image: OSError: truncated"
    return table


def _fold_of(manifest: pd.DataFrame, k: int = 2) -> np.ndarray:
    return assign_folds(
        manifest["label"].to_numpy(), manifest["skip_reason"].isna().to_numpy(), k=k, seed=0
    )


def _probs(rows: np.ndarray, fold: int) -> np.ndarray:
    """Row r of fold f puts probability 0.5 on class r, 0.25 on class 900 + f (the rest spread)."""
    probs = np.full((len(rows), 1000), 0.25 / 998, dtype=np.float32)
    probs[np.arange(len(rows)), rows] = 0.5
    probs[:, 900 + fold] = 0.25
    return probs


def write_folds(
    root: Path, manifest: pd.DataFrame, fold_of: np.ndarray, *, leak: dict[int, int] | None = None
) -> list[Path]:
    """Fold folders as `train` writes them; `leak` {fold: row} marks a held-out row as seen."""
    ids = manifest["image_id"].to_numpy(dtype=str)
    usable = manifest["skip_reason"].isna().to_numpy()
    k, folders = int(fold_of.max()) + 1, []
    for fold in range(k):
        folder = root / f"fold-{fold}"
        folder.mkdir(parents=True)
        rows = np.flatnonzero(usable & (fold_of == fold))
        seen = usable & (fold_of != fold) & (fold_of >= 0)
        if leak and fold in leak:
            seen[leak[fold]] = True
        np.save(folder / "probs.npy", _probs(rows, fold))
        np.save(folder / "seen.npy", np.packbits(seen))
        trained = np.flatnonzero(usable & (fold_of != fold) & (fold_of >= 0))
        log = {
            "split": "train_demo",
            "model": "m",
            "fold": fold,
            "folds": k,
            "n_rows": len(ids),
            "trained_folds": [f for f in range(k) if f != fold],
            "n_train": len(trained),
            "n_seen": int(seen.sum()),
            "n_heldout": len(rows),
            "weights_sha256": f"w{fold}",
            "seen_sha256": f"s{fold}",
            "train_image_ids_sha256": formats.image_ids_sha256(ids[trained]),
            "heldout_image_ids_sha256": formats.image_ids_sha256(ids[rows]),
            "spec": "mobilenetv3_small_050",
            "architecture": "mobilenetv3_small_050",
            "init": "scratch",
            "seed": 0,
            "settings": {"epochs": 1},
            "world_size": 1,
            "preprocessing": {"input_size": [3, 32, 32]},
        }
        (folder / "log.json").write_text(json.dumps(log))
        folders.append(folder)
    return folders


def test_every_row_gets_its_own_fold_models_prediction_in_manifest_order(
    tmp_path: Path, manifest: pd.DataFrame
) -> None:
    fold_of = _fold_of(manifest)
    folders = write_folds(tmp_path / "oof", manifest, fold_of)
    sidecar = assemble(
        manifest, fold_of, folders, tmp_path / "m.npy", split="train_demo", model="m"
    )
    probs = formats.load_predictions("train_demo", "m", path=tmp_path / "m.npy")
    assert probs.shape == (20, 1000) and probs.dtype == np.float32
    assert np.isnan(probs[5]).all()
    usable = np.flatnonzero(manifest["skip_reason"].isna().to_numpy())
    assert (probs[usable].argmax(axis=1) == usable).all()  # row order kept
    assert (probs[usable, 900 + fold_of[usable]] == 0.25).all()  # from the row's own fold
    assert sidecar == json.loads((tmp_path / "m.json").read_text())
    assert sidecar["source"] == "out-of-fold" and sidecar["folds"] == 2
    assert sidecar["n"] == 20 and sidecar["n_skipped"] == 1
    assert sidecar["image_ids_sha256"] == formats.image_ids_sha256(manifest["image_id"])
    assert [f["trained_folds"] for f in sidecar["fold_models"]] == [[1], [0]]


def test_a_fold_whose_model_saw_a_row_it_predicts_is_refused(
    tmp_path: Path, manifest: pd.DataFrame
) -> None:
    fold_of = _fold_of(manifest)
    row = int(np.flatnonzero(fold_of == 1)[0])
    folders = write_folds(tmp_path / "oof", manifest, fold_of, leak={1: row})
    with pytest.raises(
        InputError, match=rf"trained on 1 rows of fold 1.*{manifest['image_id'][row]}"
    ):
        assemble(manifest, fold_of, folders, tmp_path / "m.npy", split="train_demo", model="m")
    assert not (tmp_path / "m.npy").exists()


def test_folds_from_another_fold_table_are_refused(tmp_path: Path, manifest: pd.DataFrame) -> None:
    folders = write_folds(tmp_path / "oof", manifest, _fold_of(manifest))
    other = assign_folds(
        manifest["label"].to_numpy(), manifest["skip_reason"].isna().to_numpy(), k=2, seed=5
    )
    with pytest.raises(InputError, match="predicts other rows than fold 0"):
        assemble(manifest, other, folders, tmp_path / "m.npy", split="train_demo", model="m")
    with pytest.raises(InputError, match="has 2 folds.*`train.folds` 3"):
        assemble(
            manifest,
            other,
            folders + [tmp_path / "x"],
            tmp_path / "m.npy",
            split="train_demo",
            model="m",
        )


def test_a_missing_fold_names_the_stage_to_run(tmp_path: Path, manifest: pd.DataFrame) -> None:
    fold_of = _fold_of(manifest)
    folders = write_folds(tmp_path / "oof", manifest, fold_of)
    (folders[1] / "log.json").unlink()
    with pytest.raises(FileNotFoundError, match="fold-1/log.json does not exist"):
        assemble(manifest, fold_of, folders, tmp_path / "m.npy", split="train_demo", model="m")
