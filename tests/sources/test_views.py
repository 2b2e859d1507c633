"""Views of a real demo image: the crop to its ground-truth boxes (squared, with a margin, clipped
to the image; the full image without boxes), the mirrored view, and the params that choose them."""

from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image

from stages.contracts.errors import ConfigError
from stages.sources.views import VIEWS, box_crop, box_margin, horizontal_flip, predict_views


@pytest.fixture(scope="module")
def image_and_boxes(demo_manifest: pd.DataFrame, demo_root) -> tuple[Image.Image, list]:
    row = demo_manifest[demo_manifest["boxes"].map(len) > 0].iloc[0]
    with Image.open(demo_root / row["path"]) as image:
        return image.convert("RGB"), [list(b) for b in row["boxes"]]


def test_the_box_crop_is_a_square_around_the_union_with_a_margin(image_and_boxes) -> None:
    image, _ = image_and_boxes
    width, height = image.size
    box = [width * 0.4, height * 0.4, width * 0.5, height * 0.45]  # well inside the image
    crop = box_crop(image, [box], 0.1)
    side = max(box[2] - box[0], box[3] - box[1]) * 1.1
    assert crop.size == (pytest.approx(side, abs=1), pytest.approx(side, abs=1))
    assert box_crop(image, [box], 0.1).tobytes() == crop.tobytes()  # integer pixels: repeatable


def test_the_crop_is_clipped_to_the_image_and_degenerate_boxes_keep_the_full_view(
    image_and_boxes,
) -> None:
    image, boxes = image_and_boxes
    crop = box_crop(image, boxes, 0.1)
    assert crop.size[0] <= image.size[0] and crop.size[1] <= image.size[1]
    assert box_crop(image, [], 0.1) is image
    assert box_crop(image, [[10, 10, 10.5, 10.5]], 0.0) is image


def test_hflip_mirrors_the_image(image_and_boxes) -> None:
    image, boxes = image_and_boxes
    mirrored = horizontal_flip(image, boxes, 0.1)
    assert mirrored.size == image.size
    assert mirrored.getpixel((0, 0)) == image.getpixel((image.size[0] - 1, 0))
    assert set(VIEWS) == {"full", "boxes", "hflip"}


def test_views_and_margin_come_from_params_and_bad_values_name_the_key() -> None:
    assert predict_views({"predict": {}}) == ("full",)
    assert predict_views({"predict": {"views": ["full", "boxes"]}}) == ("full", "boxes")
    assert box_margin({"predict": {"box_margin": 0.2}}) == 0.2
    with pytest.raises(ConfigError, match=r"`predict.views` must be a list of distinct views"):
        predict_views({"predict": {"views": ["full", "zoom"]}})
    with pytest.raises(ConfigError, match=r"`predict.box_margin` must be a number in \[0, 1\]"):
        box_margin({"predict": {"box_margin": 2}})
