"""stages.contracts.labels: a split's current labels on the first demo manifest rows: the manifest's
at iteration 0, else those of the labels file promote writes (rows aligned by image_id, rows that
left the split inactive with their reason), and a labels file that does not fit the manifest
refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml

from stages.contracts import formats
from stages.contracts.formats import LEDGER_FULL_SCHEMA
from stages.contracts.labels import LABELS_SCHEMA, current_labels, promote_labels

SKIP_ROW = 2


@pytest.fixture
def manifest(small_manifest: pd.DataFrame) -> pd.DataFrame:
    """Five demo manifest rows; row 2 is a skip row (its label known, as ingest keeps it)."""
    manifest = small_manifest.head(5).copy()
    manifest.at[SKIP_ROW, "skip_reason"] = "empty file (0 bytes)"
    return manifest


def labels_table(manifest: pd.DataFrame, iteration: int = 1) -> pd.DataFrame:
    """The labels file promote would write when nothing changed."""
    return pd.DataFrame(
        {
            "image_id": manifest["image_id"],
            "label": manifest["label"],
            "iteration": iteration,
            "reason": None,
        }
    )


def write_labels(table: pd.DataFrame, folder: Path) -> Path:
    path = folder / "iterations" / "val.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    formats.write_table(table, path, schema=LABELS_SCHEMA)
    return path


@pytest.mark.parametrize("labels_file", [None, "absent.parquet"])
def test_without_a_labels_file_the_manifest_labels_are_current(
    manifest: pd.DataFrame, tmp_path: Path, labels_file: str | None
) -> None:
    current = current_labels(manifest, labels_file and tmp_path / labels_file)
    assert current.iteration == 0
    expected = manifest["label"].to_numpy().copy()
    expected[SKIP_ROW] = -1
    assert current.label.tolist() == expected.tolist()
    assert current.active.tolist() == [True, True, False, True, True]
    assert current.inactive_reason.tolist() == [
        None,
        None,
        "skip: empty file (0 bytes)",
        None,
        None,
    ]


def test_a_labels_file_overrides_labels_and_marks_the_rows_that_left(
    manifest: pd.DataFrame, tmp_path: Path
) -> None:
    table = labels_table(manifest, iteration=2).astype({"label": "Int32"})
    table.loc[0, "label"] = 999  # fixed in an earlier iteration
    table.loc[1, ["label", "reason"]] = [pd.NA, "removed in iteration 1: 3 unique candidates"]
    table.loc[3, "label"] = pd.NA  # left without a recorded reason
    current = current_labels(manifest, write_labels(table.iloc[::-1], tmp_path))  # any row order
    assert current.iteration == 2
    original = manifest["label"].tolist()
    assert current.label.tolist() == [999, -1, -1, -1, original[4]]
    assert current.active.tolist() == [True, False, False, False, True]
    assert current.inactive_reason.tolist() == [
        None,
        "removed in iteration 1: 3 unique candidates",
        "skip: empty file (0 bytes)",
        "left the split in an earlier iteration",
        None,
    ]
    assert current.label.dtype == np.int64


def test_a_labels_file_that_misses_manifest_rows_is_refused_naming_it(
    manifest: pd.DataFrame, tmp_path: Path
) -> None:
    path = write_labels(labels_table(manifest).iloc[:-1], tmp_path)
    last = manifest["image_id"].iloc[-1]
    message = (
        rf"labels file {re.escape(str(path))} does not match the manifest: 1 manifest image "
        rf"ids missing \(e.g. \['{last}'\]\), 0 unknown .*re-run promote"
    )
    with pytest.raises(ValueError, match=message):
        current_labels(manifest, path)


def _unknown_id(table: pd.DataFrame) -> pd.DataFrame:
    return table.assign(image_id=table["image_id"].where(table.index != 0, "elsewhere"))


def _two_iterations(table: pd.DataFrame) -> pd.DataFrame:
    return table.assign(iteration=[1, 1, 2, 1, 1])


def _repeated_row(table: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([table, table.iloc[[4]]])


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            _unknown_id,
            r"does not match the manifest: 1 manifest image ids missing .*, 1 unknown "
            r"\(e.g. \['elsewhere'\]\)",
        ),
        (_two_iterations, r"must hold one iteration, found \[1, 2\]"),
        (_repeated_row, r"repeats image_id 'ILSVRC2012_val_"),
    ],
)
def test_a_labels_file_that_does_not_fit_the_manifest_is_refused(
    manifest: pd.DataFrame,
    tmp_path: Path,
    edit: Callable[[pd.DataFrame], pd.DataFrame],
    message: str,
) -> None:
    path = write_labels(edit(labels_table(manifest)), tmp_path)
    with pytest.raises(ValueError, match=rf"labels file {re.escape(str(path))} {message}"):
        current_labels(manifest, path)


def test_a_labels_file_without_its_columns_is_refused(
    manifest: pd.DataFrame, tmp_path: Path
) -> None:
    path = tmp_path / "labels.parquet"
    formats.write_table(labels_table(manifest).drop(columns="reason"), path)
    with pytest.raises(
        ValueError,
        match=r"lacks columns \['reason'\]; it needs \['image_id', "
        r"'label', 'iteration', 'reason'\]",
    ):
        current_labels(manifest, path)


def test_a_usable_row_without_a_label_is_refused_naming_the_image(manifest: pd.DataFrame) -> None:
    manifest = manifest.astype({"label": "Int64"})
    manifest.loc[[1, 3], "label"] = pd.NA
    image = manifest.at[1, "image_id"]
    with pytest.raises(
        ValueError,
        match=rf"image {image} is usable but has no label "
        r"\(2 such rows\)",
    ):
        current_labels(manifest, None)


K = formats.NUM_CLASSES


PER_CLASS = 20


FLIP = (3, 7)  # row FLIP[0] * PER_CLASS (true class 7) carries label 3


def probs_for(true: np.ndarray, *, seed: int = 0, top: float = 0.9) -> np.ndarray:
    """(N, K) float32 probabilities: `top` on the true class, the rest spread with some noise."""
    rng = np.random.default_rng(seed)
    rest = rng.uniform(0.5, 1.5, size=(len(true), K)).astype(np.float32)
    rest[np.arange(len(true)), true] = 0
    rest *= (1 - top) / rest.sum(axis=1, keepdims=True)
    rest[np.arange(len(true)), true] = top
    return rest


MODELS = ["m_a", "m_b"]


def write_project(
    root: Path, *, labels_file: pd.DataFrame | None = None, dtype: str = "float32"
) -> pd.DataFrame:
    """A miniature project: a 200-row manifest (ids not sorted, row 199 a skip row), one
    predictions file per model (row 60 has label 3 but looks like class 7), params.yaml."""
    true = np.repeat(np.arange(10), PER_CLASS)
    ids = [f"img_{(i * 37) % 200:03d}" for i in range(200)]
    manifest = pd.DataFrame(
        {
            "image_id": ids,
            "path": [f"{i}.JPEG" for i in ids],
            "label": true,
            "wnid": [formats.class_wnids()[c] for c in true],
            "boxes": [[] for _ in ids],
            "width": 227,
            "height": 227,
            "skip_reason": None,
            "sha256": None,
        }
    )
    manifest.loc[199, "skip_reason"] = "empty file (0 bytes)"
    formats.write_table(
        manifest, root / formats.manifest_path("val"), schema=formats.MANIFEST_SCHEMA
    )
    shown = true.copy()
    shown[FLIP[0] * PER_CLASS] = FLIP[1]
    for seed, model in enumerate(MODELS):
        probs = probs_for(shown, seed=seed).astype(dtype)
        probs[199] = np.nan
        formats.write_npy(probs, root / formats.predictions_path("val", model))
        formats.write_json(
            {"model": model, "image_ids_sha256": formats.image_ids_sha256(ids)},
            root / formats.sidecar_path("val", model),
        )
    if labels_file is not None:
        formats.write_table(labels_file, root / "iterations/val.parquet")
    params = {
        "splits": {"val": {"root": "raw", "layout": "kaggle", "labels": "iterations/val.parquet"}},
        "models": {m: {"spec": f"local-dir:models/{m}"} for m in MODELS},
        "predict": {"models": MODELS},
        "vote": {"val": {"fn": 1.0}, "exact_max_rows": 200000},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return manifest


def test_labels_file_that_misses_manifest_rows_is_refused(tmp_path: Path) -> None:
    manifest = write_project(tmp_path)
    labels = pd.DataFrame(
        {"image_id": manifest["image_id"][:-1], "label": 0, "iteration": 1, "reason": None}
    )
    formats.write_table(labels, tmp_path / "iterations/val.parquet")
    with pytest.raises(
        ValueError,
        match=r"iterations/val.parquet does not match the manifest: 1 "
        r"manifest image ids missing \(e.g. \['img_",
    ):
        current_labels(manifest, tmp_path / "iterations/val.parquet")


ROWS = [  # image_id, label, action, new_label, reason
    ("k", 1, "keep", 1, "keep"),
    ("f", 2, "fix", 3, "fix: 3 of 5 models flagged it, candidates {3: 3} (h1=3) -> 3"),
    ("m", 5, "keep", 6, "keep; merged a -> b"),
    ("r", 4, "remove", None, "remove: top-5 missed by 4 of 5 models (h3=4), no CAM exemption"),
    ("s", None, "skip", None, "skip: truncated file"),
    ("old", None, "remove", None, "removed in iteration 0: remove: 3 unique candidates"),
]


def ledger(iteration: int = 1) -> pd.DataFrame:
    return pa.Table.from_pylist(
        [
            {
                "image_id": i,
                "label": label,
                "action": action,
                "new_label": new,
                "cl_candidates": [],
                "top5_misses": 0,
                "exempted": False,
                "reason": reason,
                "original_label": label or 0,
                "iteration": iteration,
                "merged": i == "m",
                "override": False,
                "exemptions": 0,
                "secondary_labels": [7] if i == "k" else [],
            }
            for i, label, action, new, reason in ROWS
        ],
        schema=LEDGER_FULL_SCHEMA,
    ).to_pandas()


def test_labels_are_the_new_labels_of_active_rows_and_the_next_iteration() -> None:
    labels = promote_labels(ledger(iteration=1))
    assert list(labels["image_id"]) == [r[0] for r in ROWS]
    assert labels["label"].tolist()[:3] == [1, 3, 6] and labels["label"][3:].isna().all()
    assert set(labels["iteration"]) == {2}
    assert labels["reason"][:3].isna().all()
    assert labels["reason"].tolist()[3:] == [
        "removed in iteration 1: remove: top-5 missed by 4 of 5 models (h3=4), no CAM exemption",
        "skip: truncated file",
        "removed in iteration 0: remove: 3 unique candidates",
    ]


def test_a_ledger_mixing_iterations_is_refused() -> None:
    mixed = ledger().assign(iteration=[0, 1, 1, 1, 1, 1])
    with pytest.raises(ValueError, match=r"mixes iterations \[0, 1\]"):
        promote_labels(mixed)
