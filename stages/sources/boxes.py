"""Box geometry: ground-truth boxes (original-image pixels) -> masks on a model's input.

Heatmaps cover the model's resized and center-cropped input, so boxes are mapped through the model's
own eval transform, step by step, with exact rational arithmetic (`input_geometry`), clipped to the
crop, and rasterised (`box_mask`). A box outside the crop maps to nothing (score 0, not an error).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
from timm.data import transforms as timm_transforms
from torchvision import transforms as tv
from torchvision.transforms import v2 as tv2


@dataclass(frozen=True)
class Geometry:
    """An axis-aligned affine map from original-image pixels to input pixels: x' = x * sx + dx.

    Attributes:
        sx, sy: scale per axis; dx, dy: offset per axis (exact fractions).
        width, height: size of the image after the transform steps seen so far.
    """

    sx: Fraction
    dx: Fraction
    sy: Fraction
    dy: Fraction
    width: int
    height: int

    def then(
        self, sx: Fraction, dx: Fraction, sy: Fraction, dy: Fraction, width: int, height: int
    ) -> Geometry:
        """Compose with a following step x'' = x' * sx + dx."""
        return Geometry(
            self.sx * sx, self.dx * sx + dx, self.sy * sy, self.dy * sy + dy, width, height
        )


def _resize_size(size: Any, max_size: int | None, width: int, height: int) -> tuple[int, int]:
    """Torchvision's Resize output (width, height): an int resizes the shorter side."""
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return int(size[1]), int(size[0])
    short_target = int(size[0] if isinstance(size, (list, tuple)) else size)
    short, long = min(width, height), max(width, height)
    new_short, new_long = short_target, int(short_target * long / short)
    if max_size is not None and new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    return (new_short, new_long) if width <= height else (new_long, new_short)


def _scaled(geom: Geometry, new_w: int, new_h: int) -> Geometry:
    return geom.then(
        Fraction(new_w, geom.width),
        Fraction(0),
        Fraction(new_h, geom.height),
        Fraction(0),
        new_w,
        new_h,
    )


def _resize_step(step: Any, geom: Geometry) -> Geometry:
    return _scaled(geom, *_resize_size(step.size, step.max_size, geom.width, geom.height))


def _resize_keep_ratio_step(step: Any, geom: Geometry) -> Geometry:
    if step.random_scale_prob > 0 or step.random_aspect_prob > 0:
        raise ValueError(f"{step!r} is random (a training transform); use the eval transform")
    target_h, target_w = step.size
    ratio_h, ratio_w = geom.height / target_h, geom.width / target_w
    ratio = max(ratio_h, ratio_w) * step.longest + min(ratio_h, ratio_w) * (1.0 - step.longest)
    return _scaled(geom, round(geom.width / ratio), round(geom.height / ratio))


def _center_crop_step(step: Any, geom: Geometry) -> Geometry:
    """torchvision/timm center crop: zero-pad to the crop size where smaller, then crop."""
    size = step.size
    crop_h, crop_w = (size, size) if isinstance(size, int) else (size[0], size[-1])
    pad_l = (crop_w - geom.width) // 2 if crop_w > geom.width else 0
    pad_t = (crop_h - geom.height) // 2 if crop_h > geom.height else 0
    padded_w = geom.width + pad_l + ((crop_w - geom.width + 1) // 2 if crop_w > geom.width else 0)
    padded_h = (
        geom.height + pad_t + ((crop_h - geom.height + 1) // 2 if crop_h > geom.height else 0)
    )
    top = left = 0
    if (padded_w, padded_h) != (crop_w, crop_h):
        top, left = round((padded_h - crop_h) / 2.0), round((padded_w - crop_w) / 2.0)
    return geom.then(
        Fraction(1), Fraction(pad_l - left), Fraction(1), Fraction(pad_t - top), crop_w, crop_h
    )


def _trim_border_step(step: Any, geom: Geometry) -> Geometry:
    border = step.border_size
    top, left = min(border, geom.height), min(border, geom.height)  # timm uses h for both
    return geom.then(
        Fraction(1),
        Fraction(-left),
        Fraction(1),
        Fraction(-top),
        max(0, geom.width - 2 * border),
        max(0, geom.height - 2 * border),
    )


def _no_geometry(step: Any, geom: Geometry) -> Geometry:
    return geom


GEOMETRY_STEPS: dict[type, Callable[[Any, Geometry], Geometry]] = {
    tv.Resize: _resize_step,
    tv2.Resize: _resize_step,
    timm_transforms.ResizeKeepRatio: _resize_keep_ratio_step,
    tv.CenterCrop: _center_crop_step,
    tv2.CenterCrop: _center_crop_step,
    timm_transforms.CenterCropOrPad: _center_crop_step,
    timm_transforms.TrimBorder: _trim_border_step,
    tv.ToTensor: _no_geometry,
    tv.PILToTensor: _no_geometry,
    tv.Normalize: _no_geometry,
    tv.ConvertImageDtype: _no_geometry,
    tv2.Normalize: _no_geometry,
    timm_transforms.ToTensor: _no_geometry,
    timm_transforms.MaybeToTensor: _no_geometry,
    timm_transforms.MaybePILToTensor: _no_geometry,
    timm_transforms.ToNumpy: _no_geometry,
}
"""How each eval-transform step moves pixels; a step not listed here is refused."""


def input_geometry(transform: Any, width: int, height: int) -> Geometry:
    """The map from a width x height image to the model input that `transform` produces.

    Args:
        transform: a torchvision Compose (as `stages.modelling.models.eval_transform` returns) or
            one step.
        width, height: the original image size in pixels.

    Raises:
        ValueError: a step of unknown geometry, or a non-positive image size.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    geom = Geometry(Fraction(1), Fraction(0), Fraction(1), Fraction(0), int(width), int(height))
    for step in getattr(transform, "transforms", [transform]):
        handler = GEOMETRY_STEPS.get(type(step))
        if handler is None:
            raise ValueError(
                f"transform step {step!r} moves pixels in a way explain cannot map boxes "
                f"through; supported steps: {sorted(t.__name__ for t in GEOMETRY_STEPS)}"
            )
        geom = handler(step, geom)
    return geom


def _check_boxes(boxes: Sequence[Sequence[float]]) -> None:
    for box in boxes:
        if len(box) != 4 or box[2] < box[0] or box[3] < box[1]:
            raise ValueError(
                f"box {list(box)} is not [xmin, ymin, xmax, ymax] with xmax >= xmin and "
                "ymax >= ymin"
            )


def boxes_to_input(
    boxes: Sequence[Sequence[float]], geom: Geometry
) -> list[tuple[Fraction, Fraction, Fraction, Fraction]]:
    """Map boxes (pixel edges [xmin, ymin, xmax, ymax], as ingest stores them) into input
    coordinates, clipped to the input; boxes left with no area are dropped."""
    _check_boxes(boxes)
    mapped = []
    for xmin, ymin, xmax, ymax in boxes:
        x0 = min(max(Fraction(xmin) * geom.sx + geom.dx, Fraction(0)), Fraction(geom.width))
        x1 = min(max(Fraction(xmax) * geom.sx + geom.dx, Fraction(0)), Fraction(geom.width))
        y0 = min(max(Fraction(ymin) * geom.sy + geom.dy, Fraction(0)), Fraction(geom.height))
        y1 = min(max(Fraction(ymax) * geom.sy + geom.dy, Fraction(0)), Fraction(geom.height))
        if x1 > x0 and y1 > y0:
            mapped.append((x0, y0, x1, y1))
    return mapped


def box_mask(boxes: Sequence[Sequence[float]], geom: Geometry) -> np.ndarray:
    """Union of the boxes as a boolean mask at input resolution: (height, width).

    A pixel belongs to a box when its centre lies inside it (left/top edges inclusive); a box
    outside the crop adds nothing, so the mask may be empty.
    """
    mask = np.zeros((geom.height, geom.width), dtype=bool)
    for x0, y0, x1, y1 in boxes_to_input(boxes, geom):
        cols = slice(math.ceil(x0 - Fraction(1, 2)), math.ceil(x1 - Fraction(1, 2)))
        rows = slice(math.ceil(y0 - Fraction(1, 2)), math.ceil(y1 - Fraction(1, 2)))
        mask[rows, cols] = True
    return mask
