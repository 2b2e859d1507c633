"""Readers for the raw ImageNet layouts. Each lists every image file it finds as a `Found` record.

A reader only lists files, labels and boxes; `ingest` probes the pixels. Problems that make the
whole source unusable (a missing root, an unknown layout, a synset list that is not 1000 wnids,
duplicate ids) raise a `UserError` naming the file; problems of one file (a dangling symlink, a
malformed annotation XML or CSV row, a ground-truth line that is not a class id) become that
record's `skip_reason`, which names the file and the row.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from stages.contracts.config import positive, require
from stages.contracts.errors import ConfigError, InputError, MissingInputError
from stages.contracts.formats import class_wnids
from stages.contracts.splits import SplitEntry
from stages.sources.annotations import (
    box_xml_path,
    devkit_synsets,
    ground_truth,
    kaggle_solution,
    parse_voc_xml,
    read_box_xml,
)

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
SYNSETS_LAYOUTS = ("devkit",)
"""Layouts whose labels go through `synsets` (the others carry wnids or sorted-order indices)."""
BOXES_LAYOUTS = ("devkit", "imagefolder", "hf-parquet")
"""Layouts that read `boxes` (a bbox XML folder); kaggle has its own, ImageNetV2 has none."""


@dataclass(frozen=True)
class Source:
    """Where and how a split is laid out (built from the `splits.<name>` params entry).

    limit: keep only the first `limit` images in sorted image_id order (None = all).
    where: the params entry's name, for messages.
    """

    root: Path
    layout: str
    subset: str = "val"
    synsets: Path | None = None
    boxes: Path | None = None
    limit: int | None = None
    where: str = "splits.<split>"


def _check_entry(source: Source) -> None:
    """Refuse keys the layout would silently ignore (ConfigError naming the key and the fix)."""
    where = source.where
    require(source.layout in LAYOUTS, f"{where}.layout", f"one of {sorted(LAYOUTS)}", source.layout)
    positive(f"{where}.limit", source.limit)
    if source.synsets and source.layout not in SYNSETS_LAYOUTS:
        raise ConfigError(
            f"params.yaml `{where}.synsets` is set, but layout {source.layout!r} "
            "does not read a synset list (its labels are wnids or sorted-order "
            "indices); remove the key (it is for layout devkit)"
        )
    if source.boxes and source.layout not in BOXES_LAYOUTS:
        why = (
            "reads its boxes from LOC_<subset>_solution.csv and ILSVRC/Annotations"
            if source.layout == "kaggle"
            else "has no boxes"
        )
        raise ConfigError(
            f"params.yaml `{where}.boxes` is set, but layout {source.layout!r} "
            f"{why}; remove the key (layouts reading a bbox XML folder: "
            f"{', '.join(BOXES_LAYOUTS)})"
        )


def split_source(entry: SplitEntry) -> Source:
    """The Source of a split entry (its keys root, layout, subset, synsets, boxes, limit).

    Raises:
        ConfigError: a missing or mistyped key, or a key the layout does not read.
    """
    synsets, boxes = entry.synsets, entry.boxes
    source = Source(
        Path(entry.root),
        entry.layout,
        entry.subset or "val",
        synsets=Path(synsets) if synsets else None,
        boxes=Path(boxes) if boxes else None,
        limit=entry.limit,
        where=entry.where,
    )
    _check_entry(source)
    return source


@dataclass
class Found:
    """One image file found in a source, before its pixels are checked.

    annotated: the wnids its box XML (`annotation_file`) names (None: no XML read), checked by
    ingest against `wnid` to catch a wrong label mapping.
    """

    image_id: str
    path: str
    wnid: str | None
    boxes: list[list[int]] = field(default_factory=list)
    skip_reason: str | None = None
    annotation_size: tuple[int, int] | None = None
    annotated: tuple[str, ...] | None = None
    annotation_file: Path | None = None


def _images_in(folder: Path) -> list[tuple[Path, str | None]]:
    """Image files of a folder, sorted, each with a skip reason for a broken symlink (dangling or
    a loop), which would otherwise vanish from the listing."""
    images: list[tuple[Path, str | None]] = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.is_file():
            images.append((path, None))
        elif path.is_symlink():
            images.append((path, _broken_link(path)))
    return images


def _broken_link(path: Path) -> str:
    target = os.readlink(path)
    try:
        path.stat()
    except FileNotFoundError:
        return f"dangling symlink: {path.name} -> {target} does not exist"
    except OSError as error:
        return f"broken symlink: {path.name} -> {target}: {error.strerror or error}"
    return f"not a file: {path.name} -> {target}"


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise MissingInputError(f"{what} folder {path} does not exist")
    return path


def read_kaggle(source: Source) -> list[Found]:
    """Kaggle ILSVRC layout: val labels from LOC_val_solution.csv (else the XML folder); train
    labels from the synset folders, boxes from Annotations/CLS-LOC/train/<wnid>/*.xml."""
    data = _require_dir(source.root / "ILSVRC" / "Data" / "CLS-LOC" / source.subset, "image")
    annotations = source.root / "ILSVRC" / "Annotations" / "CLS-LOC" / source.subset
    if source.subset == "train":
        found = read_imagefolder(Source(data, "imagefolder", boxes=annotations))
        prefix = data.relative_to(source.root).as_posix()
        for record in found:
            record.path = f"{prefix}/{record.path}"
        return found
    solution_csv = source.root / f"LOC_{source.subset}_solution.csv"
    solution = kaggle_solution(solution_csv) if solution_csv.is_file() else {}
    found = []
    for image, broken in _images_in(data):
        image_id, rel = image.stem, image.relative_to(source.root).as_posix()
        entry = solution.get(image_id)
        xml, dims = annotations / f"{image_id}.xml", None
        if entry is None and xml.is_file():
            try:
                entry, dims = parse_voc_xml(xml)
            except InputError as error:
                entry = f"bad annotation: {error}"
        if isinstance(entry, str) or not entry:
            reason = (
                entry
                if isinstance(entry, str) and entry
                else f"no label: {image_id} is neither in {solution_csv.name} nor has "
                f"an annotation {xml}"
            )
            found.append(Found(image_id, rel, None, skip_reason=reason))
            continue
        wnid = entry[0][0]
        found.append(
            Found(
                image_id,
                rel,
                wnid,
                [box for name, box in entry if name == wnid],
                skip_reason=broken,
                annotation_size=dims,
            )
        )
    return found


def read_imagefolder(source: Source) -> list[Found]:
    """`<wnid>/<file>` folders; boxes from `boxes/<wnid>/<stem>.xml` (or `boxes/<stem>.xml`)."""
    root = _require_dir(source.root, "image")
    found = []
    boxes = source.boxes.absolute() if source.boxes else None
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.absolute() != boxes):
        for image, broken in _images_in(folder):
            fields = read_box_xml(box_xml_path(source.boxes, folder.name, image.stem), folder.name)
            if broken:
                fields["skip_reason"] = broken
            found.append(
                Found(image.stem, image.relative_to(source.root).as_posix(), folder.name, **fields)
            )
    return found


def read_imagenetv2(source: Source) -> list[Found]:
    """ImageNetV2: `<class index 0..999>/<hash>.jpeg`; image ids are `<index>/<hash>`."""
    root = _require_dir(source.root, "image")
    wnids = class_wnids()
    found = []
    folders = [p for p in root.iterdir() if p.is_dir()]
    for folder in sorted(
        folders,
        key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name),
    ):
        if not folder.name.isdigit() or not 0 <= int(folder.name) < len(wnids):
            raise InputError(
                f"{folder}: ImageNetV2 class folders are named 0..999, got {folder.name!r}"
            )
        for image, broken in _images_in(folder):
            rel = image.relative_to(root).as_posix()
            found.append(
                Found(
                    f"{folder.name}/{image.stem}", rel, wnids[int(folder.name)], skip_reason=broken
                )
            )
    return found


GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"


def devkit_ground_truth(source: Source) -> Path | None:
    """Where the devkit's ground truth lies: beside `synsets` (the devkit's `data/` folder holds
    both meta.mat and the ground truth, as ILSVRC2012_devkit_t12.tar.gz unpacks), else in the image
    root; None when neither holds it."""
    folders = ([source.synsets.parent] if source.synsets is not None else []) + [source.root]
    return next((f / GROUND_TRUTH for f in folders if (f / GROUND_TRUTH).is_file()), None)


def read_devkit(source: Source) -> list[Found]:
    """Official devkit: flat val folder + `ILSVRC2012_validation_ground_truth.txt` (ILSVRC2012_IDs,
    mapped through `synsets` = meta.mat or a synset list in ILSVRC2012_ID order), optional bbox
    XMLs. Every input may lie where the official downloads put it (the root may be read-only)."""
    root = _require_dir(source.root, "image")
    if source.synsets is None:
        raise ConfigError(
            f"layout devkit needs params.yaml `{source.where}.synsets`: the devkit's "
            "data/meta.mat (ILSVRC2012_devkit_t12.tar.gz) or a synset list in ILSVRC2012_ID order"
        )
    truth = devkit_ground_truth(source)
    if truth is None:
        raise MissingInputError(
            f"{GROUND_TRUTH} not found beside {source.synsets} nor in {source.root}: it is the "
            "devkit's ground truth (one ILSVRC2012_ID per line in image order), in data/ of "
            f"ILSVRC2012_devkit_t12.tar.gz; set `{source.where}.synsets` to that folder's "
            "meta.mat, or put the file in the image folder"
        )
    order = devkit_synsets(Path(source.synsets))
    ids = ground_truth(truth, len(order))
    found = []
    for image, broken in _images_in(root):
        tail = image.stem.rsplit("_", 1)[-1]
        number = int(tail) if tail.isdigit() else 0
        rel = image.relative_to(root).as_posix()
        if not 1 <= number <= len(ids):
            found.append(
                Found(
                    image.stem,
                    rel,
                    None,
                    skip_reason=f"no label: {image.name} has no "
                    f"line in {truth.name} ({len(ids)} lines)",
                )
            )
            continue
        if isinstance(ids[number - 1], str):
            found.append(Found(image.stem, rel, None, skip_reason=str(ids[number - 1])))
            continue
        wnid = order[int(ids[number - 1]) - 1]
        fields = read_box_xml(box_xml_path(source.boxes, None, image.stem), wnid)
        if broken:
            fields["skip_reason"] = broken
        found.append(Found(image.stem, rel, wnid, **fields))
    return found


def read_hf_parquet(source: Source) -> list[Found]:
    """A local copy of the Hub's `ILSVRC/imagenet-1k` parquet shards (`data/<subset>-*.parquet`,
    columns image{bytes,path}, label). Paths are `<shard>#<row>` and decoded from the shard; boxes
    from an optional bbox XML folder by image id."""
    import pyarrow.parquet as pq

    root = _require_dir(source.root, "parquet")
    shards = sorted(root.rglob(f"{source.subset}-*.parquet")) or sorted(
        root.rglob(f"*{source.subset}*.parquet")
    )
    if not shards:
        raise MissingInputError(f"no {source.subset}-*.parquet shards under {root}")
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
                found.append(
                    Found(
                        image_id,
                        f"{rel}#{row}",
                        None,
                        skip_reason=f"no label: row {row} of {rel} has label {label!r}",
                    )
                )
                continue
            wnid = wnids[int(label)]
            found.append(
                Found(
                    image_id,
                    f"{rel}#{row}",
                    wnid,
                    **read_box_xml(box_xml_path(source.boxes, wnid, image_id), wnid),
                )
            )
    return found


def labelled_without_image(source: Source, found: list[Found]) -> tuple[Path | None, list[str]]:
    """The source's label file and the image ids it labels that no image file was found for:
    rows of the Kaggle `LOC_<subset>_solution.csv` (val), lines of the devkit's ground truth
    (`ILSVRC2012_val_<line number>`). Layouts whose labels come from their folders or rows
    (imagefolder, ImageNetV2, Kaggle train, hf-parquet) have none: (None, [])."""
    have = {record.image_id for record in found}
    if source.layout == "kaggle" and source.subset != "train":
        path = source.root / f"LOC_{source.subset}_solution.csv"
        if not path.is_file():
            return None, []
        return path, sorted(set(kaggle_solution(path)) - have)
    if source.layout == "devkit":
        path = devkit_ground_truth(source) or source.root / GROUND_TRUTH
        lines = len(ground_truth(path, 1000)) if path.is_file() else 0
        tails = (r.image_id.rsplit("_", 1)[-1] for r in found)
        numbers = {int(tail) for tail in tails if tail.isdigit()}
        return path, [f"ILSVRC2012_val_{n:08d}" for n in range(1, lines + 1) if n not in numbers]
    return None, []


LAYOUTS: dict[str, Callable[[Source], list[Found]]] = {
    "kaggle": read_kaggle,
    "devkit": read_devkit,
    "imagefolder": read_imagefolder,
    "imagenetv2": read_imagenetv2,
    "hf-parquet": read_hf_parquet,
}


def read_source(source: Source) -> list[Found]:
    """List every image of a source with its layout's reader; checks ids are unique.

    Raises:
        ConfigError: an unknown layout. MissingInputError: the root (or boxes folder) is absent.
        InputError: duplicate image ids, or a source file unusable as a whole.
    """
    if source.layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {source.layout!r}; choose one of {sorted(LAYOUTS)}")
    if not source.root.exists():
        raise MissingInputError(
            f"split root {source.root} does not exist; set params.yaml "
            f"`{source.where}.root` to the raw split's folder"
        )
    if source.boxes is not None and not Path(source.boxes).is_dir():
        raise MissingInputError(
            f"boxes folder {source.boxes} does not exist; set params.yaml "
            f"`{source.where}.boxes` to the bbox XML folder, or null"
        )
    found = LAYOUTS[source.layout](source)
    seen: dict[str, str] = {}
    for record in found:
        if record.image_id in seen:
            raise InputError(
                f"duplicate image id {record.image_id!r}: {seen[record.image_id]} and "
                f"{record.path} under {source.root}; image ids must be unique"
            )
        seen[record.image_id] = record.path
    return found
