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
import pytest

from stages.contracts import formats
from stages.contracts.labels import LABELS_SCHEMA, current_labels

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
