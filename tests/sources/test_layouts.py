"""Each raw layout, built in a temp dir from real demo images, reads back the right labels/boxes."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.contracts.errors import ConfigError, InputError, MissingInputError
from stages.contracts.formats import class_wnids
from stages.contracts.splits import SplitEntry
from stages.sources.layouts import Source, parse_voc_xml, read_source, split_source
from stages.sources.manifest import IngestConfig, build_manifest

WNIDS = class_wnids()


def demo_rows(demo_root: Path, n: int) -> list[tuple[str, str, list[list[int]]]]:
    """(image_id, wnid, boxes) of the first n rows of the demo's LOC_val_solution.csv."""
    rows = []
    with open(demo_root / "LOC_val_solution.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            tokens = row["PredictionString"].split()
            boxes = [[int(v) for v in tokens[i + 1 : i + 5]] for i in range(0, len(tokens), 5)]
            rows.append((row["ImageId"], tokens[0], boxes))
    return sorted(rows)[:n]


def demo_image(demo_root: Path, image_id: str) -> Path:
    return demo_root / "ILSVRC/Data/CLS-LOC/val" / f"{image_id}.JPEG"


def demo_xml(demo_root: Path, image_id: str) -> Path:
    return demo_root / "ILSVRC/Annotations/CLS-LOC/val" / f"{image_id}.xml"


def test_kaggle_val_reads_csv_labels_and_boxes(demo_root: Path, demo_manifest) -> None:
    expected = {image_id: (wnid, boxes) for image_id, wnid, boxes in demo_rows(demo_root, 10_000)}
    assert len(demo_manifest) == len(expected) == 500
    for row in demo_manifest.itertuples():
        wnid, boxes = expected[row.image_id]
        assert row.wnid == wnid and WNIDS[row.label] == wnid
        assert [list(b) for b in row.boxes] == boxes
        assert row.skip_reason is None or row.skip_reason != row.skip_reason  # null


def test_kaggle_val_falls_back_to_xml(tmp_path: Path, demo_root: Path) -> None:
    rows = demo_rows(demo_root, 4)
    data = tmp_path / "ILSVRC/Data/CLS-LOC/val"
    annotations = tmp_path / "ILSVRC/Annotations/CLS-LOC/val"
    data.mkdir(parents=True)
    annotations.mkdir(parents=True)
    for image_id, _, _ in rows:
        shutil.copy(demo_image(demo_root, image_id), data)
        shutil.copy(demo_xml(demo_root, image_id), annotations)
    manifest, stats = build_manifest(Source(tmp_path, "kaggle", "val"))
    assert stats["usable"] == 4
    for (image_id, wnid, boxes), row in zip(rows, manifest.itertuples()):
        objects, _ = parse_voc_xml(demo_xml(demo_root, image_id))
        assert row.image_id == image_id and row.wnid == wnid
        assert (
            [list(b) for b in row.boxes] == [box for name, box in objects if name == wnid] == boxes
        )


def test_kaggle_train_synset_folders_with_partial_boxes(tmp_path: Path, demo_root: Path) -> None:
    rows = demo_rows(demo_root, 3)
    for k, (image_id, wnid, _) in enumerate(rows):
        folder = tmp_path / "ILSVRC/Data/CLS-LOC/train" / wnid
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(demo_image(demo_root, image_id), folder / f"{wnid}_{k}.JPEG")
        if k == 0:  # only some train images have boxes
            xml = tmp_path / "ILSVRC/Annotations/CLS-LOC/train" / wnid / f"{wnid}_{k}.xml"
            xml.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(demo_xml(demo_root, image_id), xml)
    manifest, stats = build_manifest(Source(tmp_path, "kaggle", "train"))
    assert stats == {**stats, "files_found": 3, "usable": 3, "with_boxes": 1}
    by_id = manifest.set_index("image_id")
    assert [list(b) for b in by_id.loc[f"{rows[0][1]}_0", "boxes"]] == rows[0][2]
    assert list(manifest["wnid"]) == sorted(r[1] for r in rows)
    assert all(path.startswith("ILSVRC/Data/CLS-LOC/train/") for path in manifest["path"])


def test_imagefolder(tmp_path: Path, demo_root: Path) -> None:
    rows = demo_rows(demo_root, 5)
    for image_id, wnid, _ in rows:
        (tmp_path / wnid).mkdir(exist_ok=True)
        shutil.copy(demo_image(demo_root, image_id), tmp_path / wnid / f"{image_id}.JPEG")
    manifest, _ = build_manifest(Source(tmp_path, "imagefolder"))
    got = dict(zip(manifest["image_id"], manifest["label"]))
    assert got == {image_id: WNIDS.index(wnid) for image_id, wnid, _ in rows}
    assert manifest["boxes"].map(len).eq(0).all()


def test_imagenetv2_class_index_folders(tmp_path: Path, demo_root: Path) -> None:
    rows = demo_rows(demo_root, 4)
    for k, (image_id, wnid, _) in enumerate(rows):
        folder = tmp_path / str(WNIDS.index(wnid))
        folder.mkdir(exist_ok=True)
        shutil.copy(demo_image(demo_root, image_id), folder / f"{k:040x}.jpeg")
    manifest, stats = build_manifest(Source(tmp_path, "imagenetv2"))
    assert stats["usable"] == 4
    for row in manifest.itertuples():
        assert row.image_id.split("/")[0] == str(row.label)
        assert row.path == f"{row.image_id}.jpeg"


def test_imagenetv2_rejects_non_index_folder(tmp_path: Path) -> None:
    (tmp_path / "n01440764").mkdir()
    with pytest.raises(ValueError, match="named 0..999"):
        read_source(Source(tmp_path, "imagenetv2"))


SPARSE = IngestConfig(on_missing_image="skip")
"""The devkit trees here hold 5 of the ground truth's images (the others are counted, not fatal)."""


def _devkit_tree(
    tmp_path: Path, demo_root: Path
) -> tuple[Path, list[tuple[str, str, list]], list[str]]:
    """A devkit-style flat val folder whose ground truth uses a shuffled ILSVRC2012_ID order."""
    rows = demo_rows(demo_root, 5)
    order = list(np.random.default_rng(0).permutation(WNIDS))  # ILSVRC2012_ID order != sorted
    val = tmp_path / "val"
    boxes = val / "bbox"  # inside the root: DVC tracks the root as ingest's dependency
    val.mkdir()
    boxes.mkdir()
    truth = {}
    for image_id, wnid, _ in rows:
        shutil.copy(demo_image(demo_root, image_id), val)
        shutil.copy(demo_xml(demo_root, image_id), boxes)
        truth[int(image_id.rsplit("_", 1)[1])] = order.index(wnid) + 1
    lines = [str(truth.get(i, 1)) for i in range(1, max(truth) + 1)]
    (val / "ILSVRC2012_validation_ground_truth.txt").write_text("\n".join(lines) + "\n")
    return val, rows, order


def test_devkit_with_synset_list(tmp_path: Path, demo_root: Path) -> None:
    val, rows, order = _devkit_tree(tmp_path, demo_root)
    synsets = val / "synsets.txt"
    synsets.write_text("\n".join(order) + "\n")
    source = split_source(
        split_entry(root=str(val), layout="devkit", synsets=str(synsets), boxes=str(val / "bbox"))
    )
    manifest, stats = build_manifest(source, config=SPARSE)
    assert list(manifest["wnid"]) == [wnid for _, wnid, _ in rows]
    lines = len((val / "ILSVRC2012_validation_ground_truth.txt").read_text().splitlines())
    assert stats["label_rows_without_image"] == lines - 5
    assert [[list(b) for b in bs] for bs in manifest["boxes"]] == [b for _, _, b in rows]


def test_devkit_with_meta_mat(tmp_path: Path, demo_root: Path) -> None:
    from scipy.io import savemat

    val, rows, order = _devkit_tree(tmp_path, demo_root)
    synsets = np.zeros(
        len(order), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")]
    )
    for k, wnid in enumerate(order):
        synsets[k] = (k + 1, wnid, 0)
    savemat(tmp_path / "meta.mat", {"synsets": synsets})
    manifest, _ = build_manifest(
        Source(val, "devkit", synsets=tmp_path / "meta.mat"), config=SPARSE
    )
    assert list(manifest["wnid"]) == [wnid for _, wnid, _ in rows]


def test_devkit_inputs_where_the_official_downloads_put_them(
    tmp_path: Path, demo_root: Path
) -> None:
    """ILSVRC2012_img_val (read-only, images only), ILSVRC2012_devkit_t12/data/ (meta.mat and the
    ground truth) and ILSVRC2012_bbox_val: three folders side by side, nothing moved."""
    val, rows, order = _devkit_tree(tmp_path, demo_root)
    data = tmp_path / "ILSVRC2012_devkit_t12/data"
    data.mkdir(parents=True)
    (val / "ILSVRC2012_validation_ground_truth.txt").rename(
        data / "ILSVRC2012_validation_ground_truth.txt"
    )
    (data / "synsets.txt").write_text("\n".join(order) + "\n")
    (val / "bbox").rename(tmp_path / "ILSVRC2012_bbox_val")
    val.chmod(0o555)
    try:
        source = Source(
            val, "devkit", synsets=data / "synsets.txt", boxes=tmp_path / "ILSVRC2012_bbox_val"
        )
        manifest, stats = build_manifest(source, config=SPARSE)
    finally:
        val.chmod(0o755)
    assert list(manifest["wnid"]) == [wnid for _, wnid, _ in rows]
    assert [[list(b) for b in bs] for bs in manifest["boxes"]] == [b for _, _, b in rows]
    assert stats["label_rows_without_image"] > 0  # counted from the ground truth in data/


def test_devkit_without_its_ground_truth_says_where_it_comes_from(
    tmp_path: Path, demo_root: Path
) -> None:
    val, _rows, order = _devkit_tree(tmp_path, demo_root)
    (val / "ILSVRC2012_validation_ground_truth.txt").unlink()
    (tmp_path / "synsets.txt").write_text("\n".join(order) + "\n")
    with pytest.raises(
        MissingInputError,
        match=r"not found beside .*synsets.txt nor in .*val: it "
        r"is the devkit's ground truth .* in data/ of ILSVRC2012_devkit_t12.tar.gz",
    ):
        read_source(Source(val, "devkit", synsets=tmp_path / "synsets.txt"))


def test_devkit_needs_synsets(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synsets"):
        read_source(Source(tmp_path, "devkit"))


def test_hf_parquet_shards(tmp_path: Path, demo_root: Path) -> None:
    rows = demo_rows(demo_root, 4)
    (tmp_path / "data").mkdir()
    images = [
        {"bytes": demo_image(demo_root, i).read_bytes(), "path": f"{i}.JPEG"} for i, _, _ in rows
    ]
    table = pa.table({"image": images, "label": [WNIDS.index(w) for _, w, _ in rows]})
    pq.write_table(table, tmp_path / "data" / "validation-00000-of-00001.parquet")
    manifest, stats = build_manifest(Source(tmp_path, "hf-parquet", "validation"))
    assert stats["usable"] == 4
    assert list(manifest["image_id"]) == [i for i, _, _ in rows]
    assert list(manifest["path"]) == [
        f"data/validation-00000-of-00001.parquet#{k}" for k in range(4)
    ]
    assert list(manifest["width"]) == [227] * 4


def test_unknown_layout_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown layout 'zip'"):
        read_source(Source(tmp_path, "zip"))


def test_broken_symlinks_are_rows_with_a_reason_not_silently_left_out(
    tmp_path: Path, demo_root: Path
) -> None:
    ((image_id, wnid, _),) = demo_rows(demo_root, 1)
    folder = tmp_path / wnid
    folder.mkdir()
    shutil.copy(demo_image(demo_root, image_id), folder / "good.JPEG")
    (folder / "dangling.JPEG").symlink_to(tmp_path / "gone.JPEG")
    (folder / "loop.JPEG").symlink_to(folder / "loop.JPEG")
    (folder / "notes.txt").write_text("not an image")
    manifest, stats = build_manifest(Source(tmp_path, "imagefolder"))
    reasons = dict(zip(manifest["image_id"], manifest["skip_reason"]))
    assert stats == {**stats, "files_found": 3, "rows": 3, "usable": 1, "skipped": 2}
    assert (
        reasons["dangling"]
        == f"dangling symlink: dangling.JPEG -> {tmp_path / 'gone.JPEG'} does not exist"
    )
    assert (
        reasons["loop"].startswith("broken symlink: loop.JPEG -> ")
        and "symbolic links" in reasons["loop"]
    )
    assert set(manifest.loc[manifest["skip_reason"].notna(), "wnid"]) == {wnid}


def _folder_with_boxes(tmp_path: Path, demo_root: Path, n: int, nested: bool) -> list:
    rows = demo_rows(demo_root, n)
    for image_id, wnid, _ in rows:
        (tmp_path / "images" / wnid).mkdir(parents=True, exist_ok=True)
        shutil.copy(demo_image(demo_root, image_id), tmp_path / "images" / wnid)
        xml = tmp_path / "images" / "bbox" / (wnid if nested else "") / f"{image_id}.xml"
        xml.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(demo_xml(demo_root, image_id), xml)
    return rows


@pytest.mark.parametrize("nested", [True, False])
def test_imagefolder_reads_a_boxes_folder(tmp_path: Path, demo_root: Path, nested: bool) -> None:
    rows = _folder_with_boxes(tmp_path, demo_root, 4, nested)
    source = split_source(
        split_entry(
            root=str(tmp_path / "images"),
            layout="imagefolder",
            boxes=str(tmp_path / "images" / "bbox"),
        )
    )
    manifest, stats = build_manifest(source)
    assert stats["with_boxes"] == 4
    expected = {image_id: boxes for image_id, _, boxes in rows}
    for row in manifest.itertuples():
        assert [list(b) for b in row.boxes] == expected[row.image_id]


def test_hf_parquet_reads_a_boxes_folder_by_image_id(tmp_path: Path, demo_root: Path) -> None:
    rows = _folder_with_boxes(tmp_path, demo_root, 3, nested=False)
    (tmp_path / "hub" / "data").mkdir(parents=True)
    images = [
        {"bytes": demo_image(demo_root, i).read_bytes(), "path": f"{i}.JPEG"} for i, _, _ in rows
    ]
    table = pa.table({"image": images, "label": [WNIDS.index(w) for _, w, _ in rows]})
    pq.write_table(table, tmp_path / "hub" / "data" / "validation-00000-of-00001.parquet")
    manifest, _ = build_manifest(
        Source(tmp_path / "hub", "hf-parquet", "validation", boxes=tmp_path / "images" / "bbox")
    )
    assert [[list(b) for b in bs] for bs in manifest["boxes"]] == [b for _, _, b in rows]


def split_entry(name: str = "val", **keys: object) -> SplitEntry:
    """The `splits.<name>` entry holding `keys`."""
    return SplitEntry.from_params({"splits": {name: keys}}, name)


@pytest.mark.parametrize(
    "entry, message",
    [
        (
            {"layout": "imagenetv2", "boxes": "bbox"},
            r"`splits.v2.boxes` is set, but layout 'imagenetv2' has no boxes",
        ),
        (
            {"layout": "kaggle", "boxes": "bbox"},
            r"layout 'kaggle' reads its boxes from LOC_<subset>_solution.csv",
        ),
        (
            {"layout": "imagefolder", "synsets": "s.txt"},
            r"`splits.v2.synsets` is set, but layout 'imagefolder'",
        ),
        (
            {"layout": "hf-parquet", "synsets": "s.txt"},
            r"layout 'hf-parquet' does not read a synset list",
        ),
        ({"layout": "zip"}, r"`splits.v2.layout` must be one of 'kaggle', 'devkit', 'imagefolder'"),
        ({"layout": "kaggle", "limit": 0}, r"`splits.v2.limit` must be an int >= 1, got 0"),
        (
            {"layout": "kaggle", "boxs": "x"},
            r"`splits.v2` has an unknown key 'boxs'; did you mean 'boxes'",
        ),
        ({"layout": "kaggle", "root": None}, r"`splits.v2.root` must be a string, got None"),
    ],
)
def test_split_entry_refuses_keys_the_layout_would_ignore(entry: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        split_source(split_entry("v2", **{"root": "/data/x", **entry}))


def test_split_entry_without_root_names_the_key() -> None:
    with pytest.raises(
        ConfigError, match=r"`splits.val` lacks the key 'root'; add it \(a string\)"
    ):
        split_entry(layout="kaggle")


def test_split_entry_accepts_the_keys_other_stages_read() -> None:
    source = split_source(
        split_entry(
            root="r",
            layout="kaggle",
            subset=None,
            labels="i/v.parquet",
            models=["a", "b"],
            predictions="out-of-fold",
            limit=300,
        )
    )
    assert source == Source(Path("r"), "kaggle", "val", limit=300, where="splits.val")


def test_devkit_synsets_in_sorted_order_is_caught_by_the_box_xmls(
    tmp_path: Path, demo_root: Path
) -> None:
    val, _rows, order = _devkit_tree(tmp_path, demo_root)
    synsets = tmp_path / "sorted.txt"
    synsets.write_text(
        "\n".join(sorted(order)) + "\n"
    )  # the classic mistake: sorted, not ILSVRC2012_ID
    source = Source(val, "devkit", synsets=synsets, boxes=val / "bbox")
    with pytest.raises(
        InputError,
        match=r"5 of 5 images with a box XML are labelled with a wnid their "
        r"XML does not name \(e.g. .*ILSVRC2012_val_\d+.JPEG is "
        r"labelled n\d+ but its box XML .*bbox/ILSVRC2012_val_\d+.xml "
        r"names n\d+\): the synset list .*sorted.txt maps",
    ):
        build_manifest(source)


def test_devkit_boxes_folder_must_exist(tmp_path: Path, demo_root: Path) -> None:
    val, _, order = _devkit_tree(tmp_path, demo_root)
    (tmp_path / "synsets.txt").write_text("\n".join(order) + "\n")
    with pytest.raises(MissingInputError, match="boxes folder .*nowhere does not exist"):
        read_source(
            Source(val, "devkit", synsets=tmp_path / "synsets.txt", boxes=tmp_path / "nowhere")
        )


def test_devkit_ground_truth_line_that_is_not_an_id_is_a_skip_row(
    tmp_path: Path, demo_root: Path
) -> None:
    val, rows, order = _devkit_tree(tmp_path, demo_root)
    (tmp_path / "synsets.txt").write_text("\n".join(order) + "\n")
    truth = val / "ILSVRC2012_validation_ground_truth.txt"
    lines = truth.read_text().splitlines()
    number = int(rows[0][0].rsplit("_", 1)[1])
    lines[number - 1] = "abc"
    truth.write_text("\n".join(lines) + "\n")
    manifest, stats = build_manifest(
        Source(val, "devkit", synsets=tmp_path / "synsets.txt"), config=SPARSE
    )
    assert stats["skipped"] == 1 and stats["usable"] == 4
    assert manifest.loc[0, "skip_reason"] == (
        f"bad annotation: {truth} line {number}: 'abc' is not an ILSVRC2012_ID 1..1000"
    )
