"""Each raw layout, built in a temp dir from real demo images, reads back the right labels/boxes."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.formats import class_wnids
from stages.ingest import build_manifest
from stages.layouts import Source, parse_voc_xml, read_source, source_from_params

WNIDS = class_wnids()


def demo_rows(demo_root: Path, n: int) -> list[tuple[str, str, list[list[int]]]]:
    """(image_id, wnid, boxes) of the first n rows of the demo's LOC_val_solution.csv."""
    rows = []
    with open(demo_root / "LOC_val_solution.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            tokens = row["PredictionString"].split()
            boxes = [[int(v) for v in tokens[i + 1:i + 5]] for i in range(0, len(tokens), 5)]
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
        assert [list(b) for b in row.boxes] == [box for name, box in objects if name == wnid] == boxes


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


def _devkit_tree(tmp_path: Path, demo_root: Path) -> tuple[Path, list[tuple[str, str, list]], list[str]]:
    """A devkit-style flat val folder whose ground truth uses a shuffled ILSVRC2012_ID order."""
    rows = demo_rows(demo_root, 5)
    order = list(np.random.default_rng(0).permutation(WNIDS))  # ILSVRC2012_ID order != sorted
    val = tmp_path / "val"
    boxes = tmp_path / "bbox"
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
    synsets = tmp_path / "synsets.txt"
    synsets.write_text("\n".join(order) + "\n")
    source = source_from_params({"root": str(val), "layout": "devkit", "synsets": str(synsets),
                                 "boxes": str(tmp_path / "bbox")})
    manifest, _ = build_manifest(source)
    assert list(manifest["wnid"]) == [wnid for _, wnid, _ in rows]
    assert [[list(b) for b in bs] for bs in manifest["boxes"]] == [b for _, _, b in rows]


def test_devkit_with_meta_mat(tmp_path: Path, demo_root: Path) -> None:
    from scipy.io import savemat

    val, rows, order = _devkit_tree(tmp_path, demo_root)
    synsets = np.zeros(len(order), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")])
    for k, wnid in enumerate(order):
        synsets[k] = (k + 1, wnid, 0)
    savemat(tmp_path / "meta.mat", {"synsets": synsets})
    manifest, _ = build_manifest(Source(val, "devkit", synsets=tmp_path / "meta.mat"))
    assert list(manifest["wnid"]) == [wnid for _, wnid, _ in rows]


def test_devkit_needs_synsets(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synsets"):
        read_source(Source(tmp_path, "devkit"))


def test_hf_parquet_shards(tmp_path: Path, demo_root: Path) -> None:
    rows = demo_rows(demo_root, 4)
    (tmp_path / "data").mkdir()
    images = [{"bytes": demo_image(demo_root, i).read_bytes(), "path": f"{i}.JPEG"} for i, _, _ in rows]
    table = pa.table({"image": images, "label": [WNIDS.index(w) for _, w, _ in rows]})
    pq.write_table(table, tmp_path / "data" / "validation-00000-of-00001.parquet")
    manifest, stats = build_manifest(Source(tmp_path, "hf-parquet", "validation"))
    assert stats["usable"] == 4
    assert list(manifest["image_id"]) == [i for i, _, _ in rows]
    assert list(manifest["path"]) == [f"data/validation-00000-of-00001.parquet#{k}" for k in range(4)]
    assert list(manifest["width"]) == [227] * 4


def test_unknown_layout_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown layout 'zip'"):
        read_source(Source(tmp_path, "zip"))
