"""Data contracts: a hand-edited manifest fails when read, naming the file and the problem."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.contracts import formats
from stages.contracts.errors import InputError, MissingInputError


def manifest_rows() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": ["a", "b"],
            "path": ["a.JPEG", "b.JPEG"],
            "label": [1, 2],
            "wnid": [formats.class_wnids()[1], formats.class_wnids()[2]],
            "boxes": [[], []],
            "width": [10, 20],
            "height": [10, 20],
            "skip_reason": [None, None],
            "sha256": ["0" * 64, "1" * 64],
        }
    )


def test_a_manifest_written_by_ingest_reads_back(tmp_path: Path) -> None:
    formats.write_table(manifest_rows(), tmp_path / "m.parquet", schema=formats.MANIFEST_SCHEMA)
    assert formats.read_manifest("val", path=tmp_path / "m.parquet")["image_id"].tolist() == [
        "a",
        "b",
    ]


def test_hand_edited_manifests_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    text_width = pa.Table.from_pandas(manifest_rows().astype({"width": str}), preserve_index=False)
    pq.write_table(text_width, path)
    with pytest.raises(
        InputError,
        match=r"m.parquet: column 'width' is large_string, the manifest "
        r"contract says int32",
    ):
        formats.read_manifest("val", path=path)
    formats.write_table(
        manifest_rows().assign(skip_reason=["", None]), path, schema=formats.MANIFEST_SCHEMA
    )
    with pytest.raises(InputError, match=r"an empty skip_reason .*image_id 'a'"):
        formats.read_manifest("val", path=path)
    formats.write_table(
        manifest_rows().assign(image_id=["a", "a"]), path, schema=formats.MANIFEST_SCHEMA
    )
    with pytest.raises(InputError, match=r"a repeated image_id"):
        formats.read_manifest("val", path=path)
    pq.write_table(
        pa.Table.from_pandas(manifest_rows().drop(columns="boxes"), preserve_index=False), path
    )
    with pytest.raises(InputError, match=r"lacks the manifest column 'boxes'"):
        formats.read_manifest("val", path=path)


def test_a_missing_manifest_says_which_stage_makes_it(tmp_path: Path) -> None:
    with pytest.raises(MissingInputError, match=r"run `dvc repro ingest@val` first"):
        formats.read_manifest("val", path=tmp_path / "none.parquet")


def test_class_label_and_parse_class() -> None:
    assert formats.class_label(396) == "396 (lionfish)"
    assert formats.parse_class("n01440764") == 0 and formats.parse_class(" 999 ") == 999
    assert formats.parse_class("1000") is None and formats.parse_class("cat") is None


def test_image_ids_digest_depends_on_order() -> None:
    assert formats.image_ids_sha256(["a", "b"]) != formats.image_ids_sha256(["b", "a"])
    assert formats.image_ids_sha256(pd.Series(["a", "b"])) == formats.image_ids_sha256(["a", "b"])


def test_nullable_integer_columns_must_be_integer_columns(tmp_path: Path) -> None:
    table = pa.table({"image_id": ["a"], "new_label": pa.array([None], pa.int32())})
    with pytest.raises(ValueError, match="'image_id' is not an integer column"):
        formats.write_table(table, tmp_path / "t.parquet", nullable_integers=["image_id"])
    with pytest.raises(ValueError, match="'nope' is not an integer column"):
        formats.write_table(table, tmp_path / "t.parquet", nullable_integers=["nope"])
    assert not (tmp_path / "t.parquet").exists()
    formats.write_table(table, tmp_path / "t.parquet", nullable_integers=["new_label"])
    assert pd.read_parquet(tmp_path / "t.parquet")["new_label"].dtype == pd.Int32Dtype()
