"""stages.sources.boxes: ground-truth boxes mapped through timm's eval transform onto the model
input (`input_geometry`, `boxes_to_input`, `box_mask`), checked by hand-computed geometry and
against a mask image pushed through timm's own transform steps.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from stages.method import cams
from stages.modelling.models import eval_transform
from stages.sources.boxes import box_mask, boxes_to_input, input_geometry

CONFIG_128 = {
    "input_size": (3, 128, 128),
    "interpolation": "bilinear",
    "mean": (0.5,) * 3,
    "std": (0.5,) * 3,
    "crop_pct": 0.875,
    "crop_mode": "center",
}


def test_geometry_square_demo_image_hand_computed() -> None:
    geom = input_geometry(eval_transform(CONFIG_128), 227, 227)
    # floor(128 / 0.875) = 146: resize 227 -> 146, then crop offset round((146 - 128) / 2) = 9
    assert (geom.sx, geom.dx, geom.width, geom.height) == (Fraction(146, 227), -9, 128, 128)
    assert box_mask([[0, 0, 227, 227]], geom).all()


def test_geometry_non_square_boxes_inside_partly_and_fully_outside() -> None:
    transform = eval_transform(CONFIG_128)
    geom = input_geometry(transform, 300, 200)
    # shorter side 200 -> 146, longer int(146 * 300 / 200) = 219;
    # crop left round(91 / 2) = 46, top 9
    assert (geom.sx, geom.sy, geom.dx, geom.dy) == (Fraction(73, 100), Fraction(73, 100), -46, -9)
    inside = box_mask([[100, 50, 200, 150]], geom)  # x [27, 100), y [27.5, 100.5) in the input
    expected = np.zeros((128, 128), bool)
    expected[27:100, 27:100] = True
    np.testing.assert_array_equal(inside, expected)
    partly = box_mask([[0, 0, 100, 200]], geom)  # x [0, 73) - 46 -> clipped to [0, 27)
    expected = np.zeros((128, 128), bool)
    expected[:, :27] = True
    np.testing.assert_array_equal(partly, expected)
    outside = box_mask([[0, 0, 41, 200]], geom)  # x [0, 29.93) - 46 < 0: left of the crop
    assert not outside.any()
    assert cams.explainability_score(np.ones((128, 128)), outside, heat=0.75) == 0.0
    assert boxes_to_input([[0, 0, 41, 200]], geom) == []


def test_geometry_portrait_image_crops_vertically() -> None:
    geom = input_geometry(eval_transform(CONFIG_128), 200, 300)
    assert (geom.width, geom.height, geom.dx, geom.dy) == (128, 128, -9, -46)


@pytest.mark.parametrize("crop_mode", ["center", "squash", "border"])
@pytest.mark.parametrize("size", [(300, 200), (200, 333), (227, 227), (90, 60)])
def test_box_mask_matches_a_mask_image_pushed_through_the_real_transform(
    crop_mode: str, size: tuple[int, int]
) -> None:
    """Independent check: draw the boxes into an image, run timm's own transform steps on it
    (nearest-neighbour), compare with the analytic mask."""
    config = {**CONFIG_128, "crop_mode": crop_mode, "interpolation": "nearest"}
    transform = eval_transform(config)
    width, height = size
    boxes = [
        [width // 10, height // 5, width // 2, height * 4 // 5],
        [width * 3 // 4, 0, width, height // 3],
    ]
    image = Image.new("RGB", size, (0, 0, 0))
    for x0, y0, x1, y1 in boxes:
        image.paste((255, 255, 255), (x0, y0, x1, y1))
    for step in transform.transforms:
        if type(step).__name__ in ("MaybeToTensor", "ToTensor", "Normalize"):
            break
        image = step(image)
    pushed = np.asarray(image)[..., 0] > 200  # the border mode pads with grey 128
    analytic = box_mask(boxes, input_geometry(transform, width, height))
    assert analytic.shape == pushed.shape == (128, 128)
    assert (analytic != pushed).mean() < 0.01


def test_unknown_transform_step_and_bad_boxes_are_refused() -> None:
    from torchvision import transforms as tv

    with pytest.raises(ValueError, match="RandomHorizontalFlip"):
        input_geometry(tv.Compose([tv.RandomHorizontalFlip()]), 10, 10)
    geom = input_geometry(eval_transform(CONFIG_128), 227, 227)
    with pytest.raises(ValueError, match=r"xmax >= xmin"):
        box_mask([[50, 0, 10, 10]], geom)
