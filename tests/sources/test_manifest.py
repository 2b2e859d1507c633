"""stages.sources.manifest: moved from test_ingest.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stages.contracts import formats
from stages.contracts.errors import ConfigError, InputError, MissingInputError
from stages.sources.images import open_image
from stages.sources.layouts import Source
from stages.sources.manifest import IngestConfig, build_manifest

WNID = "n01440764"  # tench, class 0


FIRST = "ILSVRC2012_val_00000347"


@pytest.fixture
def jpeg(demo_root: Path) -> Path:
    return demo_root / "ILSVRC/Data/CLS-LOC/val" / f"{FIRST}.JPEG"


@pytest.fixture
def folder(tmp_path: Path, jpeg: Path) -> Path:
    """An imagefolder split with one good image; tests add the bad one."""
    (tmp_path / WNID).mkdir()
    shutil.copy(jpeg, tmp_path / WNID / "good.JPEG")
    return tmp_path


def run(root: Path, **options: str) -> tuple[pd.DataFrame, dict]:
    return build_manifest(Source(root, "imagefolder"), config=IngestConfig(**options))


def reason_of(manifest: pd.DataFrame, image_id: str) -> str | None:
    value = manifest.set_index("image_id").loc[image_id, "skip_reason"]
    return None if pd.isna(value) else value


def test_zero_byte_file_is_a_skip_row(folder: Path) -> None:
    (folder / WNID / "empty.JPEG").write_bytes(b"")
    manifest, stats = run(folder)
    assert reason_of(manifest, "empty") == "empty file (0 bytes)"
    assert stats["files_found"] == stats["rows"] == 2 and stats["usable"] + stats["skipped"] == 2


def test_truncated_jpeg_is_a_skip_row(folder: Path, jpeg: Path) -> None:
    data = jpeg.read_bytes()
    (folder / WNID / "truncated.JPEG").write_bytes(data[: len(data) // 2])
    manifest, stats = run(folder)
    assert "unreadable image" in reason_of(manifest, "truncated")
    assert "truncated" in reason_of(manifest, "truncated")
    assert stats["skipped"] == 1


def test_truncated_jpeg_is_an_error_under_error_policy(folder: Path, jpeg: Path) -> None:
    (folder / WNID / "truncated.JPEG").write_bytes(jpeg.read_bytes()[:2000])
    with pytest.raises(ValueError, match=r"truncated\.JPEG: unreadable image"):
        run(folder, on_bad_image="error")


def test_header_only_verify_misses_truncation_but_keeps_the_row(folder: Path, jpeg: Path) -> None:
    (folder / WNID / "truncated.JPEG").write_bytes(jpeg.read_bytes()[:2000])
    manifest, stats = run(folder, verify="header")
    assert stats["rows"] == 2 and reason_of(manifest, "truncated") is None


@pytest.mark.parametrize("mode", ["CMYK", "L"])
def test_cmyk_and_grayscale_jpegs_are_ingested_and_decode_to_rgb(
    folder: Path, jpeg: Path, mode: str
) -> None:
    Image.open(jpeg).convert(mode).save(folder / WNID / f"odd_{mode}.JPEG", format="JPEG")
    manifest, stats = run(folder)
    assert stats["skipped"] == 0 and reason_of(manifest, f"odd_{mode}") is None
    image = open_image(folder, f"{WNID}/odd_{mode}.JPEG")
    assert image.mode == "RGB" and image.size == (227, 227)


def test_png_bytes_under_jpeg_name_are_ingested(folder: Path, jpeg: Path) -> None:
    Image.open(jpeg).save(folder / WNID / "png_inside.JPEG", format="PNG")
    _manifest, stats = run(folder)
    assert stats["usable"] == 2
    assert np.array_equal(
        np.asarray(open_image(folder, f"{WNID}/png_inside.JPEG")),
        np.asarray(Image.open(jpeg).convert("RGB")),
    )


def test_unknown_wnid_is_an_error_naming_the_file(folder: Path, jpeg: Path) -> None:
    (folder / "n99999999").mkdir()
    shutil.copy(jpeg, folder / "n99999999" / "x.JPEG")
    with pytest.raises(ValueError, match=r"n99999999/x\.JPEG: wnid 'n99999999' is not one of"):
        run(folder)


def test_duplicate_image_ids_are_an_error(folder: Path, jpeg: Path) -> None:
    (folder / "n01443537").mkdir()
    shutil.copy(jpeg, folder / "n01443537" / "good.JPEG")
    with pytest.raises(ValueError, match="duplicate image id 'good'"):
        run(folder)


def test_missing_root_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(
        MissingInputError,
        match="does-not-exist does not exist; set params.yaml `splits.<split>.root`",
    ):
        run(tmp_path / "does-not-exist")


def kaggle_val(tmp_path: Path, demo_root: Path, solution: str | None) -> Path:
    data = tmp_path / "ILSVRC/Data/CLS-LOC/val"
    data.mkdir(parents=True)
    (tmp_path / "ILSVRC/Annotations/CLS-LOC/val").mkdir(parents=True)
    shutil.copy(demo_root / "ILSVRC/Data/CLS-LOC/val" / f"{FIRST}.JPEG", data)
    if solution is not None:
        (tmp_path / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + solution)
    return tmp_path


def test_box_outside_the_image_is_clipped_or_dropped_and_counted(
    tmp_path: Path, demo_root: Path
) -> None:
    root = kaggle_val(
        tmp_path, demo_root, f"{FIRST},{WNID} -10 5 100 300 {WNID} 300 300 400 400 {WNID} 1 2 3 4\n"
    )
    manifest, stats = build_manifest(Source(root, "kaggle", "val"))
    assert [list(b) for b in manifest.loc[0, "boxes"]] == [[0, 5, 100, 227], [1, 2, 3, 4]]
    assert stats["boxes_clipped"] == 1 and stats["boxes_dropped"] == 1


def test_missing_label_xml_gives_a_skip_row(tmp_path: Path, demo_root: Path) -> None:
    root = kaggle_val(tmp_path, demo_root, solution=None)  # no CSV and no XML for the image
    manifest, stats = build_manifest(Source(root, "kaggle", "val"))
    assert reason_of(manifest, FIRST).startswith("no label:")
    assert stats == {**stats, "files_found": 1, "rows": 1, "skipped": 1}
    assert pd.isna(manifest.loc[0, "label"])


def test_skip_rows_survive_the_parquet_schema(tmp_path: Path, folder: Path) -> None:
    (folder / WNID / "empty.JPEG").write_bytes(b"")
    manifest, _ = run(folder)
    formats.write_table(manifest, tmp_path / "m.parquet", schema=formats.MANIFEST_SCHEMA)
    back = formats.read_table(tmp_path / "m.parquet")
    assert len(back) == 2 and back["skip_reason"].notna().sum() == 1


def test_bad_policy_names_the_options() -> None:
    with pytest.raises(
        ConfigError, match="`ingest.on_bad_image` must be one of skip, error, got 'ignore'"
    ):
        IngestConfig(on_bad_image="ignore")


def bad_xml_folder(folder: Path, text: str) -> Path:
    """The `folder` split plus a bbox folder whose XML for `good` is `text`."""
    (folder.parent / "bbox").mkdir()
    (folder.parent / "bbox" / "good.xml").write_text(text)
    shutil.copy(folder / WNID / "good.JPEG", folder / WNID / "other.JPEG")
    return folder.parent / "bbox"


XML_ABC = (
    f"<annotation><object><name>{WNID}</name><bndbox><xmin>abc</xmin><ymin>1</ymin>"
    "<xmax>2</xmax><ymax>3</ymax></bndbox></object></annotation>"
)


def test_malformed_xml_is_a_skip_row_and_ingest_goes_on(tmp_path: Path, jpeg: Path) -> None:
    (tmp_path / "split" / WNID).mkdir(parents=True)
    shutil.copy(jpeg, tmp_path / "split" / WNID / "good.JPEG")
    boxes = bad_xml_folder(tmp_path / "split", XML_ABC)
    source = Source(tmp_path / "split", "imagefolder", boxes=boxes)
    manifest, stats = build_manifest(source)
    assert stats == {**stats, "files_found": 2, "rows": 2, "usable": 1, "skipped": 1}
    assert reason_of(manifest, "good") == (
        f"bad annotation: {boxes / 'good.xml'}: object 1 ({WNID}) <xmin> is 'abc', not a number"
    )
    with pytest.raises(
        InputError,
        match=r"good.JPEG: bad annotation: .*bbox/good.xml: object 1 "
        r"\(n01440764\) <xmin> is 'abc'.*on_bad_image: error",
    ):
        build_manifest(source, config=IngestConfig(on_bad_image="error"))


def test_malformed_csv_row_is_a_skip_row_naming_file_and_line(
    tmp_path: Path, demo_root: Path
) -> None:
    root = kaggle_val(tmp_path, demo_root, f"{FIRST}\n")  # no PredictionString at all
    manifest, stats = build_manifest(Source(root, "kaggle", "val"))
    assert stats["skipped"] == 1 and reason_of(manifest, FIRST).startswith(
        f"bad annotation: {root / 'LOC_val_solution.csv'} line 2: PredictionString None"
    )
    with pytest.raises(InputError, match=r"LOC_val_solution.csv line 2: PredictionString None"):
        build_manifest(Source(root, "kaggle", "val"), config=IngestConfig(on_bad_image="error"))


def test_a_few_labels_their_xml_does_not_name_are_counted_not_fatal(
    tmp_path: Path, jpeg: Path
) -> None:
    (tmp_path / "split" / WNID).mkdir(parents=True)
    (tmp_path / "bbox" / WNID).mkdir(parents=True)
    small = Image.open(jpeg).resize((16, 16))
    for index in range(101):
        small.save(tmp_path / "split" / WNID / f"{WNID}_{index}.JPEG")
        name = WNID if index else "n01443537"  # one XML names another class
        (tmp_path / "bbox" / WNID / f"{WNID}_{index}.xml").write_text(
            f"<annotation><object><name>{name}</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
            "<xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>"
        )
    _manifest, stats = build_manifest(
        Source(tmp_path / "split", "imagefolder", boxes=tmp_path / "bbox")
    )
    assert (
        stats["label_box_mismatches"] == 1 and stats["usable"] == 101 and stats["with_boxes"] == 100
    )
    (tmp_path / "bbox" / WNID / f"{WNID}_1.xml").write_text(
        (tmp_path / "bbox" / WNID / f"{WNID}_0.xml").read_text()
    )
    with pytest.raises(InputError, match="2 of 101 images with a box XML are labelled with a wnid"):
        build_manifest(Source(tmp_path / "split", "imagefolder", boxes=tmp_path / "bbox"))


def test_limit_keeps_the_first_images_by_id_and_counts_the_rest(folder: Path, jpeg: Path) -> None:
    for name in ("d", "a", "c", "b"):
        shutil.copy(jpeg, folder / WNID / f"{name}.JPEG")
    manifest, stats = build_manifest(Source(folder, "imagefolder", limit=3))
    assert list(manifest["image_id"]) == ["a", "b", "c"]
    assert stats == {**stats, "files_found": 5, "limited_out": 2, "rows": 3, "usable": 3}
    _, everything = build_manifest(Source(folder, "imagefolder"))
    assert everything["limited_out"] == 0 and everything["rows"] == 5


def test_all_1300_shared_demo_images_match_their_sources(shared_demo: Path) -> None:
    from stages.sources.layouts import parse_voc_xml

    manifest, stats = build_manifest(Source(shared_demo, "kaggle", "val"))
    assert stats["rows"] == 1300 and stats["skipped"] == 0
    solution = pd.read_csv(shared_demo / "LOC_val_solution.csv").set_index("ImageId")
    wnids = formats.class_wnids()
    for row in manifest.itertuples():
        tokens = solution.loc[row.image_id, "PredictionString"].split()
        assert wnids[row.label] == row.wnid == tokens[0]
        objects, _ = parse_voc_xml(
            shared_demo / "ILSVRC/Annotations/CLS-LOC/val" / f"{row.image_id}.xml"
        )
        assert [list(b) for b in row.boxes] == [box for name, box in objects if name == row.wnid]


def test_manifest_records_each_image_digest_so_a_changed_image_changes_it(
    tmp_path: Path, folder: Path
) -> None:
    import hashlib

    first, _ = run(folder)
    image = folder / WNID / f"{first.loc[0, 'image_id']}.JPEG"
    assert first.loc[0, "sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()
    image.write_bytes(image.read_bytes() + b"\0")  # same path, other bytes
    second, _ = run(folder)
    assert second.loc[0, "sha256"] != first.loc[0, "sha256"]
    assert second.drop(columns="sha256").equals(first.drop(columns="sha256"))


def test_an_image_too_small_to_carry_a_label_is_a_skip_row(folder: Path) -> None:
    Image.new("RGB", (1, 1), (128, 64, 32)).save(folder / WNID / "tiny.JPEG")
    Image.new("RGB", (16, 300), (128, 64, 32)).save(folder / WNID / "narrow.JPEG")
    manifest, stats = run(folder)
    assert reason_of(manifest, "tiny") == (
        "too small: 1x1 pixels, below ingest.min_size 16 (the shorter side)"
    )
    assert reason_of(manifest, "narrow") is None and stats["skipped"] == 1
    assert run(folder, min_size=1)[1]["skipped"] == 0
    with pytest.raises(InputError, match=r"tiny\.JPEG: too small: 1x1 pixels.*on_bad_image: error"):
        run(folder, on_bad_image="error")
    with pytest.raises(ConfigError, match="`ingest.min_size` must be"):
        IngestConfig(min_size=0)


def test_label_rows_without_an_image_are_an_error_or_counted(
    tmp_path: Path, demo_root: Path
) -> None:
    missing = ["ILSVRC2012_val_00000002", "ILSVRC2012_val_00000001"]
    rows = "".join(f"{image_id},{WNID} 1 2 3 4\n" for image_id in missing)
    root = kaggle_val(tmp_path, demo_root, f"{FIRST},{WNID} 1 2 3 4\n{rows}")
    with pytest.raises(
        InputError,
        match=r"LOC_val_solution.csv: 2 labelled images have no image file under .* \(e.g. "
        r"ILSVRC2012_val_00000001, ILSVRC2012_val_00000002\): a partial download\?.*"
        r"ingest.on_missing_image: skip",
    ):
        build_manifest(Source(root, "kaggle", "val"))
    _manifest, stats = build_manifest(
        Source(root, "kaggle", "val"), config=IngestConfig(on_missing_image="skip")
    )
    assert stats == {
        **stats,
        "files_found": 1,
        "rows": 1,
        "usable": 1,
        "label_rows_without_image": 2,
        "label_rows_without_image_examples": sorted(missing),
    }
    with pytest.raises(ConfigError, match="`ingest.on_missing_image` must be one of error, skip"):
        IngestConfig(on_missing_image="ignore")
