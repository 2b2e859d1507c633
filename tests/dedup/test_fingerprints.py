"""Fingerprints of real demo images: pixel hash, pHash, quality scores."""

from __future__ import annotations

import io

import numpy as np
from conftest import DEMO_ROOT
from PIL import Image

from stages.dedup import fingerprints as fp
from stages.sources.images import open_rgb

IMAGES = sorted((DEMO_ROOT / "ILSVRC/Data/CLS-LOC/val").glob("*.JPEG"))


def reencode(image: Image.Image, **kwargs: object) -> Image.Image:
    out = io.BytesIO()
    image.save(out, **kwargs)
    return open_rgb(io.BytesIO(out.getvalue()))


def test_pixel_hash_matches_lossless_copies_only() -> None:
    image = open_rgb(IMAGES[0])
    assert fp.pixel_sha256(reencode(image, format="PNG")) == fp.pixel_sha256(image)
    assert fp.pixel_sha256(reencode(image, format="JPEG", quality=60)) != fp.pixel_sha256(image)
    assert fp.pixel_sha256(image) != fp.pixel_sha256(open_rgb(IMAGES[1]))


def test_phash_is_close_for_copies_and_far_for_other_images() -> None:
    image = open_rgb(IMAGES[0])
    base = fp.phash_ints([fp.phash(image)])
    copies = [
        reencode(image, format="JPEG", quality=50),
        image.resize((150, 150)),
        image.convert("L").convert("RGB"),
    ]
    near = fp.hamming(base, fp.phash_ints([fp.phash(c) for c in copies]))
    assert (near <= 4).all(), near
    others = fp.phash_ints([fp.phash(open_rgb(p)) for p in IMAGES[1:40]])
    assert (fp.hamming(base, others) > 10).all()


def test_hamming_counts_bits() -> None:
    a = np.array([0, 0xFF, 2**64 - 1], dtype=np.uint64)
    b = np.array([1, 0, 0], dtype=np.uint64)
    assert fp.hamming(a, b).tolist() == [1, 8, 64]


def test_quality_scores_see_dark_flat_and_gray_images() -> None:
    image = open_rgb(IMAGES[0])
    bright, _, sharp, entropy, colour = fp.quality_scores(image)
    assert 0 < bright < 1 and sharp > 100 and entropy > 5 and colour > 1
    dark = Image.fromarray((np.asarray(image) // 8).astype(np.uint8))
    assert fp.quality_scores(dark)[1] < 0.2
    flat = Image.new("RGB", (200, 100), (120, 120, 120))
    _, _, sharp, entropy, colour = fp.quality_scores(flat)
    assert sharp == 0 and entropy == 0 and colour == 0
    gray = image.convert("L").convert("RGB")
    assert fp.quality_scores(gray)[4] == 0


def test_fingerprint_has_the_schema_fields() -> None:
    found = fp.fingerprint(open_rgb(IMAGES[3]))
    assert set(found.__dict__) | {"image_id"} == set(fp.FINGERPRINT_SCHEMA.names)
    assert len(found.phash) == 16 and len(found.pixel_sha256) == 64


def test_phash_ints_read_missing_hashes_as_zero_whatever_pandas_made_of_them() -> None:
    """An image that could not be decoded has no pHash: None, or NaN once pandas' string column
    masks it (`Series.where`), never an error."""
    import pandas as pd

    from stages.dedup.fingerprints import phash_ints

    column = pd.Series(["ff00", "0001", None], dtype="string")
    masked = column.where(pd.Series([True, False, True]), None).tolist()
    assert phash_ints(masked).tolist() == [0xFF00, 0, 0]
    assert phash_ints(["", float("nan")]).tolist() == [0, 0]
