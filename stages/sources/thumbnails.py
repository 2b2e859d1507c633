"""Thumbnails with the ground-truth boxes drawn, for the review report (and any other page).

Boxes are in original-image pixels (the manifest's `boxes`); JPEGs are decoded at a reduced scale
(`Image.draft`), so a thumbnail of a full-size ImageNet photo costs a fraction of a full decode.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from tqdm import tqdm

from stages.sources import images

logger = logging.getLogger(__name__)

BOX_COLOUR = (255, 214, 0)


def thumbnail(
    root: str | Path, path: str, boxes: Sequence[Sequence[int]], size: int
) -> Image.Image | None:
    """A thumbnail (longest side `size`) of a manifest row's image with its boxes drawn; None
    when the image cannot be read."""
    where = images.resolve(root, path)
    try:
        source = io.BytesIO(images.shard_image_bytes(*where)) if isinstance(where, tuple) else where
        with Image.open(source) as image:
            width, height = image.size
            scale = size / max(width, height, 1)  # JPEG: decode at 1/2 .. 1/8 scale when possible
            image.draft("RGB", (max(1, round(width * scale)), max(1, round(height * scale))))
            small = image.convert("RGB")
    except (*images.DECODE_ERRORS, FileNotFoundError, IndexError):
        return None
    small.thumbnail((size, size), Image.Resampling.BICUBIC)
    sx, sy = small.width / max(width, 1), small.height / max(height, 1)
    draw = ImageDraw.Draw(small)
    for x0, y0, x1, y1 in boxes:
        draw.rectangle(
            [x0 * sx, y0 * sy, max(x0 * sx, x1 * sx - 1), max(y0 * sy, y1 * sy - 1)],
            outline=BOX_COLOUR,
            width=2,
        )
    return small


def make_thumbnail(
    root: str | Path, path: str, boxes: Sequence[Sequence[int]], size: int, target: Path
) -> bool:
    """Write a JPEG thumbnail (longest side `size`) of a manifest row's image with its boxes drawn;
    False when the image cannot be read."""
    small = thumbnail(root, path, boxes, size)
    if small is None:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    small.save(target, "JPEG", quality=85)
    return True


def thumbnail_jpeg(
    root: str | Path, path: str, boxes: Sequence[Sequence[int]], size: int
) -> bytes | None:
    """The bytes `make_thumbnail` would write (None: unreadable image), for serving on demand."""
    small = thumbnail(root, path, boxes, size)
    if small is None:
        return None
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def thumb_name(position: int) -> str:
    """The report-relative thumbnail path of manifest row `position` (1000 per folder)."""
    return f"thumbs/{position // 1000:04d}/{position}.jpg"


def write_thumbnails(
    out: Path,
    manifest: pd.DataFrame,
    positions: np.ndarray,
    image_root: str | Path,
    *,
    size: int,
    workers: int,
    aligned: bool = False,
) -> set[int]:
    """Thumbnails of the given manifest rows under `out` (see `thumb_name`), decoded by `workers`
    threads in path order (rows of one parquet shard together); returns the rows whose image
    could not be read. `aligned`: `manifest` holds only those rows, row k being `positions[k]`
    (what the review report reads), instead of every row of the split."""
    positions = np.asarray(positions, dtype=np.int64)
    rows = np.arange(len(positions)) if aligned else positions
    paths, boxes = manifest["path"].to_numpy(dtype=object), manifest["boxes"].to_numpy(dtype=object)
    order = np.argsort(paths[rows], kind="stable")

    def one(k: int) -> bool:
        row, pos = rows[k], int(positions[k])
        box = [] if boxes[row] is None else [list(b) for b in boxes[row]]
        return make_thumbnail(image_root, paths[row], box, size, out / thumb_name(pos))

    failed = set()
    with (
        ThreadPoolExecutor(workers) as pool,
        tqdm(total=len(order), desc="thumbnails", unit="img", mininterval=2.0) as bar,
    ):
        for k, ok in zip(order, pool.map(one, (int(k) for k in order))):
            if not ok:
                failed.add(int(positions[k]))
            bar.update()
    if failed:
        logger.warning("%d images could not be read; they have no thumbnail", len(failed))
    return failed
