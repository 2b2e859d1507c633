"""Readers for the raw ImageNet layouts. Each lists every image file it finds as a `Found` record.

A reader only lists files, labels and boxes; `ingest` probes the pixels. Problems that make the
whole source unusable (a missing root, an unknown wnid, duplicate ids) raise ValueError or
FileNotFoundError naming the file; problems of one file become that record's `skip_reason`.
"""

from __future__ import annotations

import csv
import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from stages.formats import class_wnids

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}


@dataclass(frozen=True)
class Source:
    """Where and how a split is laid out (the `splits.<name>` params section)."""

    root: Path
    layout: str
    subset: str = "val"
    synsets: Path | None = None
    boxes: Path | None = None


@dataclass
class Found:
    """One image file found in a source, before its pixels are checked."""

    image_id: str
    path: str
    wnid: str | None
    boxes: list[list[int]] = field(default_factory=list)
    skip_reason: str | None = None
    annotation_size: tuple[int, int] | None = None


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what} folder {path} does not exist")
    return path


def parse_voc_xml(path: Path) -> tuple[list[tuple[str, list[int]]], tuple[int, int] | None]:
    """A PASCAL-VOC XML -> ([(wnid, [xmin, ymin, xmax, ymax]), ...], (width, height) or None)."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as error:
        raise ValueError(f"{path}: not valid XML ({error})") from error
    objects = []
    for obj in root.iter("object"):
        box = obj.find("bndbox")
        if box is None:
            continue
        coords = [int(float(box.findtext(tag, "nan"))) for tag in ("xmin", "ymin", "xmax", "ymax")]
        objects.append((obj.findtext("name", "").strip(), coords))
    size = root.find("size")
    dims = None
    if size is not None and size.findtext("width") and size.findtext("height"):
        dims = (int(size.findtext("width")), int(size.findtext("height")))
    return objects, dims


def _kaggle_solution(path: Path) -> dict[str, list[tuple[str, list[int]]]]:
    """LOC_*_solution.csv -> image_id -> [(wnid, box), ...]."""
    solution: dict[str, list[tuple[str, list[int]]]] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            tokens = row["PredictionString"].split()
            if len(tokens) % 5:
                raise ValueError(f"{path}: row {row['ImageId']} has a PredictionString that is not "
                                 "groups of 'wnid xmin ymin xmax ymax'")
            solution[row["ImageId"]] = [
                (tokens[i], [int(v) for v in tokens[i + 1:i + 5]]) for i in range(0, len(tokens), 5)
            ]
    return solution


def _boxes_for(objects: list[tuple[str, list[int]]], wnid: str | None) -> list[list[int]]:
    return [box for name, box in objects if name == wnid]


def read_kaggle(source: Source) -> list[Found]:
    """Kaggle ILSVRC layout: val labels from LOC_val_solution.csv (else the XML folder); train
    labels from the synset folders, boxes from Annotations/CLS-LOC/train/<wnid>/*.xml."""
    data = _require_dir(source.root / "ILSVRC" / "Data" / "CLS-LOC" / source.subset, "image")
    annotations = source.root / "ILSVRC" / "Annotations" / "CLS-LOC" / source.subset
    if source.subset == "train":
        found = read_imagefolder(Source(data, "imagefolder"), annotations=annotations)
        prefix = data.relative_to(source.root).as_posix()
        for record in found:
            record.path = f"{prefix}/{record.path}"
        return found
    solution_csv = source.root / f"LOC_{source.subset}_solution.csv"
    solution = _kaggle_solution(solution_csv) if solution_csv.is_file() else {}
    found = []
    for image in _images_in(data):
        image_id = image.stem
        objects = solution.get(image_id)
        dims = None
        xml = annotations / f"{image_id}.xml"
        if objects is None and xml.is_file():
            objects, dims = parse_voc_xml(xml)
        if not objects:
            found.append(Found(image_id, image.relative_to(source.root).as_posix(), None,
                               skip_reason=f"no label: {image_id} is neither in {solution_csv.name} "
                                           f"nor has an annotation {xml}"))
            continue
        wnid = objects[0][0]
        found.append(Found(image_id, image.relative_to(source.root).as_posix(), wnid,
                           _boxes_for(objects, wnid), annotation_size=dims))
    return found


def read_imagefolder(source: Source, *, annotations: Path | None = None) -> list[Found]:
    """`<wnid>/<file>` folders; boxes from `<annotations>/<wnid>/<stem>.xml` where present."""
    root = _require_dir(source.root, "image")
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for image in _images_in(folder):
            boxes: list[list[int]] = []
            dims = None
            xml = annotations / folder.name / f"{image.stem}.xml" if annotations else None
            if xml is not None and xml.is_file():
                objects, dims = parse_voc_xml(xml)
                boxes = _boxes_for(objects, folder.name)
            found.append(Found(image.stem, image.relative_to(source.root).as_posix(), folder.name,
                               boxes, annotation_size=dims))
    return found


def read_imagenetv2(source: Source) -> list[Found]:
    """ImageNetV2: `<class index 0..999>/<hash>.jpeg`; image ids are `<index>/<hash>`."""
    root = _require_dir(source.root, "image")
    wnids = class_wnids()
    found = []
    folders = [p for p in root.iterdir() if p.is_dir()]
    for folder in sorted(folders, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name)):
        if not folder.name.isdigit() or not 0 <= int(folder.name) < len(wnids):
            raise ValueError(f"{folder}: ImageNetV2 class folders are named 0..999, got {folder.name!r}")
        for image in _images_in(folder):
            rel = image.relative_to(root).as_posix()
            found.append(Found(f"{folder.name}/{image.stem}", rel, wnids[int(folder.name)]))
    return found


def _devkit_synsets(path: Path) -> list[str]:
    """ILSVRC2012_ID order (1..1000) of the wnids, from the devkit's meta.mat or a text list."""
    if path.suffix == ".mat":
        from scipy.io import loadmat

        meta = loadmat(path, squeeze_me=True)["synsets"]
        by_id = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in meta if int(s["num_children"]) == 0}
        return [by_id[i] for i in range(1, len(by_id) + 1)]
    wnids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    return wnids


def read_devkit(source: Source) -> list[Found]:
    """Official devkit: flat val folder + `ILSVRC2012_validation_ground_truth.txt` (ILSVRC2012_IDs,
    mapped through `synsets` = meta.mat or a synset list in ILSVRC2012_ID order), optional bbox XMLs."""
    root = _require_dir(source.root, "image")
    truth = source.root / "ILSVRC2012_validation_ground_truth.txt"
    if source.synsets is None:
        raise ValueError("layout devkit needs splits.<split>.synsets: the devkit's meta.mat or a "
                         "synset list in ILSVRC2012_ID order")
    if not truth.is_file():
        raise FileNotFoundError(f"{truth} not found (the devkit's ground truth, one ILSVRC2012_ID "
                                "per line in image order)")
    order = _devkit_synsets(Path(source.synsets))
    ids = [int(v) for v in truth.read_text().split()]
    found = []
    for image in _images_in(root):
        number = int(image.stem.rsplit("_", 1)[-1]) if image.stem.rsplit("_", 1)[-1].isdigit() else 0
        rel = image.relative_to(root).as_posix()
        if not 1 <= number <= len(ids):
            found.append(Found(image.stem, rel, None, skip_reason=f"no label: {image.name} has no "
                               f"line in {truth.name} ({len(ids)} lines)"))
            continue
        wnid = order[ids[number - 1] - 1]
        boxes: list[list[int]] = []
        dims = None
        xml = Path(source.boxes) / f"{image.stem}.xml" if source.boxes else None
        if xml is not None and xml.is_file():
            objects, dims = parse_voc_xml(xml)
            boxes = _boxes_for(objects, wnid)
        found.append(Found(image.stem, rel, wnid, boxes, annotation_size=dims))
    return found


def read_hf_parquet(source: Source) -> list[Found]:
    """A local copy of the Hub's `ILSVRC/imagenet-1k` parquet shards (`data/<subset>-*.parquet`,
    columns image{bytes,path}, label). Paths are `<shard>#<row>` and decoded from the shard."""
    import pyarrow.parquet as pq

    root = _require_dir(source.root, "parquet")
    shards = sorted(root.rglob(f"{source.subset}-*.parquet")) or sorted(root.rglob(f"*{source.subset}*.parquet"))
    if not shards:
        raise FileNotFoundError(f"no {source.subset}-*.parquet shards under {root}")
    wnids = class_wnids()
    found = []
    for shard in shards:
        table = pq.read_table(shard, columns=["image", "label"])
        paths = table.column("image").combine_chunks().field("path").to_pylist()
        labels = table.column("label").to_pylist()
        rel = shard.relative_to(root).as_posix()
        for row, (name, label) in enumerate(zip(paths, labels)):
            image_id = Path(name or f"{shard.stem}_{row}").stem
            if label is None or not 0 <= int(label) < len(wnids):
                found.append(Found(image_id, f"{rel}#{row}", None,
                                   skip_reason=f"no label: row {row} of {rel} has label {label!r}"))
                continue
            found.append(Found(image_id, f"{rel}#{row}", wnids[int(label)]))
    return found


LAYOUTS: dict[str, Callable[[Source], list[Found]]] = {
    "kaggle": read_kaggle,
    "devkit": read_devkit,
    "imagefolder": read_imagefolder,
    "imagenetv2": read_imagenetv2,
    "hf-parquet": read_hf_parquet,
}


def read_source(source: Source) -> list[Found]:
    """List every image of a source with its layout's reader; checks ids are unique."""
    if source.layout not in LAYOUTS:
        raise ValueError(f"unknown layout {source.layout!r}; choose one of {sorted(LAYOUTS)}")
    if not source.root.exists():
        raise FileNotFoundError(f"split root {source.root} does not exist; set splits.<split>.root")
    found = LAYOUTS[source.layout](source)
    seen: dict[str, str] = {}
    for record in found:
        if record.image_id in seen:
            raise ValueError(f"duplicate image id {record.image_id!r}: {seen[record.image_id]} and "
                             f"{record.path} under {source.root}; image ids must be unique")
        seen[record.image_id] = record.path
    return found


def source_from_params(entry: dict[str, Any]) -> Source:
    """A Source from a `splits.<name>` params section."""
    optional = {k: Path(entry[k]) for k in ("synsets", "boxes") if entry.get(k)}
    return Source(Path(entry["root"]), entry["layout"], entry.get("subset") or "val", **optional)

