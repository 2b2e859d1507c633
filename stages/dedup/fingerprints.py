"""Per-image fingerprints from one decoded RGB image: a hash of the decoded pixels (exact copies
under another encoding), a 64-bit perceptual hash (pHash, as `imagehash.phash` computes it) and
the raw quality scores that `stages.dedup.quality` turns into issues.

Everything is numpy on a downscaled grayscale copy (at most `SCORE_SIDE` pixels a side), so a
fingerprint costs a few milliseconds beside the decode. The pixel hash depends on the decoder
(libjpeg inside Pillow): `PILLOW_VERSION` is recorded with every fingerprint table.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import PIL
import pyarrow as pa
from PIL import Image
from scipy.fft import dct

PILLOW_VERSION = PIL.__version__
SCORE_SIDE = 256
"""Longest side of the grayscale copy the quality scores are computed on."""

FINGERPRINT_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("pixel_sha256", pa.string()),
        ("phash", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("brightness", pa.float32()),
        ("bright_p99", pa.float32()),
        ("sharpness", pa.float32()),
        ("entropy", pa.float32()),
        ("colourfulness", pa.float32()),
    ]
)
"""`data/fingerprints/<split>.parquet`: one row per manifest row, manifest order; null for rows
that were not decoded (manifest skip rows, unreadable files). `phash` is 16 hex digits.
Scores: brightness and bright_p99 in [0, 1] (mean and 99th percentile of luminance), sharpness
(variance of the Laplacian of the grayscale copy), entropy (bits, of the 256-bin grayscale
histogram), colourfulness (mean absolute difference between colour channels, 0..255)."""


@dataclass(frozen=True)
class Fingerprint:
    """One image's fingerprint (see FINGERPRINT_SCHEMA)."""

    pixel_sha256: str
    phash: str
    width: int
    height: int
    brightness: float
    bright_p99: float
    sharpness: float
    entropy: float
    colourfulness: float


def pixel_sha256(image: Image.Image) -> str:
    """sha256 of the decoded 8-bit RGB pixels and the image size."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:RGB:".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


def phash(image: Image.Image, *, size: int = 8, factor: int = 4) -> str:
    """The perceptual hash of `imagehash.phash`: grayscale, 32x32 Lanczos, 2-D DCT, the 8x8
    lowest frequencies against their median -> 16 hex digits (bit 63 = coefficient (0, 0))."""
    side = size * factor
    gray = np.asarray(
        image.convert("L").resize((side, side), Image.Resampling.LANCZOS), dtype=np.float64
    )
    low = dct(dct(gray, axis=0), axis=1)[:size, :size]
    bits = (low > np.median(low)).flatten()
    return f"{int(np.packbits(bits).view('>u8')[0]):016x}"


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distances between uint64 arrays (broadcast)."""
    x = np.bitwise_xor(a, b)
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(axis=-1)


def phash_ints(values: list[str | None]) -> np.ndarray:
    """Hex pHashes -> uint64 (0 for null, NaN or empty; callers mask those rows)."""
    return np.array([int(v, 16) if isinstance(v, str) and v else 0 for v in values], np.uint64)


def quality_scores(image: Image.Image) -> tuple[float, float, float, float, float]:
    """(brightness, bright_p99, sharpness, entropy, colourfulness) of an RGB image."""
    small = image.copy()
    small.thumbnail((SCORE_SIDE, SCORE_SIDE), Image.Resampling.BILINEAR)
    rgb = np.asarray(small.convert("RGB"), dtype=np.float32)
    luma = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    brightness = float(luma.mean() / 255.0)
    p99 = float(np.percentile(luma, 99) / 255.0)
    if min(luma.shape) >= 3:
        lap = (
            luma[:-2, 1:-1]
            + luma[2:, 1:-1]
            + luma[1:-1, :-2]
            + luma[1:-1, 2:]
            - 4 * luma[1:-1, 1:-1]
        )
        sharpness = float(lap.var())
    else:
        sharpness = 0.0
    hist = np.bincount(np.clip(luma, 0, 255).astype(np.uint8).ravel(), minlength=256)
    p = hist[hist > 0] / hist.sum()
    entropy = float(-(p * np.log2(p)).sum())
    chroma = np.abs(rgb[..., 0] - rgb[..., 1]).mean() + np.abs(rgb[..., 1] - rgb[..., 2]).mean()
    return brightness, p99, sharpness, entropy, float(chroma / 2)


def fingerprint(image: Image.Image) -> Fingerprint:
    """The fingerprint of one decoded 8-bit RGB image."""
    return Fingerprint(
        pixel_sha256(image), phash(image), image.width, image.height, *quality_scores(image)
    )
