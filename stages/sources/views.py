"""Views of an image: more evidence from the same models (`predict.views`).

A view turns a decoded RGB image into the image a model's own eval transform then prepares:

- `full`: the image as it is (the paper's view);
- `boxes`: a crop to the union of the image's ground-truth boxes, made square around the union's
  centre with a margin (`predict.box_margin`, a fraction of the longer side) and clipped to the
  image; an image without boxes (or with a degenerate union) keeps its full view;
- `hflip`: the image mirrored left to right (the usual second view where there are no boxes).

Boxes are in the image's own pixels (the manifest's contract). The crop is computed in integer
pixels, so the same image and boxes always give the same crop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from PIL import Image, ImageOps

from stages.contracts.config import require
from stages.contracts.params import section
from stages.contracts.splits import Params

Boxes = Sequence[Sequence[float]]
View = Callable[[Image.Image, Boxes, float], Image.Image]

DEFAULT_MARGIN = 0.1
"""The margin around the box union: 10 % of its longer side."""


def full_view(image: Image.Image, boxes: Boxes, margin: float) -> Image.Image:
    """The image as it is."""
    return image


def box_crop(image: Image.Image, boxes: Boxes, margin: float) -> Image.Image:
    """The union of `boxes` ([xmin, ymin, xmax, ymax] each), squared around its centre with
    `margin` x its longer side, clipped to the image (the full image without usable boxes)."""
    if not len(boxes):
        return image
    x0 = min(b[0] for b in boxes)
    y0 = min(b[1] for b in boxes)
    x1 = max(b[2] for b in boxes)
    y1 = max(b[3] for b in boxes)
    side = max(x1 - x0, y1 - y0) * (1.0 + margin)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    width, height = image.size
    left, top = max(0, round(cx - side / 2)), max(0, round(cy - side / 2))
    right, bottom = min(width, round(cx + side / 2)), min(height, round(cy + side / 2))
    if right - left < 2 or bottom - top < 2:
        return image
    return image.crop((left, top, right, bottom))


def horizontal_flip(image: Image.Image, boxes: Boxes, margin: float) -> Image.Image:
    """The image mirrored left to right."""
    return ImageOps.mirror(image)


VIEWS: dict[str, View] = {"full": full_view, "boxes": box_crop, "hflip": horizontal_flip}
"""`predict.views` names -> the function that makes the view."""


def predict_views(params: Params) -> tuple[str, ...]:
    """Params `predict.views` (default `[full]`), checked against `stages.sources.views.VIEWS`."""
    views = section(params, "predict").get("views", ["full"])
    require(
        isinstance(views, list)
        and bool(views)
        and all(v in VIEWS for v in views)
        and len(set(views)) == len(views),
        "predict.views",
        f"a list of distinct views from {list(VIEWS)}",
        views,
    )
    return tuple(views)


def box_margin(params: Params) -> float:
    """Params `predict.box_margin`: the `boxes` view's margin, a fraction of the union's side."""
    margin = section(params, "predict").get("box_margin", DEFAULT_MARGIN)
    require(
        isinstance(margin, (int, float)) and not isinstance(margin, bool) and 0 <= margin <= 1,
        "predict.box_margin",
        "a number in [0, 1]",
        margin,
    )
    return float(margin)
