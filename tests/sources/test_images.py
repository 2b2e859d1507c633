"""images: every reader decodes any ImageNet input to correct 8-bit RGB, or gives a skip reason."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from datasets import Image as HubImage
from datasets import load_dataset
from hub_inputs import (
    FIX,
    build,
)
from PIL import Image

from stages.sources.images import open_image, open_rgb, probe, probe_image


def png16(pixels: np.ndarray, path: Path) -> Path:
    """Write a 16-bit PNG by hand (grayscale (H, W) or RGB (H, W, 3)), as scanners and HDR tools
    do; Pillow itself cannot write 16-bit RGB."""
    height, width = pixels.shape[:2]
    color = 0 if pixels.ndim == 2 else 2
    raw = b"".join(b"\x00" + pixels[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 16, color, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    return path


def test_16bit_grayscale_png_scales_to_8bit_instead_of_white(tmp_path: Path) -> None:
    ramp = np.tile(np.arange(0, 65536, 256, dtype=np.uint16), (4, 1))  # 0, 256, ..., 65280
    path = png16(ramp, tmp_path / "gray16.png")
    assert Image.open(path).mode.startswith("I")  # what Pillow gives: 16-bit integer pixels
    rgb = np.asarray(open_rgb(path))
    assert rgb.shape == (4, 256, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[..., 0], np.tile(np.arange(256, dtype=np.uint8), (4, 1)))
    assert np.array_equal(rgb[..., 0], rgb[..., 2])
    assert (rgb == 255).mean() < 0.01  # the bug: everything above 255 clipped to white


def test_16bit_rgb_png_keeps_its_colours(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 65536, (6, 5, 3)).astype(np.uint16)
    rgb = np.asarray(open_rgb(png16(pixels, tmp_path / "rgb16.png")))
    assert np.array_equal(rgb, (pixels >> 8).astype(np.uint8))


def test_16bit_png_is_usable_for_ingest_and_predict(tmp_path: Path) -> None:
    png16(np.full((3, 3), 32768, dtype=np.uint16), tmp_path / "mid.png")
    assert probe_image(tmp_path, "mid.png")[:3] == (3, 3, None)
    assert np.asarray(open_image(tmp_path, "mid.png")).max() == 128


def test_float_pixels_are_a_skip_reason_not_a_wrong_picture(tmp_path: Path) -> None:
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)).save(tmp_path / "float.tiff")
    buffer = io.BytesIO((tmp_path / "float.tiff").read_bytes())
    _width, _height, reason = probe(buffer)
    assert reason is not None and "pixel mode 'F'" in reason
    with pytest.raises(ValueError, match="pixel mode 'F'"):
        open_rgb(tmp_path / "float.tiff")


def test_a_non_image_file_gets_the_same_reason_every_time_without_an_object_address(
    tmp_path: Path,
) -> None:
    (tmp_path / "notes.JPEG").write_text("not an image\n")
    reasons = {probe_image(tmp_path, "notes.JPEG")[2] for _ in range(3)}
    assert reasons == {"unreadable image: UnidentifiedImageError: cannot identify image file"}


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "LA", "1"])
def test_ordinary_modes_convert_as_pillow_does(tmp_path: Path, mode: str) -> None:
    base = Image.fromarray(np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    image = base.convert(mode)
    image.save(tmp_path / "x.png" if mode != "CMYK" else tmp_path / "x.jpg")
    path = tmp_path / ("x.png" if mode != "CMYK" else "x.jpg")
    expected = np.asarray(Image.open(path).convert("RGB"))
    assert np.array_equal(np.asarray(open_rgb(path)), expected)
    assert probe(path)[2] is None


def test_images_mode_embeds_the_source_pixels_and_black_placeholders(
    inputs, tmp_path, cache
) -> None:
    folder = build(inputs, tmp_path / "hub", mode="images", include_placeholders=True).path
    clean = load_dataset(str(folder), split="val", cache_dir=cache)
    assert clean.num_rows == 18 and clean.features["image"] == HubImage()
    for index in (0, FIX[0], 15):
        row = clean[index]
        expected = np.asarray(open_image(inputs.root, row["path"]))
        assert np.array_equal(np.asarray(row["image"].convert("RGB")), expected)
    placeholders = [row for row in clean if row["placeholder"]]
    assert [row["image_id"] for row in placeholders] == [
        "placeholder_n04505470",
        "placeholder_n04264628",
    ]
    for row in placeholders:
        pixels = np.asarray(row["image"].convert("RGB"))
        assert pixels.shape == (224, 224, 3) and not pixels.any()
        assert row["path"] is None and row["original_label"] is None
