"""Image decoding shared by ingest, predict, explain and review: any mode in, 8-bit RGB out.

Pillow's own `convert("RGB")` is right for 8-bit modes (grayscale, palette, CMYK, alpha), but it
clips 16-bit integer pixels (a 16-bit grayscale PNG opens as mode `I;16`) to 255, which turns the
whole image white. Those are scaled to 8 bits here (the high byte, as Pillow does for 16-bit RGB
PNGs); modes with no meaningful 8-bit rendering (32-bit float `F`) are refused, which ingest
records as a skip row.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError)

SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
"""Integer modes Pillow gives 16-bit PNGs (`I;16*`; `I` in older Pillow): scaled to 8 bits."""
REFUSED_MODES = frozenset({"F"})
"""Modes with no 8-bit RGB rendering to trust (32-bit float pixels)."""
OBJECT_REPR = re.compile(r"\s*<[^<>]*\bat 0x[0-9a-fA-F]+>")
"""An object's default repr (`<_io.BytesIO object at 0x7f...>`): its address changes every run."""


def error_text(error: BaseException) -> str:
    """`<Type>: <message>` of a decode error, without object reprs, so that a skip reason (and the
    manifest that records it) is the same bytes on every run: Pillow's "cannot identify image file
    <_io.BytesIO object at 0x...>" becomes "UnidentifiedImageError: cannot identify image file"."""
    text = OBJECT_REPR.sub("", str(error)).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def check_mode(mode: str) -> None:
    """Raise ValueError for a pixel mode that would not decode to a faithful 8-bit RGB image."""
    if mode in REFUSED_MODES:
        raise ValueError(
            f"pixel mode {mode!r} (32-bit float) has no 8-bit RGB rendering; convert "
            "the file to an 8-bit JPEG or PNG"
        )


def to_rgb(image: Image.Image) -> Image.Image:
    """A loaded image of any supported mode -> a new 8-bit RGB image (16-bit pixels scaled)."""
    check_mode(image.mode)
    if image.mode in SIXTEEN_BIT_MODES:
        pixels = np.asarray(image, dtype=np.int64)
        gray = (np.clip(pixels, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image.copy()


def open_rgb(path: str | os.PathLike[str] | io.BytesIO) -> Image.Image:
    """Decode an image fully and convert it to 8-bit RGB (CMYK, grayscale, palette, 16-bit and
    PNG-as-.JPEG files are all readable ImageNet inputs).

    Raises:
        OSError / ValueError (see DECODE_ERRORS): unreadable file or unsupported pixel mode.
    """
    with Image.open(path) as image:
        image.load()
        return to_rgb(image)


def probe(
    source: str | os.PathLike[str] | io.BytesIO, *, full: bool = True
) -> tuple[int, int, str | None]:
    """Check one image -> (width, height, skip reason or None).

    Args:
        source: the image file (or its bytes).
        full: decode all pixels (catches truncated files); False reads the header only.
    """
    try:
        size = (
            source.getbuffer().nbytes
            if isinstance(source, io.BytesIO)
            else Path(source).stat().st_size
        )
        if size == 0:
            return 0, 0, "empty file (0 bytes)"
        with Image.open(source) as image:
            width, height = image.size
            check_mode(image.mode)
            if full:
                image.load()
        return width, height, None
    except DECODE_ERRORS as error:
        return 0, 0, f"unreadable image: {error_text(error)}"


def resolve(root: str | os.PathLike[str], path: str) -> Path | tuple[Path, int]:
    """A manifest path -> a file, or (parquet shard, row) for `hf-parquet` paths `<shard>#<row>`."""
    shard, sep, row = path.rpartition("#")
    if sep and shard.endswith(".parquet") and row.isdigit():
        return Path(root) / shard, int(row)
    return Path(root) / path


def shard_image_bytes(shard: Path, row: int) -> bytes:
    """The encoded image of one row of a Hub parquet shard (the shard's column is cached)."""
    return _shard_images(shard)[row]


@functools.lru_cache(maxsize=1)
def _shard_images(shard: Path) -> list[bytes]:
    import pyarrow.parquet as pq

    column = pq.read_table(shard, columns=["image"]).column("image").combine_chunks()
    return column.field("bytes").to_pylist()


def open_image(root: str | os.PathLike[str], path: str) -> Image.Image:
    """Decode a manifest row's image (a file, or a row of a Hub parquet shard) to RGB."""
    where = resolve(root, path)
    if isinstance(where, tuple):
        return open_rgb(io.BytesIO(shard_image_bytes(*where)))
    return open_rgb(where)


def probe_image(
    root: str | os.PathLike[str], path: str, *, full: bool = True
) -> tuple[int, int, str | None, str | None]:
    """`probe` for a manifest row's image (file or parquet row) and the sha256 of its encoded
    bytes (None when unreadable), from one read of the file."""
    where = resolve(root, path)
    if isinstance(where, tuple):
        data = shard_image_bytes(*where)
    else:
        try:
            data = where.read_bytes()
        except OSError as error:
            return 0, 0, f"unreadable image: {error_text(error)}", None
    return (*probe(io.BytesIO(data), full=full), hashlib.sha256(data).hexdigest())
