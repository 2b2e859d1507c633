"""thumbnails: JPEG thumbnails with the ground-truth boxes drawn, named by manifest row, for images
written here (unreadable ones get none and are reported)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from stages.sources.thumbnails import make_thumbnail, thumb_name, write_thumbnails


def test_thumbnail_draws_the_boxes_scaled(tmp_path: Path) -> None:
    Image.new("RGB", (400, 200), "white").save(tmp_path / "a.png")
    assert make_thumbnail(tmp_path, "a.png", [[100, 50, 300, 150]], 100, tmp_path / "t.jpg")
    thumb = np.asarray(Image.open(tmp_path / "t.jpg")).astype(int)
    assert thumb.shape == (50, 100, 3)
    edge, inside = thumb[12, 50], thumb[25, 50]  # the box's top edge (y=50/4) and its middle
    assert edge[0] > 200 and edge[1] > 180 and edge[2] < 100  # yellow
    assert (inside > 240).all()
    assert not make_thumbnail(tmp_path, "missing.jpg", [], 100, tmp_path / "u.jpg")


def test_thumb_names_put_a_thousand_rows_per_folder() -> None:
    assert thumb_name(0) == "thumbs/0000/0.jpg"
    assert thumb_name(999) == "thumbs/0000/999.jpg"
    assert thumb_name(1000) == "thumbs/0001/1000.jpg"
    assert thumb_name(1_234_567) == "thumbs/1234/1234567.jpg"


def test_write_thumbnails_of_the_given_rows_and_report_unreadable_ones(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (300, 150), "white").save(images / "wide.jpg")
    Image.new("RGB", (120, 240), "white").save(images / "tall.png")
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    manifest = pd.DataFrame(
        {
            "path": ["wide.jpg", "broken.jpg", "tall.png", "wide.jpg", "missing.jpg"],
            "boxes": [[[0, 0, 150, 75]], [], None, [], []],
        }
    )
    out = tmp_path / "report"
    failed = write_thumbnails(out, manifest, np.array([4, 2, 1, 0]), images, size=60, workers=2)
    assert failed == {1, 4}
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg")) == [
        thumb_name(0),
        thumb_name(2),
    ]  # row 3 was not asked for
    assert Image.open(out / thumb_name(0)).size == (60, 30)
    assert Image.open(out / thumb_name(2)).size == (30, 60)
    boxed = np.asarray(Image.open(out / thumb_name(0))).astype(int)
    assert boxed[0, 10, 2] < 100 and (boxed[20, 45] > 240).all()  # yellow box edge, white outside
