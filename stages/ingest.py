"""`ingest` stage: a split's raw source -> `data/manifests/<split>.parquet`.

Every image file found becomes one manifest row. Unreadable files (empty, truncated, not an image)
keep their row with a `skip_reason` under `on_bad_image: skip`, or stop the stage naming the file
under `on_bad_image: error`; so manifest rows = files found, and usable + skipped = rows.
Boxes stay in original-image pixels; a box that reaches outside the image is clipped to it, and
one with no area inside the image is dropped, each counted in the stage's metrics and logged.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from tqdm import tqdm

from stages import formats, layouts
from stages.cli import run_as_script, split_stage_main
from stages.images import probe_image
from stages.params import section, split_params

logger = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("skip", "error")
VERIFY_MODES = {"full": True, "header": False}


@dataclass(frozen=True)
class IngestConfig:
    """Options of the ingest stage (params.yaml `ingest:`)."""

    on_bad_image: str = "skip"
    verify: str = "full"
    workers: int = 2

    def __post_init__(self) -> None:
        if self.on_bad_image not in BAD_IMAGE_POLICIES:
            raise ValueError(f"ingest.on_bad_image must be one of {BAD_IMAGE_POLICIES}, "
                             f"got {self.on_bad_image!r}")
        if self.verify not in VERIFY_MODES:
            raise ValueError(f"ingest.verify must be one of {sorted(VERIFY_MODES)}, got {self.verify!r}")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"ingest.workers must be a positive int, got {self.workers!r}")


def _clip_boxes(boxes: list[list[int]], width: int, height: int, where: str,
                counts: dict[str, int]) -> list[list[int]]:
    kept = []
    for xmin, ymin, xmax, ymax in boxes:
        clipped = [max(0, xmin), max(0, ymin), min(width, xmax), min(height, ymax)]
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            counts["boxes_dropped"] += 1
            logger.warning("%s: box %s has no area inside the %dx%d image; dropped", where,
                           [xmin, ymin, xmax, ymax], width, height)
            continue
        if clipped != [xmin, ymin, xmax, ymax]:
            counts["boxes_clipped"] += 1
            logger.warning("%s: box %s reaches outside the %dx%d image; clipped to %s", where,
                           [xmin, ymin, xmax, ymax], width, height, clipped)
        kept.append(clipped)
    return kept


def build_manifest(source: layouts.Source, *, config: IngestConfig = IngestConfig()
                   ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """List, label and check every image of a source.

    Returns:
        manifest: one row per file found (columns of `formats.MANIFEST_SCHEMA`), in layout order.
        stats: counts that reconcile: files_found = rows = usable + skipped.

    Raises:
        FileNotFoundError / ValueError: the source cannot be read as a whole (missing root,
            unknown layout or wnid, duplicate ids), or a bad image under `on_bad_image: error`.
    """
    found = layouts.read_source(source)
    wnid_index = {wnid: index for index, wnid in enumerate(formats.class_wnids())}
    for record in found:
        if record.wnid is not None and record.wnid not in wnid_index:
            raise ValueError(f"{source.root / record.path}: wnid {record.wnid!r} is not one of the "
                             "1000 ILSVRC2012 classes")
    full = VERIFY_MODES[config.verify]
    with ThreadPoolExecutor(config.workers) as pool:
        probes = list(tqdm(pool.map(lambda r: probe_image(source.root, r.path, full=full), found),
                           total=len(found), desc=f"ingest {source.root.name}", unit="img",
                           mininterval=2.0))
    counts = {"boxes_clipped": 0, "boxes_dropped": 0, "boxes_rescaled": 0}
    rows = []
    for record, (width, height, reason) in zip(found, probes):
        reason = record.skip_reason or reason
        if reason and config.on_bad_image == "error":
            raise ValueError(f"{source.root / record.path}: {reason} (ingest.on_bad_image: error; "
                             "set it to skip to record the file as a skip row instead)")
        if reason:
            logger.warning("%s: skipped: %s", source.root / record.path, reason)
        boxes = record.boxes
        if not reason and boxes:
            boxes = _clip_boxes(_rescale(boxes, record.annotation_size, width, height, counts),
                                width, height, str(source.root / record.path), counts)
        rows.append({
            "image_id": record.image_id, "path": record.path,
            "label": wnid_index.get(record.wnid) if record.wnid else None, "wnid": record.wnid,
            "boxes": boxes if not reason else [], "width": width or None,
            "height": height or None, "skip_reason": reason,
        })
    manifest = pd.DataFrame(rows, columns=formats.MANIFEST_SCHEMA.names)
    skipped = int(manifest["skip_reason"].notna().sum())
    stats = {"files_found": len(found), "rows": len(manifest), "usable": len(manifest) - skipped,
             "skipped": skipped, "with_boxes": int(manifest["boxes"].map(len).gt(0).sum()), **counts}
    return manifest, stats


def _rescale(boxes: list[list[int]], annotated: tuple[int, int] | None, width: int, height: int,
             counts: dict[str, int]) -> list[list[int]]:
    """Boxes annotated on a differently sized copy of the image -> this image's pixels."""
    if not annotated or annotated == (width, height) or 0 in annotated:
        return boxes
    counts["boxes_rescaled"] += len(boxes)
    sx, sy = width / annotated[0], height / annotated[1]
    return [[round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy)] for x0, y0, x1, y1 in boxes]


def ingest(split: str, params: dict[str, Any], *, out: Path | None = None,
           metrics_out: Path | None = None) -> dict[str, Any]:
    """Run the stage for one split: write its manifest and ingest metrics, return the stats."""
    source = layouts.source_from_params(split_params(params, split))
    config = IngestConfig(**section(params, "ingest"))
    manifest, stats = build_manifest(source, config=config)
    formats.write_table(manifest, out or formats.manifest_path(split), schema=formats.MANIFEST_SCHEMA)
    formats.write_json(stats, metrics_out or Path("metrics/ingest") / f"{split}.json")
    logger.info("ingest %s: %s", split, stats)
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `python -m stages.ingest --split val [--params params.yaml]`."""
    return split_stage_main(argv, stage="ingest", doc=__doc__, run=ingest)


if __name__ == "__main__":
    run_as_script(main)
