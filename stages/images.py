"""Image decoding shared by ingest, predict and explain: any mode in, RGB out."""

from __future__ import annotations

import functools
import io
import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError

DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError)


def open_rgb(path: str | os.PathLike[str] | io.BytesIO) -> Image.Image:
    """Decode an image fully and convert it to RGB (CMYK, grayscale, palette and PNG-as-.JPEG
    files are all readable ImageNet inputs)."""
    with Image.open(path) as image:
        image.load()
        return image.convert("RGB") if image.mode != "RGB" else image.copy()


def probe(source: str | os.PathLike[str] | io.BytesIO, *, full: bool = True
          ) -> tuple[int, int, str | None]:
    """Check one image -> (width, height, skip reason or None).

    Args:
        source: the image file (or its bytes).
        full: decode all pixels (catches truncated files); False reads the header only.
    """
    try:
        size = source.getbuffer().nbytes if isinstance(source, io.BytesIO) else Path(source).stat().st_size
        if size == 0:
            return 0, 0, "empty file (0 bytes)"
        with Image.open(source) as image:
            width, height = image.size
            if full:
                image.load()
        return width, height, None
    except DECODE_ERRORS as error:
        return 0, 0, f"unreadable image: {type(error).__name__}: {error}"


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


def probe_image(root: str | os.PathLike[str], path: str, *, full: bool = True
                ) -> tuple[int, int, str | None]:
    """`probe` for a manifest row's image, file or parquet row."""
    where = resolve(root, path)
    if isinstance(where, tuple):
        return probe(io.BytesIO(shard_image_bytes(*where)), full=full)
    return probe(where, full=full)
