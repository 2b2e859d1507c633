"""A split's raw source -> its manifest: every image file found becomes one row.

Unreadable files (empty, truncated, not an image, a broken symlink, a malformed annotation) keep
their row with a `skip_reason` under `on_bad_image: skip`, or stop the stage naming the file under
`on_bad_image: error`; so manifest rows = files found - files left out by `limit`, and usable +
skipped = rows. Boxes stay in original-image pixels; a box that reaches outside the image is
clipped to it, and one with no area inside the image is dropped, each counted and logged. Labels
are checked against the wnids the box XMLs name: a wrong label mapping (a devkit synset list in
sorted order) stops the stage instead of mislabelling every image. An image whose shorter side is
below `min_size` pixels is a skip row (too small to carry a label), and label rows whose image file
is missing (a partial download) stop the stage or, under `on_missing_image: skip`, are counted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pandas as pd

from stages.contracts import formats
from stages.contracts.config import from_section, positive, require
from stages.contracts.errors import InputError
from stages.contracts.params import section
from stages.contracts.splits import Params
from stages.sources import layouts
from stages.sources.probes import ProbeCache, probe_files

logger = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("skip", "error")
MISSING_IMAGE_POLICIES = ("error", "skip")
"""`ingest.on_missing_image`: what a label row (a solution-CSV row, a ground-truth line) whose
image file is absent does: stop the stage (a partial download), or only be counted."""
MISSING_EXAMPLES = 10
"""Image ids of label rows without an image listed in the ingest metrics (and the error)."""


VERIFY_MODES = {"full": True, "header": False}


MISMATCH_LIMIT = 0.01
"""Above this fraction of the images with a box XML, labels that their XML does not name stop the
stage (a wrong label mapping); at or below it they are logged and counted."""


@dataclass(frozen=True)
class IngestConfig:
    """Options of the ingest stage (params.yaml `ingest:`)."""

    on_bad_image: str = "skip"
    verify: str = "full"
    workers: int = 2
    min_size: int = 16
    on_missing_image: str = "error"

    def __post_init__(self) -> None:
        require(
            self.on_bad_image in BAD_IMAGE_POLICIES,
            "ingest.on_bad_image",
            f"one of {', '.join(BAD_IMAGE_POLICIES)}",
            self.on_bad_image,
        )
        require(
            self.verify in VERIFY_MODES,
            "ingest.verify",
            f"one of {', '.join(VERIFY_MODES)}",
            self.verify,
        )
        positive("ingest.workers", self.workers)
        positive("ingest.min_size", self.min_size)
        require(
            self.on_missing_image in MISSING_IMAGE_POLICIES,
            "ingest.on_missing_image",
            f"one of {', '.join(MISSING_IMAGE_POLICIES)}",
            self.on_missing_image,
        )

    @classmethod
    def from_params(cls, params: Params) -> IngestConfig:
        """From params.yaml `ingest:` (ConfigError for unknown keys, with close matches)."""
        return from_section(cls, section(params, "ingest"), where="ingest")


def _clip_boxes(
    boxes: list[list[int]], width: int, height: int, where: str, counts: dict[str, int]
) -> list[list[int]]:
    kept = []
    for xmin, ymin, xmax, ymax in boxes:
        clipped = [max(0, xmin), max(0, ymin), min(width, xmax), min(height, ymax)]
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            counts["boxes_dropped"] += 1
            logger.warning(
                "%s: box %s has no area inside the %dx%d image; dropped",
                where,
                [xmin, ymin, xmax, ymax],
                width,
                height,
            )
            continue
        if clipped != [xmin, ymin, xmax, ymax]:
            counts["boxes_clipped"] += 1
            logger.warning(
                "%s: box %s reaches outside the %dx%d image; clipped to %s",
                where,
                [xmin, ymin, xmax, ymax],
                width,
                height,
                clipped,
            )
        kept.append(clipped)
    return kept


def _limit(found: list[layouts.Found], limit: int | None) -> list[layouts.Found]:
    """The first `limit` records in sorted image_id order, in layout order (all when None)."""
    if limit is None or len(found) <= limit:
        return found
    kept = set(sorted(record.image_id for record in found)[:limit])
    return [record for record in found if record.image_id in kept]


def _check_wnids(found: list[layouts.Found], source: layouts.Source) -> dict[str, int]:
    """Wnid -> label; InputError for a wnid outside the 1000 classes."""
    wnid_index = {wnid: index for index, wnid in enumerate(formats.class_wnids())}
    for record in found:
        if record.wnid is not None and record.wnid not in wnid_index:
            raise InputError(
                f"{source.root / record.path}: wnid {record.wnid!r} is not one of the "
                "1000 ILSVRC2012 classes"
            )
    return wnid_index


def check_labels_against_boxes(found: list[layouts.Found], source: layouts.Source) -> int:
    """Count images whose box XML names other wnids than their label; stop when they are more
    than MISMATCH_LIMIT of the images with an XML (a wrong label mapping mislabels nearly all).

    Raises:
        InputError: naming an example image, its XML, the synset file (devkit) and the fix.
    """
    annotated = [r for r in found if r.annotated and not r.skip_reason]
    wrong = [r for r in annotated if r.wnid not in (r.annotated or ())]
    if not wrong:
        return 0
    example = wrong[0]
    detail = (
        f"e.g. {source.root / example.path} is labelled {example.wnid} but its box XML "
        f"{example.annotation_file} names {', '.join(example.annotated or ())}"
    )
    if len(wrong) > MISMATCH_LIMIT * len(annotated):
        fix = (
            f"the synset list {source.synsets} maps the ground truth's ILSVRC2012_IDs to the "
            "wrong wnids: give the devkit's data/meta.mat (or a list in ILSVRC2012_ID order, "
            "not sorted) as `synsets`"
            if source.layout == "devkit"
            else "check that each image's label source and `boxes` folder belong to the same split"
        )
        raise InputError(
            f"{len(wrong)} of {len(annotated)} images with a box XML are labelled with "
            f"a wnid their XML does not name ({detail}): {fix}"
        )
    logger.warning(
        "%d of %d images with a box XML are labelled with a wnid their XML does not "
        "name (%s); they keep their label, without boxes",
        len(wrong),
        len(annotated),
        detail,
    )
    return len(wrong)


def build_manifest(
    source: layouts.Source,
    *,
    config: IngestConfig = IngestConfig(),
    cache: ProbeCache | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """List, label and check every image of a source.

    Images are probed by `stages.sources.probes.probe_files`: by `config.workers` processes, and
    with a `cache`, only the files changed since the cache was written (the result is the same).

    Returns:
        manifest: one row per file kept (columns of `formats.MANIFEST_SCHEMA`), in layout order.
        stats: counts that reconcile: files_found = rows + limited_out; rows = usable + skipped.

    Raises:
        UserError (MissingInputError / InputError / ConfigError): the source cannot be read as a
            whole (missing root, unknown layout or wnid, duplicate ids, wrong label mapping), or a
            bad image or annotation under `on_bad_image: error`.
    """
    everything = layouts.read_source(source)
    found = _limit(everything, source.limit)
    wnid_index = _check_wnids(found, source)
    counts = {
        "boxes_clipped": 0,
        "boxes_dropped": 0,
        "boxes_rescaled": 0,
        "label_box_mismatches": check_labels_against_boxes(found, source),
    }
    probes = probe_files(
        source.root,
        [record.path for record in found],
        full=VERIFY_MODES[config.verify],
        workers=config.workers,
        cache=cache,
        desc=f"ingest {source.root.name}",
    )
    rows = []
    for record, (width, height, reason, digest) in zip(found, probes):
        reason = record.skip_reason or reason or too_small(width, height, config.min_size)
        if reason and config.on_bad_image == "error":
            raise InputError(
                f"{source.root / record.path}: {reason} (ingest.on_bad_image: error; "
                "set it to skip to record the file as a skip row instead)"
            )
        if reason:
            logger.warning("%s: skipped: %s", source.root / record.path, reason)
        boxes = record.boxes
        if not reason and boxes:
            boxes = _clip_boxes(
                _rescale(boxes, record.annotation_size, width, height, counts),
                width,
                height,
                str(source.root / record.path),
                counts,
            )
        rows.append(
            {
                "image_id": record.image_id,
                "path": record.path,
                "label": wnid_index.get(record.wnid) if record.wnid else None,
                "wnid": record.wnid,
                "boxes": boxes if not reason else [],
                "width": width or None,
                "height": height or None,
                "skip_reason": reason,
                "sha256": digest,
            }
        )
    manifest = pd.DataFrame(rows, columns=formats.MANIFEST_SCHEMA.names)
    skipped = int(manifest["skip_reason"].notna().sum())
    stats = {
        "files_found": len(everything),
        "limited_out": len(everything) - len(found),
        "rows": len(manifest),
        "usable": len(manifest) - skipped,
        "skipped": skipped,
        "with_boxes": int(manifest["boxes"].map(len).gt(0).sum()),
        **counts,
        **labels_without_image(source, everything, config),
    }
    if stats["limited_out"]:
        logger.info(
            "%s: kept the first %d of %d images by image_id (limit)",
            source.where,
            len(found),
            len(everything),
        )
    return manifest, stats


def too_small(width: int, height: int, min_size: int) -> str | None:
    """The skip reason of an image whose shorter side is below `min_size` pixels (too small to
    carry a label: a 1x1 image gives every model a flat distribution), else None."""
    if min(width, height) >= min_size:
        return None
    return (
        f"too small: {width}x{height} pixels, below ingest.min_size {min_size} (the shorter side)"
    )


def labels_without_image(
    source: layouts.Source, found: list[layouts.Found], config: IngestConfig
) -> dict[str, Any]:
    """Count the label rows of the source (Kaggle solution CSV rows, devkit ground-truth lines)
    whose image file is not there, so a partial download never goes unnoticed.

    Returns:
        the ingest metrics `label_rows_without_image` (count) and
        `label_rows_without_image_examples` (the first MISSING_EXAMPLES image ids, sorted).

    Raises:
        InputError: some rows have no image under `ingest.on_missing_image: error`, naming the
            label file, the count, examples and the fix.
    """
    label_file, missing = layouts.labelled_without_image(source, found)
    examples = sorted(missing)[:MISSING_EXAMPLES]
    if missing and config.on_missing_image == "error":
        raise InputError(
            f"{label_file}: {len(missing)} labelled images have no image file under "
            f"{source.root} (e.g. {', '.join(examples)}): a partial download? Restore the "
            "files, or set ingest.on_missing_image: skip to count them in the ingest metrics "
            "and go on"
        )
    if missing:
        logger.warning(
            "%s: %d labelled images have no image file (e.g. %s); counted in "
            "label_rows_without_image",
            label_file,
            len(missing),
            ", ".join(examples),
        )
    return {
        "label_rows_without_image": len(missing),
        "label_rows_without_image_examples": examples,
    }


def _rescale(
    boxes: list[list[int]],
    annotated: tuple[int, int] | None,
    width: int,
    height: int,
    counts: dict[str, int],
) -> list[list[int]]:
    """Boxes annotated on a differently sized copy of the image -> this image's pixels."""
    if not annotated or annotated == (width, height) or 0 in annotated:
        return boxes
    counts["boxes_rescaled"] += len(boxes)
    sx, sy = width / annotated[0], height / annotated[1]
    return [
        [round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy)] for x0, y0, x1, y1 in boxes
    ]
