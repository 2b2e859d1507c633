"""Annotation files of the raw ImageNet layouts: PASCAL-VOC box XMLs, the Kaggle solution CSV, the
devkit's synset list and ground truth.

Every parser names the file and the row (or XML object) of a problem. A problem of one image's
annotation becomes a skip reason (`bad annotation: <file> ...`) that ingest records as a skip row
(or stops on under `ingest.on_bad_image: error`); a file unusable as a whole raises InputError.
"""

from __future__ import annotations

import csv
import logging
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from stages.contracts.errors import InputError, MissingInputError
from stages.contracts.formats import class_wnids

logger = logging.getLogger(__name__)

Objects = list[tuple[str, list[int]]]
"""[(wnid, [xmin, ymin, xmax, ymax]), ...] of one image."""


def parse_number(text: str | None, what: str) -> int:
    """An annotation coordinate or size -> int (truncated, as ImageNet's tools do).

    Raises:
        ValueError: missing, not a number, or not finite (naming `what`).
    """
    if text is None or not text.strip():
        raise ValueError(f"{what} is missing")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what} is {text.strip()!r}, not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{what} is {text.strip()!r}, not a finite number")
    return int(value)


def parse_voc_xml(path: Path) -> tuple[Objects, tuple[int, int] | None]:
    """A PASCAL-VOC XML -> ([(wnid, [xmin, ymin, xmax, ymax]), ...], (width, height) or None).

    Raises:
        InputError: not XML, or an object without a name or with a coordinate that is not a
            number (the message names the file and the object).
    """
    try:
        root = ET.parse(path).getroot()
        objects = []
        for index, obj in enumerate(root.iter("object"), 1):
            box = obj.find("bndbox")
            if box is None:
                continue
            name = (obj.findtext("name") or "").strip()
            if not name:
                raise ValueError(f"object {index} has no <name>")
            coords = [
                parse_number(box.findtext(tag), f"object {index} ({name}) <{tag}>")
                for tag in ("xmin", "ymin", "xmax", "ymax")
            ]
            objects.append((name, coords))
        size = root.find("size")
        dims = None
        if size is not None and size.findtext("width") and size.findtext("height"):
            dims = (
                parse_number(size.findtext("width"), "<size><width>"),
                parse_number(size.findtext("height"), "<size><height>"),
            )
    except ET.ParseError as error:
        raise InputError(f"{path}: not valid XML ({error})") from error
    except ValueError as error:
        raise InputError(f"{path}: {error}") from error
    return objects, dims


def read_box_xml(xml: Path | None, wnid: str | None) -> dict[str, Any]:
    """Found fields of an optional box XML: boxes of `wnid`, size, named wnids or a skip reason."""
    if xml is None or not xml.is_file():
        return {}
    try:
        objects, dims = parse_voc_xml(xml)
    except InputError as error:
        return {"skip_reason": f"bad annotation: {error}"}
    return {
        "boxes": [box for name, box in objects if name == wnid],
        "annotation_size": dims,
        "annotated": tuple(sorted({name for name, _ in objects})) or None,
        "annotation_file": xml,
    }


def box_xml_path(boxes: Path | None, wnid: str | None, stem: str) -> Path | None:
    """A bbox XML folder's file for an image: `<boxes>/<wnid>/<stem>.xml` (train) or
    `<boxes>/<stem>.xml` (val)."""
    if boxes is None:
        return None
    nested = boxes / (wnid or "") / f"{stem}.xml"
    return nested if wnid and nested.is_file() else boxes / f"{stem}.xml"


def prediction_string(value: str | None, where: str) -> Objects:
    """A Kaggle `PredictionString` ('wnid xmin ymin xmax ymax' groups) -> objects.

    Raises:
        ValueError: not groups of five, or a coordinate that is not a number (naming `where`).
    """
    tokens = (value or "").split()
    if not tokens or len(tokens) % 5:
        raise ValueError(
            f"{where}: PredictionString {value!r} is not groups of 'wnid xmin ymin xmax ymax'"
        )
    return [
        (
            tokens[i],
            [parse_number(v, f"{where}: {tokens[i]} coordinate") for v in tokens[i + 1 : i + 5]],
        )
        for i in range(0, len(tokens), 5)
    ]


def kaggle_solution(path: Path) -> dict[str, Objects | str]:
    """LOC_*_solution.csv -> image_id -> [(wnid, box), ...], or a skip reason for a bad row.

    Raises:
        InputError: the file as a whole is not the solution CSV (header, encoding, NUL bytes).
    """
    solution: dict[str, Objects | str] = {}
    lines: dict[str, int] = {}
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not {"ImageId", "PredictionString"} <= set(reader.fieldnames or ()):
                raise InputError(
                    f"{path}: the header must be 'ImageId,PredictionString', got "
                    f"{reader.fieldnames}; is this the Kaggle solution file?"
                )
            for row in reader:
                where = f"{path} line {reader.line_num}"
                image_id = (row.get("ImageId") or "").strip()
                if not image_id:
                    logger.warning("%s has no ImageId; the line is ignored", where)
                elif image_id in lines:
                    solution[image_id] = (
                        f"bad annotation: {path}: {image_id} is on line "
                        f"{lines[image_id]} and again on {where}"
                    )
                else:
                    lines[image_id] = reader.line_num
                    try:
                        solution[image_id] = prediction_string(row.get("PredictionString"), where)
                    except ValueError as error:
                        solution[image_id] = f"bad annotation: {error}"
    except (csv.Error, UnicodeDecodeError) as error:
        raise InputError(
            f"{path}: not a readable CSV ({error}); restore the file from the Kaggle download"
        ) from error
    return solution


def devkit_synsets(path: Path) -> list[str]:
    """ILSVRC2012_ID order (1..1000) of the wnids, from the devkit's meta.mat or a text list.

    Raises:
        InputError: the file is not 1000 distinct ILSVRC2012 wnids (naming the file and the fix).
    """
    if not path.is_file():
        raise MissingInputError(
            f"synset file {path} does not exist; set splits.<split>.synsets to "
            "the devkit's data/meta.mat"
        )
    errors: tuple[type[Exception], ...] = (OSError, ValueError, KeyError, IndexError, TypeError)
    if path.suffix == ".mat":
        from scipy.io.matlab import MatReadError

        errors += (MatReadError,)
    try:
        if path.suffix == ".mat":
            from scipy.io import loadmat

            meta = loadmat(path, squeeze_me=True)["synsets"]
            by_id = {
                int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in meta if int(s["num_children"]) == 0
            }
            wnids = [by_id[i] for i in range(1, len(by_id) + 1)]
        else:
            wnids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    except errors as error:
        raise InputError(
            f"{path}: not a devkit meta.mat or synset list ({type(error).__name__}: {error})"
        ) from error
    known = set(class_wnids())
    unknown = [w for w in wnids if w not in known]
    if len(wnids) != len(known) or len(set(wnids)) != len(wnids) or unknown:
        raise InputError(
            f"{path}: expected the 1000 distinct ILSVRC2012 wnids in ILSVRC2012_ID "
            f"order, got {len(wnids)} lines ({len(set(wnids))} distinct"
            f"{', unknown e.g. ' + repr(unknown[0]) if unknown else ''})"
        )
    if wnids == sorted(wnids):
        logger.warning(
            "%s lists the wnids in sorted order; the devkit's ground truth uses "
            "ILSVRC2012_ID order (meta.mat). Labels are checked against box XMLs when "
            "splits.<split>.boxes is set",
            path,
        )
    return wnids


def ground_truth(path: Path, count: int) -> list[int | str]:
    """The devkit ground truth: per line (= image number) an ILSVRC2012_ID, or a skip reason."""
    lines = path.read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    ids: list[int | str] = []
    for line_number, line in enumerate(lines, 1):
        text = line.strip()
        value = int(text) if text.isdigit() else 0
        ids.append(
            value
            if 1 <= value <= count
            else f"bad annotation: {path} line {line_number}: "
            f"{text!r} is not an ILSVRC2012_ID 1..{count}"
        )
    return ids
